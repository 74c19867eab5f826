"""TSDF fusion in PyTorch: a sparse grid of 8^3-voxel blocks that runs on CUDA without Open3D.

Why it exists: the GPU machines this package targets can install PyTorch but not the Open3D wheel,
and the issue asks for integration on the GPU. This module is a self-contained equivalent of the
Open3D ``VoxelBlockGrid`` use in :mod:`reasoning_seg.mapping.voxel_map`, with the same conventions so maps
move between the two (``export`` / ``import_``):

- voxel ``v`` (integer lattice coordinate) sits at ``v * voxel_size`` in the map frame; block
  ``b`` holds voxels ``8 b .. 8 b + 7``; inside a block the flat voxel index is ``x + 8 y + 64 z``;
- projective truncated signed distance (KinectFusion): a voxel at camera depth ``z`` that projects
  onto a pixel with depth ``d`` gets ``sdf = d - z``; voxels with ``sdf < -trunc`` (hidden behind
  the surface) are left alone, the rest average ``min(1, sdf / trunc)`` with weight 1 per frame,
  and colour (stored 0..255, as Open3D does) the same way;
- surface points are the zero crossings of the TSDF between a voxel and its +x, +y, +z neighbour
  (both observed more than ``min_weight`` and neither truncated, i.e. |tsdf| < ``TRUNCATED``),
  placed by linear interpolation, with interpolated colour. A crossing from a truncated voxel
  (+1: the band's far edge in front of a depth jump) to a negative one is an artefact of
  silhouettes, not a surface; Open3D's legacy extractor drops those too.

Block lookup is a sorted int64 key array searched with ``torch.searchsorted`` (a hash table without
atomics: a frame touches a few hundred to a few thousand blocks, so sorting them is cheap on a GPU
and everything stays on the device). Which blocks a frame touches is found by sampling each
(strided) pixel's ray across the truncation band, one sample per voxel length.

PyTorch is imported lazily so the rest of the package never needs it.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

BLOCK = 8
VOXELS_PER_BLOCK = BLOCK**3
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_FIELD = (1 << _BITS) - 1
_SENTINEL = (1 << 63) - 1
TRUNCATED = 0.999
"""A voxel with |tsdf| at or above this only saw the truncation band's edge: no surface end point."""


def torch_device_name(device: str) -> str:
    """Map an Open3D-style device ("CPU:0", "CUDA:1") or a torch one ("cuda") to a torch device."""
    d = device.strip()
    if ":" in d and d.split(":", 1)[0].upper() in ("CPU", "CUDA"):
        kind, idx = d.split(":", 1)
        return "cpu" if kind.upper() == "CPU" else f"cuda:{int(idx)}"
    return d.lower()


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "map.backend 'torch' needs PyTorch (pip install torch==2.13.0 for the CPU wheel)"
        ) from exc
    return torch


