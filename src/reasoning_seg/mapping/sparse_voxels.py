"""Integer voxel coordinates packed into one int64, and a small sorted table keyed by them.

The map's per-voxel bookkeeping (query labels, which keyframes observed a cell) touches a few
thousand to a few hundred thousand cells, appends in batches and looks up in batches. A sorted
``int64`` key array with ``np.searchsorted`` does both in vectorised numpy, needs no extra
dependency (so it also runs on the GPU machine, which has no Open3D) and serialises as two arrays.

Packing: each coordinate is offset by 2^20 and stored in 21 bits, so cells within +-2^20 of the
origin are representable (10 km at 1 cm voxels); :func:`pack_keys` raises beyond that rather than
wrap around and alias a far cell onto a near one.
"""

from __future__ import annotations

import numpy as np

_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1
COORD_LIMIT = _OFFSET - 1
"""Largest absolute integer coordinate :func:`pack_keys` accepts."""


def pack_keys(coords: np.ndarray) -> np.ndarray:
    """(N, 3) integer coordinates -> (N,) int64 keys whose order is lexicographic in (x, y, z)."""
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    if c.size and np.abs(c).max() > COORD_LIMIT:
        raise ValueError(f"voxel coordinate beyond +-{COORD_LIMIT} cannot be packed")
    c = c + _OFFSET
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_keys`: (N,) int64 -> (N, 3) int64."""
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    out = np.empty((k.size, 3), dtype=np.int64)
    out[:, 0] = (k >> (2 * _BITS)) & _MASK
    out[:, 1] = (k >> _BITS) & _MASK
    out[:, 2] = k & _MASK
    return out - _OFFSET


def cell_coords(points: np.ndarray, cell_size: float) -> np.ndarray:
    """Integer cell of each (N, 3) point: ``floor(p / cell_size)``.

    A tiny epsilon keeps a point that lies exactly on a lattice plane (as the map's zero-crossing
    points of axis-aligned walls do) in the cell above rather than flipping with rounding noise.
    Non-finite points are the caller's to filter.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    c = np.floor(p / cell_size + 1e-6)
    # A float beyond int64 casts to an arbitrary value that could pass pack_keys' range check.
    if c.size and not np.all(np.abs(c[np.isfinite(c)]) <= COORD_LIMIT):
        raise ValueError(f"a point lies beyond +-{COORD_LIMIT} cells of {cell_size} m from the origin")
    return c.astype(np.int64)


def ball_offsets(radius_cells: float) -> np.ndarray:
    """(M, 3) integer offsets whose lattice points lie within ``radius_cells`` of the origin."""
    r = max(0.0, float(radius_cells))
    n = int(np.floor(r))
    ax = np.arange(-n, n + 1)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    return g[(g**2).sum(1) <= r * r + 1e-9]


NEIGHBOURS_6 = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64
)
"""A cell and its six face neighbours (used to tolerate one cell of quantisation disagreement)."""


class KeyTable:
    """Sorted unique int64 keys with row-aligned column arrays (numpy, batched operations).

    ``columns`` maps a name to an array whose first axis runs over the rows; rows are kept sorted
    by key so a batch lookup is one ``searchsorted``. Inserting ``m`` new keys into ``n`` costs
    O(n + m log m) (one merge), which is why callers insert in batches.
    """

    def __init__(self, columns: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        self._spec = {name: (tuple(shape), np.dtype(dt)) for name, (shape, dt) in columns.items()}
        self.keys = np.zeros(0, dtype=np.int64)
        self.columns: dict[str, np.ndarray] = {
            name: np.zeros((0, *shape), dtype=dt) for name, (shape, dt) in self._spec.items()
        }

    def __len__(self) -> int:
        return int(self.keys.size)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row index of each key, -1 where absent."""
        q = np.asarray(keys, dtype=np.int64).reshape(-1)
        if self.keys.size == 0 or q.size == 0:
            return np.full(q.size, -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, q)
        pos_c = np.minimum(pos, self.keys.size - 1)
        return np.where(self.keys[pos_c] == q, pos_c, -1)

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Add the absent keys (new rows are zero); returns the row of every given key afterwards."""
        q = np.asarray(keys, dtype=np.int64).reshape(-1)
        new = np.unique(q[self.find(q) < 0])
        if new.size:
            pos = np.searchsorted(self.keys, new)
            self.keys = np.insert(self.keys, pos, new)
            for name, (shape, dt) in self._spec.items():
                self.columns[name] = np.insert(
                    self.columns[name], pos, np.zeros((new.size, *shape), dtype=dt), axis=0
                )
        return self.find(q)

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the rows where the boolean ``rows`` is True (order is preserved)."""
        rows = np.asarray(rows, dtype=bool)
        self.keys = self.keys[rows]
        for name in self.columns:
            self.columns[name] = self.columns[name][rows]

    def clear(self) -> None:
        """Drop every row."""
        self.keep(np.zeros(self.keys.size, dtype=bool))

    def load(self, keys: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Replace the contents (validated: sorted unique keys, columns of the declared shape)."""
        k = np.asarray(keys)
        if k.ndim != 1 or k.dtype != np.int64:
            raise ValueError(f"keys must be a 1-D int64 array, got {k.shape} {k.dtype}")
        if k.size > 1 and not np.all(np.diff(k) > 0):
            raise ValueError("keys must be sorted and unique")
        cols = {}
        for name, (shape, dt) in self._spec.items():
            if name not in columns:
                raise ValueError(f"column '{name}' is missing")
            c = np.asarray(columns[name])
            if c.shape != (k.size, *shape):
                raise ValueError(f"column '{name}' has shape {c.shape}, expected {(k.size, *shape)}")
            cols[name] = c.astype(dt, copy=True)
        self.keys = k.copy()
        self.columns = cols
