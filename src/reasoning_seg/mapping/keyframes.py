"""Window of keyframes: the images a query can show to the 2D reasoning model.

The map keeps geometry; the 2D model needs pixels. Keeping every frame of a 30 Hz stream would be
unbounded and redundant, so the window keeps a fixed number of keyframes chosen by *motion* and
*novelty*:

- a frame is a candidate when the camera moved or turned enough since the last candidate (or
  enough time passed);
- while the window has room, every candidate is kept;
- once it is full, a candidate must show enough surface that no kept keyframe observed
  (``min_novelty``), and then the most *redundant* keyframe leaves: the one observing the fewest
  surface cells no other keyframe observes. A first-in-first-out window would instead forget the
  start of a room loop, and with it every object seen only there (``eviction: oldest`` keeps that
  behaviour for comparison).

Which keyframe observed which surface is an :class:`ObservationIndex`: a sparse set of cells
(``observation_cell``, 5 cm by default, coarser than the map's voxels so depth noise does not make
the same wall look new) with a bit per keyframe slot. It also answers "which keyframes saw this
point" for later stages, and forgets cells when an object is removed from the map, so the next view
of that spot counts as new.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, transform_points
from reasoning_seg.config import KeyframeConfig
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.mapping.sparse_voxels import NEIGHBOURS_6, KeyTable, ball_offsets, cell_coords, pack_keys

OBSERVATION_SAMPLES = 160 * 120
"""Depth pixels sampled (on a regular grid) to find the cells a frame observes."""


@dataclass(frozen=True)
class Keyframe:
    """A stored view; ``keyframe_id`` is unique for the lifetime of the window (never reused)."""

    keyframe_id: int
    frame: RGBDFrame

    @property
    def T_world_cam(self) -> np.ndarray:  # noqa: N802 - conventional symbol
        """Camera pose in the map frame."""
        return self.frame.T_world_cam


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the relative rotation between two rotation matrices, in degrees."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def frame_cells(frame: RGBDFrame, cell_size: float, max_samples: int = OBSERVATION_SAMPLES) -> np.ndarray:
    """Sorted unique packed keys of the cells a frame's depth observes (a strided pixel grid)."""
    intr = frame.intrinsics
    stride = max(1, int(np.ceil(np.sqrt(intr.width * intr.height / max(1, max_samples)))))
    depth = np.asarray(frame.depth)[::stride, ::stride]
    rays = _strided_rays(intr, stride)
    valid = np.isfinite(depth) & (depth > 0)
    pts = rays[valid] * depth[valid][:, None].astype(np.float64)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(pack_keys(cell_coords(transform_points(frame.T_world_cam, pts), cell_size)))


def _popcount(a: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (numpy >= 2 has it built in; older numpy unpacks bytes)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)
    bits = np.unpackbits(np.ascontiguousarray(a).view(np.uint8).reshape(*a.shape, 8), axis=-1)
    return bits.sum(axis=-1, dtype=np.int64)


@lru_cache(maxsize=8)
def _strided_rays(intr: CameraIntrinsics, stride: int) -> np.ndarray:
    return np.ascontiguousarray(intr.pixel_rays()[::stride, ::stride])


