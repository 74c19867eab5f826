"""Sparse 3D convolution on integer voxel sites, in plain PyTorch (gather / matmul / scatter).

Why a pure-PyTorch backend: MinkowskiEngine 0.5.4 needs a long patched CPU-only build here and
spconv 2.3.8 on CPU gives wrong submanifold results with more than one thread (and its backward
calls ``torch.cuda``). This module has no compiled code, runs unchanged on CPU and CUDA, supports
autograd through ordinary differentiable ops, and is tested against dense ``torch.nn.Conv3d`` /
``ConvTranspose3d`` (``tests/test_net.py``). The U-Net (:mod:`reasoning_seg.net.unet`) only uses the
classes below; :func:`set_backend` swaps the convolution arithmetic of a built network for spconv's
CUDA kernels (:mod:`reasoning_seg.net.spconv_backend`) behind the same names and weights.

Conventions (those of MinkowskiEngine, so weights and semantics carry over):

- A :class:`SparseTensor` holds features ``(N, C)`` at sites ``(N, 4)`` = ``(batch, x, y, z)``
  int64, with a *tensor stride* ``s``: at stride ``s`` the xyz coordinates are multiples of ``s``
  in input-voxel units, so sites of every level live in one coordinate frame and translating the
  input by a multiple of the coarsest stride translates every level.
- Sites are hashed by packing ``(batch, x, y, z)`` into one int64 key (:func:`pack_coords`), sorted
  once per :class:`CoordinateMap`, and looked up with ``torch.searchsorted``. Packing is linear
  (each field is offset to be non-negative), so the key of ``c + d`` is ``key(c) + key(d)``: a
  neighbour query for a whole kernel offset is one int64 add and one ``searchsorted``.
- Kernel weights are ``(K, C_in, C_out)`` with the K offsets in x-major order (``x`` slowest,
  ``z`` fastest), i.e. ``weight[k]`` is the dense ``Conv3d`` weight ``W[:, :, kx, ky, kz].T``.
- Layers:

  * :class:`SubmanifoldConv3d` (odd kernel, stride 1 at the current level): output sites = input
    sites, ``out[c] = sum_d x[c + d s] @ W[d]`` over the occupied neighbours, which equals dense
    ``Conv3d(padding=K // 2)`` on a grid that is zero off the sites, read at the sites.
  * :class:`StridedConv3d` (kernel 2, stride 2): output sites = unique ``floor(c / 2s) * 2s``,
    ``out[p] = sum_{k in {0,1}^3} x[p + k s] @ W[k]`` (dense ``Conv3d(kernel 2, stride 2)``).
  * :class:`TransposedConv3d` (kernel 2, stride 2): back onto the *known* finer sites (the
    encoder's coordinate map, as MinkowskiEngine's transposed convolution without generating new
    coordinates), ``out[c] = x[parent(c)] @ W[offset(c)]`` (dense ``ConvTranspose3d``).
  * :class:`SparseBatchNorm` (statistics over the N sites of the whole batch), :class:`SparseReLU`,
    :func:`sparse_cat` (channel concatenation of tensors on the same sites).

Kernel maps (which input row feeds which output row for each offset) depend only on the sites, so
each :class:`CoordinateMap` caches them: all convolutions of one level in one forward pass share
one lookup. Tensors derived from one another (BatchNorm, ReLU, submanifold convolution, the
down-sampled map of a strided convolution) share the same map object.

Determinism: on CPU the sums are deterministic; on CUDA ``index_add_`` uses atomics, so results
can differ in the last bits between runs (as with MinkowskiEngine and spconv).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from torch import Tensor, nn

_BATCH_BITS = 12
_XYZ_BITS = 17
_XYZ_OFFSET = 1 << (_XYZ_BITS - 1)
_XYZ_MASK = (1 << _XYZ_BITS) - 1
_SHIFT_X = 2 * _XYZ_BITS
_SHIFT_Y = _XYZ_BITS
_SHIFT_B = 3 * _XYZ_BITS
_MARGIN = 1 << 12
COORD_LIMIT = _XYZ_OFFSET - _MARGIN
"""Largest absolute xyz coordinate a :class:`CoordinateMap` accepts (61440 voxels: 3 km at 5 cm).