class TorchBlockGrid:
    """Sparse TSDF + colour grid on a torch device (see the module docstring for conventions)."""

    name = "torch"

    def __init__(
        self,
        voxel_size: float,
        trunc_voxels: float,
        depth_max: float,
        device: str = "cpu",
        initial_blocks: int = 1024,
    ) -> None:
        torch = _import_torch()
        self._torch = torch
        self.device = torch.device(torch_device_name(device))
        self.voxel_size = float(voxel_size)
        self.trunc = float(trunc_voxels) * self.voxel_size
        self.depth_max = float(depth_max)
        self._initial = max(16, int(initial_blocks))
        self.capacity_hint = 0
        i = torch.arange(VOXELS_PER_BLOCK, device=self.device)
        self._local = torch.stack([i % BLOCK, (i // BLOCK) % BLOCK, i // (BLOCK * BLOCK)], dim=1)
        self._local_f = self._local.to(torch.float32)
        # Surface extraction, all three axes at once: per axis, the flat index of each voxel's +axis
        # neighbour (wrapping into the next block at the block's edge) and which voxels are at it.
        self._unit = torch.eye(3, dtype=torch.int64, device=self.device)
        self._unit_f = self._unit.to(torch.float32)
        steps = torch.tensor([1, BLOCK, BLOCK * BLOCK], device=self.device)[:, None]
        self._at_edge = self._local.T == BLOCK - 1  # (3, 512)
        self._nb_idx = torch.where(self._at_edge, i - (BLOCK - 1) * steps, i + steps)
        self._surface_device: tuple[Any, Any] | None = None  # (weakref to the host points, device copy)
        self._topology_cache: tuple[Any, Any, Any, Any] | None = None
        self._rays: dict[tuple, Any] = {}
        self.reset()

    # ------------------------------------------------------------------ storage
    def reset(self) -> None:
        """Drop every block and shrink back to the initial capacity."""
        torch = self._torch
        self._keys = torch.zeros(0, dtype=torch.int64, device=self.device)  # sorted packed block keys
        self._slots = torch.zeros(0, dtype=torch.int64, device=self.device)  # storage slot per key
        self._capacity = 0
        self.tsdf = torch.zeros((0, VOXELS_PER_BLOCK), dtype=torch.float32, device=self.device)
        self.weight = torch.zeros_like(self.tsdf)
        self.color = torch.zeros((0, VOXELS_PER_BLOCK, 3), dtype=torch.float32, device=self.device)
        self._free = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._grow(self._initial)

    def _grow(self, needed_free: int) -> None:
        torch = self._torch
        need = self._capacity + needed_free
        new_cap = max(self._capacity * 2, need, self._initial)
        if self.capacity_hint > 0:  # near a block budget: grow to the budget, not past it
            new_cap = max(need, min(new_cap, self.capacity_hint), self._initial)
        extra = new_cap - self._capacity
        z = torch.zeros((extra, VOXELS_PER_BLOCK), dtype=torch.float32, device=self.device)
        self.tsdf = torch.cat([self.tsdf, z])
        self.weight = torch.cat([self.weight, z.clone()])
        self.color = torch.cat(
            [self.color, torch.zeros((extra, VOXELS_PER_BLOCK, 3), dtype=torch.float32, device=self.device)]
        )
        # Free slots are popped from the end: keep low slots first out for locality.
        new_free = torch.arange(new_cap - 1, self._capacity - 1, -1, device=self.device)
        self._free = torch.cat([new_free, self._free])
        self._capacity = new_cap

    @property
    def num_blocks(self) -> int:
        """Allocated blocks (memory in use is proportional to the capacity, see memory_bytes)."""
        return int(self._keys.numel())

    @property
    def capacity(self) -> int:
        """Blocks the storage can hold before it grows."""
        return self._capacity

    def memory_bytes(self) -> int:
        """Bytes of voxel storage held on the device (capacity x 512 voxels x 20 bytes)."""
        return self._capacity * VOXELS_PER_BLOCK * (4 + 4 + 12)

    # ------------------------------------------------------------------ keys
    def _pack(self, c: Any) -> Any:
        c = c + _OFFSET
        return (c[..., 0] << (2 * _BITS)) | (c[..., 1] << _BITS) | c[..., 2]

    def _unpack(self, k: Any) -> Any:
        torch = self._torch
        return torch.stack([(k >> (2 * _BITS)) & _FIELD, (k >> _BITS) & _FIELD, k & _FIELD], dim=-1) - _OFFSET

    def _lookup(self, keys: Any) -> Any:
        """Slot of each packed key, -1 where the block is not allocated."""
        torch = self._torch
        if self._keys.numel() == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self._keys, keys).clamp_(max=self._keys.numel() - 1)
        return torch.where(self._keys[pos] == keys, self._slots[pos], torch.full_like(keys, -1))

    def _allocate(self, keys: Any) -> Any:
        """Slots for sorted unique ``keys``, allocating (zeroed) blocks for the missing ones."""
        torch = self._torch
        slots = self._lookup(keys)
        missing = slots < 0
        n_new = int(missing.sum())
        if n_new:
            if self._free.numel() < n_new:
                self._grow(n_new - self._free.numel())
            new_slots = self._free[-n_new:]
            self._free = self._free[:-n_new]
            self.tsdf[new_slots] = 0.0
            self.weight[new_slots] = 0.0
            self.color[new_slots] = 0.0
            all_keys = torch.cat([self._keys, keys[missing]])
            all_slots = torch.cat([self._slots, new_slots])
            order = torch.argsort(all_keys)
            self._keys, self._slots = all_keys[order], all_slots[order]
            slots = slots.clone()
            slots[missing] = new_slots
        return slots

    def block_coords(self) -> np.ndarray:
        """(N, 3) int64 coordinates of the allocated blocks (sorted by key)."""
        return self._unpack(self._keys).cpu().numpy().astype(np.int64)

    def block_max_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """Block coordinates (sorted by key) and their largest voxel weight, reduced on the device."""
        return self.block_coords(), self.weight[self._slots].amax(dim=1).cpu().numpy().astype(np.float32)

    def _as_keys(self, block_coords: np.ndarray) -> Any:
        torch = self._torch
        c = torch.as_tensor(np.asarray(block_coords, dtype=np.int64).reshape(-1, 3), device=self.device)
        return self._pack(c)

    def erase_blocks(self, block_coords: np.ndarray) -> int:
        """Deallocate blocks (their storage is zeroed and reused); returns how many existed."""
        torch = self._torch
        keys = self._as_keys(block_coords)
        slots = self._lookup(keys)
        slots = torch.unique(slots[slots >= 0])
        if slots.numel() == 0:
            return 0
        self.tsdf[slots] = 0.0
        self.weight[slots] = 0.0
        self.color[slots] = 0.0
        keep = ~torch.isin(self._slots, slots)
        self._keys, self._slots = self._keys[keep], self._slots[keep]
        self._free = torch.cat([self._free, slots])
        return int(slots.numel())

    def clear_voxels(self, voxels: np.ndarray) -> int:
        """Forget voxels (weight 0: not surface until observed again); returns how many had data."""
        torch = self._torch
        v = torch.as_tensor(np.asarray(voxels, dtype=np.int64).reshape(-1, 3), device=self.device)
        if v.numel() == 0:
            return 0
        blocks = torch.div(v, BLOCK, rounding_mode="floor")
        local = v - blocks * BLOCK
        flat = local[:, 0] + BLOCK * local[:, 1] + BLOCK * BLOCK * local[:, 2]
        slots = self._lookup(self._pack(blocks))
        ok = slots >= 0
        slots, flat = slots[ok], flat[ok]
        had = int((self.weight[slots, flat] > 0).sum())
        self.weight[slots, flat] = 0.0
        self.tsdf[slots, flat] = 0.0
        self.color[slots, flat] = 0.0
        return had

    # ------------------------------------------------------------------ integration
    def _pixel_rays(self, width: int, height: int, K: np.ndarray, stride: int) -> Any:
        key = (width, height, stride, *np.asarray(K, dtype=np.float64).reshape(-1).tolist())
        rays = self._rays.get(key)
        if rays is None:
            torch = self._torch
            u = torch.arange(0, width, stride, dtype=torch.float32, device=self.device)
            v = torch.arange(0, height, stride, dtype=torch.float32, device=self.device)
            vv, uu = torch.meshgrid(v, u, indexing="ij")
            rays = torch.stack(
                [
                    (uu - float(K[0, 2])) / float(K[0, 0]),
                    (vv - float(K[1, 2])) / float(K[1, 1]),
                    torch.ones_like(uu),
                ],
                dim=-1,
            )
            if len(self._rays) > 8:
                self._rays.clear()
            self._rays[key] = rays
        return rays

    def touched_blocks(self, depth: Any, K: np.ndarray, R: Any, t: Any) -> Any:
        """Sorted unique packed keys of the blocks the frame's truncation band passes through.

        ``depth`` must already hold 0 beyond ``depth_max``. Pixels are strided so that neighbouring
        samples are at most one voxel apart at the maximum depth, and each ray is sampled once per
        voxel length across ``[d - trunc, d + trunc]``: every block the band crosses by more than
        about a voxel is found.
        """
        torch = self._torch
        h, w = depth.shape
        stride = max(1, int(math.floor(self.voxel_size * float(K[0, 0]) / max(self.depth_max, 1e-6))))
        d = depth[::stride, ::stride]
        n_s = int(math.ceil(2.0 * self.trunc / self.voxel_size)) + 1
        offs = torch.linspace(-self.trunc, self.trunc, n_s, device=self.device)
        z = (d[..., None] + offs).clamp_(min=0.0)  # (h', w', n_s)
        rays_w = self._pixel_rays(w, h, K, stride) @ R.T  # world directions with unit camera z
        inv_block = 1.0 / (BLOCK * self.voxel_size)
        pw = torch.addcmul(t * inv_block, rays_w[..., None, :] * inv_block, z[..., None])  # in blocks
        blocks = torch.floor(pw).to(torch.int64).clamp_(-_OFFSET + 1, _OFFSET - 1)
        keys = self._pack(blocks)
        keys = torch.where((d > 0)[..., None], keys, _SENTINEL)
        uq = torch.unique(keys)
        if uq.numel() and int(uq[-1]) == _SENTINEL:
            uq = uq[:-1]
        return uq

    def _tensor(self, x: Any) -> Any:
        """A numpy array or tensor on this device (read-only arrays are copied: torch needs writable ones)."""
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            if not x.flags.writeable:
                x = x.copy()
            return self._torch.from_numpy(x).to(self.device, non_blocking=True)
        return x.to(self.device)

    def integrate(self, depth: Any, color: Any, K: np.ndarray, T_world_cam: np.ndarray) -> None:
        """Fuse one frame: depth (H, W) float metres (0 = none), colour (H, W, 3) uint8, 3x3 K, pose.

        Per touched block, every voxel is projected with one affine map (``K R^T`` folded with the
        voxel size), so the (blocks x 512) work is a handful of element-wise kernels.
        """
        torch = self._torch
        d = self._tensor(depth).to(torch.float32)
        d = torch.where(d <= self.depth_max, d, 0.0)
        c = self._tensor(color)
        T = np.asarray(T_world_cam, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        # Homogeneous pixel coordinates (u z, v z, z) of voxel (8 b + l): P (8 b + l) vs + q with
        # P = K R^T and q = -K R^T t, split into a per-block and a per-voxel term. One host-to-device
        # copy carries every per-frame constant.
        P = K @ T[:3, :3].T
        q = -P @ T[:3, 3]
        consts = np.concatenate([T[:3, :3].ravel(), T[:3, 3], (P.T * self.voxel_size).ravel(), q])
        ct = torch.as_tensor(consts.astype(np.float32), device=self.device)
        R, t, A, qt = ct[:9].reshape(3, 3), ct[9:12], ct[12:21].reshape(3, 3), ct[21:24]
        h, w = d.shape
        keys = self.touched_blocks(d, K, R, t)
        if keys.numel() == 0:
            return
        slots = self._allocate(keys)
        blocks = self._unpack(keys).to(torch.float32)
        per_block = torch.addmm(qt, blocks * BLOCK, A)
        ph = per_block[:, None, :] + (self._local_f @ A)[None]  # (n, 512, 3)
        z = ph[..., 2]
        u = torch.round(ph[..., 0] / z)
        v = torch.round(ph[..., 1] / z)
        inside = (z > 0) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        pix = torch.where(inside, v * w + u, 0.0).to(torch.int64)
        dd = torch.where(inside, d.reshape(-1)[pix], 0.0)
        sdf = dd - z
        upd = (dd > 0) & (sdf >= -self.trunc)
        obs = torch.clamp(sdf * (1.0 / self.trunc), max=1.0)
        t_old, w_old = self.tsdf[slots], self.weight[slots]
        w_new = w_old + upd.to(torch.float32)
        inv_w = 1.0 / w_new.clamp(min=1.0)
        self.tsdf[slots] = torch.where(upd, torch.addcmul(obs, t_old, w_old) * inv_w, t_old)
        col = c.reshape(-1, 3)[pix].to(torch.float32)
        c_old = self.color[slots]
        c_new = torch.addcmul(col, c_old, w_old[..., None]) * inv_w[..., None]
        self.color[slots] = torch.where(upd[..., None], c_new, c_old)
        self.weight[slots] = w_new

    # ------------------------------------------------------------------ extraction
    def extract(self, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Zero-crossing surface points (N, 3) float64 and colours (N, 3) float32 in [0, 1].

        The three axes are tested as one (3, blocks, 512) batch and the points and colours come to
        the host in one copy: on a GPU the extraction's cost is its kernel launches and
        synchronisations, not its arithmetic (bench/results/query.md). The device copy of the
        points stays available to the query through :meth:`device_points`.
        """
        from reasoning_seg.transfer import to_host

        torch = self._torch
        self._surface_device = None
        if self._keys.numel() == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.float32)
        slots, blocks, nb_slot = self._topology()
        T0, W0 = self.tsdf[slots], self.weight[slots]  # (n, 512)
        base = ((blocks[:, None, :] * BLOCK).to(torch.float32) + self._local_f) * self.voxel_size
        # (3, n, 512) storage row of each voxel's neighbour along each axis
        nb_rows = torch.where(self._at_edge[:, None], nb_slot[..., None].clamp(min=0), slots[None, :, None])
        nb_idx = self._nb_idx[:, None]
        T1, W1 = self.tsdf[nb_rows, nb_idx], self.weight[nb_rows, nb_idx]
        exists = ~self._at_edge[:, None] | (nb_slot[..., None] >= 0)
        hit = exists & (W0 > min_weight) & (W1 > min_weight) & (T0 * T1 < 0)
        hit &= (T0.abs() < TRUNCATED) & (T1.abs() < TRUNCATED)
        ax, bi, vi = torch.nonzero(hit, as_tuple=True)  # axis-major: the x crossings, then y, then z
        if bi.numel() == 0:
            return np.zeros((0, 3)), np.zeros((0, 3), np.float32)
        t0, t1 = T0[bi, vi], T1[ax, bi, vi]
        r = t0 / (t0 - t1)
        # the crossing lies r voxels along the axis: adds r * voxel to that coordinate only (exact,
        # the other coordinates get + 0)
        p = torch.addcmul(base[bi, vi], self._unit_f[ax], (r * self.voxel_size)[:, None])
        c0 = self.color[slots[bi], vi]
        c1 = self.color[nb_rows[ax, bi, vi], self._nb_idx[ax, vi]]
        cols = ((c0 + r[:, None] * (c1 - c0)) / 255.0).clamp(0.0, 1.0)
        both = to_host(torch.cat([p, cols], dim=1))  # one device-to-host copy
        points = both[:, :3].astype(np.float64)
        self._surface_device = (weakref.ref(points), p)
        return points, np.ascontiguousarray(both[:, 3:])

    def _topology(self) -> tuple[Any, Any, Any]:
        """``(slots, block coords (n, 3), slot of the +x/+y/+z neighbour block (3, n), -1: none)``.

        Depends only on which blocks exist, so it is kept until a block is allocated or erased
        (both replace ``_keys``): a re-integrated view changes voxels, not blocks.
        """
        cached = self._topology_cache
        if cached is not None and cached[0] is self._keys and cached[1] is self._slots:
            return cached[1], cached[2], cached[3]
        blocks = self._unpack(self._keys)
        nb_slot = self._lookup(self._pack(blocks[None] + self._unit[:, None]))
        self._topology_cache = (self._keys, self._slots, blocks, nb_slot)
        return self._slots, blocks, nb_slot

    def device_points(self, points: np.ndarray) -> Any:
        """(N, 3) float64 tensor on this grid's device holding ``points``, if they are the last extraction's.

        The surface is made on the device; handing its device copy to the query (see
        ``reasoning_seg.query.fusion_torch.DEVICE_ARRAYS.put``) saves uploading the points back. None when
        ``points`` is not the array :meth:`extract` returned last (the copy is of that array, so it
        stays right when the grid changes after the extraction).
        """
        last = self._surface_device
        if last is None or last[0]() is not points:
            return None
        return last[1].to(self._torch.float64)

    # ------------------------------------------------------------------ persistence
    def export(self) -> dict[str, np.ndarray]:
        """All allocated blocks as numpy arrays (block_coords, tsdf, weight, color), sorted by key."""
        s = self._slots
        return {
            "block_coords": self.block_coords().astype(np.int32),
            "tsdf": self.tsdf[s].cpu().numpy(),
            "weight": self.weight[s].cpu().numpy(),
            "color": self.color[s].cpu().numpy(),
        }

    def import_(
        self, block_coords: np.ndarray, tsdf: np.ndarray, weight: np.ndarray, color: np.ndarray
    ) -> None:
        """Replace the contents with exported blocks (shapes are checked by the caller)."""
        torch = self._torch
        self.reset()
        if len(block_coords) == 0:
            return
        keys = self._as_keys(block_coords)
        order = torch.argsort(keys)
        slots = self._allocate(keys[order])
        o = order.cpu().numpy()
        self.tsdf[slots] = torch.as_tensor(tsdf[o], dtype=torch.float32, device=self.device)
        self.weight[slots] = torch.as_tensor(weight[o], dtype=torch.float32, device=self.device)
        self.color[slots] = torch.as_tensor(color[o], dtype=torch.float32, device=self.device)

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