class ObservationIndex:
    """Which keyframe slot observed which surface cell: sorted cell keys with a bit mask per cell."""

    def __init__(self, cell_size: float, n_slots: int) -> None:
        self.cell_size = float(cell_size)
        self.n_slots = int(n_slots)
        self._words = (self.n_slots + 63) // 64
        self.table = KeyTable({"mask": ((self._words,), np.uint64)})

    def __len__(self) -> int:
        return len(self.table)

    def _bit(self, slot: int) -> tuple[int, np.uint64]:
        return slot // 64, np.uint64(1) << np.uint64(slot % 64)

    def add(self, slot: int, cells: np.ndarray) -> None:
        """Mark ``cells`` (packed keys) as observed by ``slot``."""
        if len(cells) == 0:
            return
        rows = self.table.insert(cells)
        w, bit = self._bit(slot)
        self.table.columns["mask"][rows, w] |= bit

    def remove_slot(self, slot: int) -> None:
        """Forget everything ``slot`` observed; cells nobody observes any more are dropped."""
        if len(self.table) == 0:
            return
        w, bit = self._bit(slot)
        masks = self.table.columns["mask"]
        masks[:, w] &= ~bit
        self.table.keep(np.any(masks != 0, axis=1))

    def _masks_of(self, cells: np.ndarray, dilate: bool) -> np.ndarray:
        """(N, words) union of the masks of each cell (and its 6 neighbours when ``dilate``)."""
        cells = np.asarray(cells, dtype=np.int64).reshape(-1)
        out = np.zeros((cells.size, self._words), dtype=np.uint64)
        if len(self.table) == 0 or cells.size == 0:
            return out
        # Neighbour keys by adding packed offsets: a +-1 step in one coordinate is a +-2^k step in the
        # key, exact as long as the coordinate does not wrap (cells are far inside the packing range).
        offsets = pack_keys(NEIGHBOURS_6 if dilate else NEIGHBOURS_6[:1]) - pack_keys(np.zeros((1, 3)))
        masks = self.table.columns["mask"]
        for off in offsets:
            rows = self.table.find(cells + off)
            hit = rows >= 0
            out[hit] |= masks[rows[hit]]
        return out

    def seen(self, cells: np.ndarray) -> np.ndarray:
        """Whether any slot observed each cell or a face neighbour (tolerates one cell of noise)."""
        return np.any(self._masks_of(cells, dilate=True) != 0, axis=1)

    def slots_of(self, points: np.ndarray) -> np.ndarray:
        """(N, n_slots) bool: which slots observed each point's cell (or a face neighbour)."""
        keys = pack_keys(cell_coords(points, self.cell_size))
        masks = self._masks_of(keys, dilate=True)
        slots = np.arange(self.n_slots)
        return ((masks[:, slots // 64] >> (slots % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)

    def unique_counts(self) -> np.ndarray:
        """(n_slots,) number of cells each slot is the *only* observer of (its irreplaceable coverage)."""
        counts = np.zeros(self.n_slots, dtype=np.int64)
        if len(self.table) == 0:
            return counts
        masks = self.table.columns["mask"]
        single = _popcount(masks).sum(axis=1) == 1
        m = masks[single]
        if len(m) == 0:
            return counts
        word = np.argmax(m != 0, axis=1)
        bits = m[np.arange(len(m)), word]
        slot = word * 64 + np.round(np.log2(bits.astype(np.float64))).astype(np.int64)  # exact for 2^k
        return np.bincount(slot, minlength=self.n_slots)[: self.n_slots]

    def forget_cells(self, cells: np.ndarray) -> None:
        """Drop cells (e.g. where an object was removed) so their next observation is novel."""
        if len(self.table) == 0 or len(cells) == 0:
            return
        rows = self.table.find(cells)
        keep = np.ones(len(self.table), dtype=bool)
        keep[rows[rows >= 0]] = False
        self.table.keep(keep)

    def clear(self) -> None:
        """Forget every observation."""
        self.table.clear()


class KeyframeWindow:
    """Fixed-size window of keyframes chosen by motion and novelty (see the module docstring)."""

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        self.config = config or KeyframeConfig()
        n = self.config.window_size
        self._frames: list[Keyframe] = []
        self._slot: dict[int, int] = {}
        self._free = list(range(n, -1, -1))  # one spare slot holds a candidate before eviction
        self.index = ObservationIndex(self.config.observation_cell, n + 1)
        self._next_id = 0
        self._ref: RGBDFrame | None = None  # the last candidate: the motion gate's reference
        self.evicted = 0
        self.rejected_not_novel = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Keyframe]:
        return iter(list(self._frames))

    @property
    def next_id(self) -> int:
        """The id the next keyframe will get (saved with the window so ids are never reused)."""
        return self._next_id

    @next_id.setter
    def next_id(self, value: int) -> None:
        self._next_id = max(self._next_id, int(value))

    def snapshot(self) -> list[Keyframe]:
        """A copy of the current window in id order (safe to use while new keyframes arrive)."""
        return list(self._frames)

    @property
    def full(self) -> bool:
        """Whether the window holds ``window_size`` keyframes."""
        return len(self._frames) >= self.config.window_size

    def wants(self, frame: RGBDFrame) -> bool:
        """Motion gate: whether ``frame`` moved, turned or waited enough since the last candidate."""
        ref = self._ref if self._ref is not None else (self._frames[-1].frame if self._frames else None)
        if ref is None:
            return True
        c = self.config
        moved = np.linalg.norm(frame.T_world_cam[:3, 3] - ref.T_world_cam[:3, 3]) >= c.min_translation
        turned = rotation_angle_deg(ref.T_world_cam[:3, :3], frame.T_world_cam[:3, :3]) >= c.min_rotation_deg
        waited = c.max_interval > 0 and (frame.stamp - ref.stamp) >= c.max_interval
        return bool(moved or turned or waited)

    def novelty(self, frame: RGBDFrame, cells: np.ndarray | None = None) -> float:
        """Fraction of the frame's observed cells that no kept keyframe observed (1.0 for an empty window)."""
        cells = frame_cells(frame, self.index.cell_size) if cells is None else cells
        if len(cells) == 0:
            return 0.0
        return float(1.0 - self.index.seen(cells).mean())

    def offer(self, frame: RGBDFrame) -> Keyframe | None:
        """Keep ``frame`` if the motion gate (and, in a full window, novelty) admits it.

        Returns the new keyframe, or None (also when the candidate itself turned out to be the most
        redundant view and was dropped again).
        """
        if not self.wants(frame):
            return None
        self._ref = frame
        cells = frame_cells(frame, self.index.cell_size)
        if self.full and self.config.eviction == "redundancy":
            if self.novelty(frame, cells) < self.config.min_novelty:
                self.rejected_not_novel += 1
                return None
        kf = self._insert(frame, self._next_id, cells)
        self._evict(protect=None)
        return kf if kf.keyframe_id in self._slot else None

    def add(self, frame: RGBDFrame, keyframe_id: int | None = None) -> Keyframe:
        """Keep ``frame`` unconditionally (evicting another if full); ``keyframe_id`` restores a saved one."""
        kid = self._next_id if keyframe_id is None else int(keyframe_id)
        if kid in self._slot:
            raise ValueError(f"keyframe id {kid} is already in the window")
        kf = self._insert(frame, kid, frame_cells(frame, self.index.cell_size))
        self._evict(protect=kid)
        return kf

    def _insert(self, frame: RGBDFrame, kid: int, cells: np.ndarray) -> Keyframe:
        kf = Keyframe(kid, frame)
        slot = self._free.pop()
        self._slot[kid] = slot
        self.index.add(slot, cells)
        self._frames.append(kf)
        self._frames.sort(key=lambda k: k.keyframe_id)
        self._next_id = max(self._next_id, kid + 1)
        return kf

    def _evict(self, protect: int | None) -> None:
        while len(self._frames) > self.config.window_size:
            candidates = [k for k in self._frames if k.keyframe_id != protect]
            if self.config.eviction == "oldest":
                victim = candidates[0]
            else:
                unique = self.index.unique_counts()
                # Fewest irreplaceable cells first; among equals the oldest (ids increase with time).
                victim = min(candidates, key=lambda k: (unique[self._slot[k.keyframe_id]], k.keyframe_id))
            self._remove(victim)

    def _remove(self, kf: Keyframe) -> None:
        slot = self._slot.pop(kf.keyframe_id)
        self.index.remove_slot(slot)
        self._free.append(slot)
        self._frames = [k for k in self._frames if k.keyframe_id != kf.keyframe_id]
        self.evicted += 1

    def observers(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which keyframes observed each point: ``(ids (K,), seen (N, K) bool)`` in window order.

        Answers at the index's cell resolution (a point counts as observed by a keyframe that saw
        its cell or a face neighbour), so it is a cheap pre-filter, not a per-pixel visibility test.
        """
        ids = np.array([k.keyframe_id for k in self._frames], dtype=np.int64)
        slots = np.array([self._slot[int(i)] for i in ids], dtype=np.int64)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return ids, self.index.slots_of(pts)[:, slots] if len(pts) else np.zeros((0, len(ids)), bool)

    def forget(self, points: np.ndarray, radius: float) -> None:
        """Forget observations within ``radius`` of ``points`` (the map lost them: they are new again)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts) == 0:
            return
        cell = self.index.cell_size
        base = np.unique(cell_coords(pts, cell), axis=0)
        offs = ball_offsets(max(0.0, radius) / cell + 1.0)
        cells = np.unique(pack_keys((base[:, None, :] + offs[None]).reshape(-1, 3)))
        self.index.forget_cells(cells)

    def clear(self) -> None:
        """Forget all keyframes (ids keep increasing so old ids are never confused with new ones)."""
        self._frames = []
        self._slot = {}
        self._free = list(range(self.config.window_size, -1, -1))
        self.index.clear()
        self._ref = None