The margin up to the packing limit keeps every neighbour query (``|offset| * stride < 4096``) and
every down-sampled site inside its bit field, so adding an offset never carries into the next field
and aliases a different site."""
_MAP_CHUNK = 1 << 25
"""Neighbour keys looked up per batch when building a kernel map (32 M: 256 MB of int64 keys)."""
MAX_BATCH = 1 << _BATCH_BITS
"""Number of scenes one batch can hold (batch index 0 .. 4095)."""


def pack_coords(coords: Tensor) -> Tensor:
    """(N, 4) int64 ``(batch, x, y, z)`` -> (N,) int64 keys, ordered like ``(batch, x, y, z)``.

    The caller validates ranges (:class:`CoordinateMap` does); out-of-range values would alias.
    """
    c = coords.to(torch.int64)
    return (
        (c[:, 0] << _SHIFT_B)
        | ((c[:, 1] + _XYZ_OFFSET) << _SHIFT_X)
        | ((c[:, 2] + _XYZ_OFFSET) << _SHIFT_Y)
        | (c[:, 3] + _XYZ_OFFSET)
    )


def unpack_keys(keys: Tensor) -> Tensor:
    """Inverse of :func:`pack_coords`: (N,) int64 -> (N, 4) int64."""
    return torch.stack(
        [
            keys >> _SHIFT_B,
            ((keys >> _SHIFT_X) & _XYZ_MASK) - _XYZ_OFFSET,
            ((keys >> _SHIFT_Y) & _XYZ_MASK) - _XYZ_OFFSET,
            (keys & _XYZ_MASK) - _XYZ_OFFSET,
        ],
        dim=1,
    )


def _offset_key(dx: int, dy: int, dz: int) -> int:
    """Key difference of an xyz displacement (packing is linear while no field over/underflows)."""
    return (dx << _SHIFT_X) + (dy << _SHIFT_Y) + dz


def kernel_offsets(kernel_size: int) -> list[tuple[int, int, int]]:
    """Offsets of an odd cubic kernel in weight order (x slowest, z fastest), in level units."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"submanifold kernels must have an odd size, got {kernel_size}")
    r = kernel_size // 2
    return list(itertools.product(range(-r, r + 1), repeat=3))


@dataclass(frozen=True, eq=False)
class Downsample:
    """How the sites of a map fall into the sites of its 2x coarser map (kernel 2, stride 2).

    Attributes:
        coarse: the coarser :class:`CoordinateMap` (stride ``2 s``).
        groups: per kernel offset ``k`` in ``{0,1}^3`` (index ``4 kx + 2 ky + kz``), the fine rows
            at that offset from their parent and the parent rows: ``(k, fine_rows, coarse_rows)``.
            Empty offsets are left out.
    """

    coarse: CoordinateMap
    groups: tuple[tuple[int, Tensor, Tensor], ...]


class CoordinateMap:
    """One set of voxel sites at one tensor stride, hashed for neighbour look-ups.

    Built once per level per forward pass; every layer working on these sites reuses its sorted
    keys and cached kernel maps. The rows keep the caller's order (the network's output row ``i``
    belongs to input site ``i``), sorting is internal.

    Args:
        coords: (N, 4) integer ``(batch, x, y, z)``; unique; batch in ``[0, MAX_BATCH)``; xyz within
            ``+-COORD_LIMIT`` and multiples of ``stride``.
        stride: tensor stride of the level (1 for input voxels).

    Raises:
        ValueError: on duplicate sites, out-of-range or misaligned coordinates.
    """

    def __init__(self, coords: Tensor, stride: int = 1) -> None:
        coords = torch.as_tensor(coords)
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be (N, 4) (batch, x, y, z), got {tuple(coords.shape)}")
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError("coords must be integer voxel indices")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        coords = coords.to(torch.int64).contiguous()
        keys = pack_coords(coords)
        sorted_keys, order = torch.sort(keys)
        if coords.shape[0]:
            # Every check as a device flag, read back in one synchronisation (on a GPU each read-back
            # stalls the launch queue; this constructor runs for every scene and query).
            b = coords[:, 0]
            flags = torch.stack(
                [
                    ((b < 0) | (b >= MAX_BATCH)).any(),
                    coords[:, 1:].abs().max() > COORD_LIMIT,
                    (coords[:, 1:] % stride != 0).any(),
                    (sorted_keys[1:] == sorted_keys[:-1]).any(),
                ]
            ).tolist()
            if flags[0]:
                raise ValueError(f"batch index must be in [0, {MAX_BATCH})")
            if flags[1]:
                raise ValueError(f"voxel coordinate beyond +-{COORD_LIMIT}")
            if flags[2]:
                raise ValueError(f"coordinates at stride {stride} must be multiples of it")
            if flags[3]:
                raise ValueError("duplicate voxel sites: voxelise (unique) before building a SparseTensor")
        self._init(coords, stride, keys, sorted_keys, order)

    @classmethod
    def _from_sorted_unique_keys(cls, keys: Tensor, stride: int) -> CoordinateMap:
        """Map whose rows are already sorted unique keys (the output of ``torch.unique``)."""
        self = cls.__new__(cls)
        self._init(unpack_keys(keys), stride, keys, keys, None)
        return self

    def _init(
        self, coords: Tensor, stride: int, keys: Tensor, sorted_keys: Tensor, order: Tensor | None
    ) -> None:
        self.coords = coords
        self.stride = int(stride)
        self.keys = keys
        self._sorted_keys = sorted_keys
        self._order = order
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def __repr__(self) -> str:
        return f"CoordinateMap(n={len(self)}, stride={self.stride}, device={self.coords.device})"

    @property
    def device(self) -> torch.device:
        """Device of the coordinates (and of every index tensor derived from them)."""
        return self.coords.device

    @property
    def batch_size(self) -> int:
        """``max(batch index) + 1`` (0 for an empty map)."""
        return int(self.coords[:, 0].max()) + 1 if len(self) else 0

    def lookup(self, keys: Tensor) -> Tensor:
        """Row of each packed key in this map, -1 where the site is not in it."""
        n = len(self)
        if n == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self._sorted_keys, keys).clamp_(max=n - 1)
        hit = self._sorted_keys[pos] == keys
        rows = pos if self._order is None else self._order[pos]
        return torch.where(hit, rows, torch.full_like(rows, -1))

    def submanifold_map(self, kernel_size: int) -> tuple[tuple[int, Tensor, Tensor], ...]:
        """Kernel map of a submanifold convolution: ``(k, out_rows, in_rows)`` per non-centre offset.

        ``out_rows[j]`` receives ``x[in_rows[j]] @ W[k]``: the site ``c`` gathers from the occupied
        site ``c + offset_k * stride``. The centre offset (every site its own neighbour) is left to
        the caller, which applies it as one dense matmul. Cached per kernel size.
        """
        key = ("sub", kernel_size)
        if key not in self._cache:
            offsets = kernel_offsets(kernel_size)
            reach = (kernel_size // 2) * self.stride
            if reach >= _MARGIN:
                raise ValueError(f"kernel reach {reach} voxels exceeds the packing margin {_MARGIN}")
            centre = len(offsets) // 2
            others = [k for k in range(len(offsets)) if k != centre]
            # Many offsets per batch: one search, one nonzero and one host read of the counts for a
            # whole chunk of the kernel instead of one of each per offset (on a GPU these launches
            # and synchronisations, not the arithmetic, were the cost of building the map). Chunks
            # keep the temporary (offsets x sites) keys near _MAP_CHUNK elements.
            per_chunk = max(1, _MAP_CHUNK // max(1, len(self)))
            maps = []
            for c0 in range(0, len(others), per_chunk):
                ks = others[c0 : c0 + per_chunk]
                deltas = torch.tensor(
                    [_offset_key(*(d * self.stride for d in offsets[k])) for k in ks],
                    dtype=torch.int64,
                    device=self.device,
                )
                rows = self.lookup((self.keys[None, :] + deltas[:, None]).reshape(-1)).reshape(len(ks), -1)
                which, out_rows = torch.nonzero(rows >= 0, as_tuple=True)  # offset-major, rows ascending
                in_rows = rows[which, out_rows]
                start = 0
                for k, n in zip(ks, torch.bincount(which, minlength=len(ks)).tolist(), strict=True):
                    if n:
                        maps.append((k, out_rows[start : start + n], in_rows[start : start + n]))
                    start += n
            self._cache[key] = tuple(maps)
        return self._cache[key]

    def downsample(self) -> Downsample:
        """Sites of the 2x coarser level (``floor(c / 2s) * 2s``) and how these sites fall into them.

        Cached, so the strided convolution of the encoder and the transposed convolution of the
        decoder agree on one coarse map object (the U-Net's skip connections rely on it).
        """
        if "down" not in self._cache:
            s2 = 2 * self.stride
            if s2 >= _MARGIN:
                raise ValueError(f"stride {s2} exceeds the packing margin {_MARGIN}")
            xyz = self.coords[:, 1:]
            base = torch.div(xyz, s2, rounding_mode="floor") * s2
            k3 = torch.div(xyz - base, self.stride, rounding_mode="floor")  # each 0 or 1
            offset_id = k3[:, 0] * 4 + k3[:, 1] * 2 + k3[:, 2]
            coarse_keys = pack_coords(torch.cat([self.coords[:, :1], base], dim=1))
            unique_keys, parent = torch.unique(coarse_keys, sorted=True, return_inverse=True)
            coarse = CoordinateMap._from_sorted_unique_keys(unique_keys, s2)
            # One stable sort by child offset and one read-back of the 8 counts, not a nonzero (and
            # a synchronisation) per offset; rows stay ascending within each offset.
            rows_by_offset = torch.sort(offset_id, stable=True).indices
            counts = torch.bincount(offset_id, minlength=8).tolist()
            groups = []
            start = 0
            for k, n in enumerate(counts):
                if n:
                    rows = rows_by_offset[start : start + n]
                    groups.append((k, rows, parent[rows]))
                start += n
            self._cache["down"] = Downsample(coarse, tuple(groups))
        return self._cache["down"]


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """Features at voxel sites: the data type every layer of :mod:`reasoning_seg.net` passes on.

    Attributes:
        feats: (N, C) floating-point features, row ``i`` at ``cmap.coords[i]``.
        cmap: the sites (shared, with their cached kernel maps, by tensors on the same sites).
    """

    feats: Tensor
    cmap: CoordinateMap

    def __post_init__(self) -> None:
        if self.feats.dim() != 2 or self.feats.shape[0] != len(self.cmap):
            raise ValueError(f"feats must be ({len(self.cmap)}, C), got {tuple(self.feats.shape)}")

    @classmethod
    def from_coords(cls, coords: Tensor, feats: Tensor, stride: int = 1) -> SparseTensor:
        """Build a tensor (and its coordinate map) from (N, 4) sites and (N, C) features."""
        return cls(feats, CoordinateMap(torch.as_tensor(coords, device=feats.device), stride))

    @classmethod
    def from_batch(cls, coords: list[Tensor], feats: list[Tensor]) -> SparseTensor:
        """Batch several scenes: per-scene (N_i, 3) voxel indices and (N_i, C) features.

        Rows are concatenated in scene order, so scene ``i``'s outputs are the rows
        ``sum(N_<i) .. sum(N_<=i)`` of the network's output.
        """
        if len(coords) != len(feats) or not coords:
            raise ValueError("need one feature tensor per coordinate tensor, at least one scene")
        rows = []
        for b, c in enumerate(coords):
            c = torch.as_tensor(c, dtype=torch.int64, device=feats[0].device)
            rows.append(torch.cat([torch.full((c.shape[0], 1), b, dtype=torch.int64, device=c.device), c], 1))
        return cls.from_coords(torch.cat(rows), torch.cat(list(feats)))

    @property
    def coords(self) -> Tensor:
        """(N, 4) int64 ``(batch, x, y, z)`` sites."""
        return self.cmap.coords

    @property
    def stride(self) -> int:
        """Tensor stride of the level (coordinates are multiples of it)."""
        return self.cmap.stride

    def replace(self, feats: Tensor) -> SparseTensor:
        """Same sites, new features (keeps the cached kernel maps)."""
        return SparseTensor(feats, self.cmap)


def sparse_cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate channels of tensors on the same sites (the U-Net's skip connections).

    Raises:
        ValueError: if the tensors are on different coordinate maps (rows would not correspond).
    """
    cmap = tensors[0].cmap
    if any(t.cmap is not cmap for t in tensors[1:]):
        raise ValueError("sparse_cat needs tensors on the same CoordinateMap object")
    return SparseTensor(torch.cat([t.feats for t in tensors], dim=1), cmap)


def _accumulate(
    out: Tensor | None, f: Tensor, weight: Tensor, n_out: int, maps: Iterable[tuple[int, Tensor, Tensor]]
) -> Tensor:
    """Add ``f[in_rows] @ weight[k]`` into rows ``out_rows`` for every ``(k, out_rows, in_rows)``.

    The accumulator is created from the first product, so it has the matmul's dtype: under autocast
    (half/bfloat16 matmuls with float32 features) ``index_add_`` then sees matching types.
    """
    for k, out_rows, in_rows in maps:
        prod = f[in_rows] @ weight[k]
        if out is None:
            out = prod.new_zeros((n_out, prod.shape[1]))
        out.index_add_(0, out_rows, prod)
    if out is None:  # no pairs at all (empty input)
        out = (f[:0] @ weight[0]).new_zeros((n_out, weight.shape[2]))
    return out


@dataclass(frozen=True)
class SparseConvOps:
    """A sparse-convolution backend: what the layers call instead of their own torch arithmetic.

    Registered by name in ``reasoning_seg.backends.SPARSE_CONV`` (``net.backend``); the torch path
    built into the layers is the reference and needs no entry. Each function takes features, our
    ``(K, C_in, C_out)`` weight and :class:`CoordinateMap` objects and returns output features in our
    row order, differentiably.
    """

    available: Any  # () -> bool: the library can be imported
    device_types: tuple[str, ...]  # torch device types it runs on
    submanifold: Any  # (feats, weight, cmap, kernel_size) -> feats on cmap
    strided: Any  # (feats, weight, cmap) -> feats on cmap.downsample().coarse
    transposed: Any  # (feats, weight, fine) -> feats on fine (from fine.downsample().coarse)


def _ops(name: str) -> SparseConvOps:
    from reasoning_seg.backends import SPARSE_CONV

    return SPARSE_CONV.get(name)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend ``name`` means on ``device``.

    ``auto`` is ``triton`` on CUDA where Triton is importable, the torch path everywhere else:
    measured on an H100 in one run (bench/results/net.md), the fused kernel's forward (the query
    path) takes 29 / 45 / 100 ms at 100k / 300k / 1M fresh voxels against torch's 62 / 58 / 134 and
    spconv-triton's 65 / 123 / 337, its training step 126 / 160 / 340 ms against 234 / 195 / 452, with
    no autotuning (spconv-triton times 37 tile candidates per layer shape on first use, 60-94 s each).

    Raises:
        ValueError: unknown name, or a backend asked for where it cannot run (device, not installed).
    """
    from reasoning_seg.backends import SPARSE_CONV

    dev = torch.device(device)
    if name == "auto":
        return "triton" if dev.type == "cuda" and _ops("triton").available() else "torch"
    if name == "torch":
        return name
    if name not in SPARSE_CONV:
        raise ValueError(f"unknown net backend '{name}' (auto, torch, {', '.join(SPARSE_CONV.names())})")
    ops = _ops(name)
    if dev.type not in ops.device_types:
        raise ValueError(f"net.backend '{name}' runs on {'/'.join(ops.device_types)} only, not {dev.type}")
    if not ops.available():
        raise ValueError(f"net.backend '{name}' cannot be imported here (see the 'gpu' extra)")
    return name


def set_backend(model: nn.Module, name: str, device: torch.device | str | None = None) -> str:
    """Make every sparse convolution in ``model`` use backend ``name``; returns the resolved name.

    Weights, sites and checkpoints are the same for every backend: only the arithmetic changes.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    resolved = resolve_backend(name, device)
    for m in model.modules():
        if isinstance(m, _KernelConv):
            m.backend = resolved
    return resolved


class _KernelConv(nn.Module):
    """Weight ``(K, C_in, C_out)`` and optional bias shared by the convolution layers."""

    backend = "torch"
    """Which arithmetic :meth:`forward` uses (:func:`set_backend`); not part of the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int, volume: int, bias: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal over the full kernel fan-in, the usual choice for conv + BatchNorm + ReLU stacks.

        (Sparse inputs have fewer occupied neighbours than the kernel volume; BatchNorm after every
        convolution makes the scale of the initialisation immaterial.)
        """
        fan_in = self.weight.shape[0] * self.in_channels
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / max(1, fan_in)))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        volume = self.weight.shape[0]
        return f"{self.in_channels}, {self.out_channels}, volume={volume}, bias={self.bias is not None}"

    def _finish(self, out: Tensor) -> Tensor:
        return out if self.bias is None else out + self.bias


class SubmanifoldConv3d(_KernelConv):
    """Submanifold sparse convolution: odd cubic kernel, output on exactly the input sites.

    Why submanifold: a regular convolution dilates the occupied set at every layer and a scene's
    surface voxels would fill the volume; keeping the sites fixed keeps cost linear in the surface.
    ``kernel_size=1`` is a per-site linear layer (the U-Net's shortcut and final layers).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False) -> None:
        kernel_offsets(kernel_size)  # validates
        self.kernel_size = kernel_size
        super().__init__(in_channels, out_channels, kernel_size**3, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``out[c] = sum over occupied c + d s of x[c + d s] @ W[d]`` (+ bias)."""
        f = x.feats
        if self.kernel_size > 1 and self.backend != "torch":
            ops = _ops(self.backend)
            return x.replace(self._finish(ops.submanifold(f, self.weight, x.cmap, self.kernel_size)))
        out = f @ self.weight[self.weight.shape[0] // 2]
        if self.kernel_size > 1:
            out = _accumulate(out, f, self.weight, len(x.cmap), x.cmap.submanifold_map(self.kernel_size))
        return x.replace(self._finish(out))


class StridedConv3d(_KernelConv):
    """Kernel 2, stride 2 convolution: halves the resolution, output sites ``floor(c / 2s) * 2s``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = False
    ):
        if kernel_size != 2 or stride != 2:
            raise ValueError("this backend implements the U-Net's kernel-2 stride-2 down-sampling only")
        super().__init__(in_channels, out_channels, 8, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``out[p] = sum_{k in {0,1}^3, p + k s occupied} x[p + k s] @ W[k]`` at the coarse sites."""
        down = x.cmap.downsample()
        if self.backend != "torch":
            out = _ops(self.backend).strided(x.feats, self.weight, x.cmap)
            return SparseTensor(self._finish(out), down.coarse)
        maps = ((k, coarse_rows, fine_rows) for k, fine_rows, coarse_rows in down.groups)
        out = _accumulate(None, x.feats, self.weight, len(down.coarse), maps)
        return SparseTensor(self._finish(out), down.coarse)


class TransposedConv3d(_KernelConv):
    """Kernel 2, stride 2 transposed convolution onto the given finer sites.

    Why onto given sites: a generative transposed convolution would create all 8 children of every
    coarse site; the U-Net needs exactly the encoder's sites at that level (for the skip
    concatenation), as MinkowskiEngine's transposed convolution on an existing coordinate map.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = False
    ):
        if kernel_size != 2 or stride != 2:
            raise ValueError("this backend implements the U-Net's kernel-2 stride-2 up-sampling only")
        super().__init__(in_channels, out_channels, 8, bias)

    def forward(self, x: SparseTensor, target: SparseTensor | CoordinateMap) -> SparseTensor:
        """``out[c] = x[parent(c)] @ W[offset(c)]`` at every site ``c`` of ``target``.

        Args:
            x: coarse features at stride ``2 s``.
            target: the finer sites (stride ``s``); a site whose parent is not in ``x`` gets zeros
                (plus bias).

        Raises:
            ValueError: if the strides do not differ by exactly 2.
        """
        fine = target.cmap if isinstance(target, SparseTensor) else target
        if 2 * fine.stride != x.stride:
            raise ValueError(f"transposed conv from stride {x.stride} needs target stride {x.stride // 2}")
        down = fine.downsample()
        if self.backend != "torch" and down.coarse is x.cmap:
            return SparseTensor(self._finish(_ops(self.backend).transposed(x.feats, self.weight, fine)), fine)
        maps: Iterable[tuple[int, Tensor, Tensor]] = down.groups
        if down.coarse is not x.cmap:  # target's coarse sites were not produced from it: look them up
            remap = x.cmap.lookup(down.coarse.keys)
            kept = []
            for k, fine_rows, coarse_rows in down.groups:
                rows = remap[coarse_rows]
                keep = rows >= 0
                kept.append((k, fine_rows[keep], rows[keep]))
            maps = kept
        out = _accumulate(None, x.feats, self.weight, len(fine), maps)
        return SparseTensor(self._finish(out), fine)


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the N sites of the batch (``momentum`` in PyTorch's convention).

    Statistics are over occupied sites only (not over the empty space of a dense grid), as in
    MinkowskiEngine, whose ``MinkowskiBatchNorm`` also passes ``momentum`` to ``torch.nn``.
    """

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        """Normalise ``x.feats`` channel-wise."""
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.Module):
    """ReLU on the features (sites unchanged)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``max(x, 0)`` feature-wise."""
        return x.replace(F.relu(x.feats))
