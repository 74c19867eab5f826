"""The torch block grid with fused Triton integration: block allocation and voxel update on the GPU.

Why: ``TorchBlockGrid.integrate`` is launch-bound on a GPU (about 30 kernels and three host
synchronisations a frame, 2.3-3.8 ms at 5 cm on an H100), while the arithmetic of a frame is a few
hundred thousand voxel updates. :class:`TritonBlockGrid` keeps the torch grid's storage, surface
extraction, erase, export and import unchanged (they are not per-frame work) and replaces the
per-frame path with the two kernels of :mod:`.triton_kernels` around one 32-byte read-back.

Invariants the kernels rely on:

- the device hash table maps every allocated block's packed key to its storage slot; the sorted
  ``_keys``/``_slots`` index of the base class is rebuilt from it lazily, the first time after a
  frame that something else asks for it (extraction, erase, export: once per query or bound check);
- free storage slots hold zeros (the base class zeroes a slot when it frees it and storage grows
  with zeros), so a block allocated inside a kernel needs no clearing;
- the free stack is ``_free[:_n_free]`` with its top at the end, as in the base class: blocks
  allocated by a frame take the same slots, in some order, that ``_allocate`` would.

Recovery, never silent loss: when a frame inserts more blocks than there are free slots, or the
table is too full for a sample to find its entry within ``MAX_PROBES``, the voxel update has not
run yet; the host grows storage or the table, rebuilds the table and repeats the allocation pass,
so the frame's result is the same as if there had been room.

On a CPU the kernels run in Triton's interpreter (slow; for tests and for reading the code).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reasoning_seg.mapping.torch_tsdf import (
    VOXELS_PER_BLOCK,
    TorchBlockGrid,
    _import_torch,
    torch_device_name,
)

MAX_PROBES = 64
"""Linear-probing steps before a sample reports the table as too full (load stays <= 1/4)."""
HASH_LOAD = 4
"""Hash entries per storage slot: the table is rebuilt larger when storage outgrows it."""
BLOCK_P = 128
"""Strided pixels per program of the allocation kernel (4096 in the interpreter, where the cost is
per program and per operation, not per lane)."""


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of PyTorch; CPU builds lack it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonBlockGrid(TorchBlockGrid):
    """TSDF + colour block grid whose integration is two Triton kernels (module docstring)."""

    name = "triton"

    def __init__(
        self,
        voxel_size: float,
        trunc_voxels: float,
        depth_max: float,
        device: str = "cuda",
        initial_blocks: int = 1024,
    ) -> None:
        if not triton_available():
            raise ImportError("map.backend 'triton' needs Triton (installed with CUDA builds of PyTorch)")
        self._frame = 0
        self._hsize = 0
        self._n_free = 0
        self._index_stale = False
        self._reserve = 256
        self.recoveries = 0
        """Frames whose allocation pass had to be repeated (storage or table grown mid-frame)."""
        from reasoning_seg.mapping import triton_kernels

        self._k = triton_kernels
        dev = _import_torch().device(torch_device_name(device))
        if dev.type != "cuda" and not interpreting():
            raise ValueError(
                "map.backend 'triton' runs on CUDA devices; on a CPU it needs Triton's interpreter "
                "(TRITON_INTERPRET=1 in the environment before start: slow, meant for tests)"
            )
        super().__init__(voxel_size, trunc_voxels, depth_max, device, initial_blocks)

    # ------------------------------------------------------------------ index and hash table
    def _refresh_index(self) -> None:
        """Bring the base class's sorted index and free stack up to date with the hash table."""
        if not self._index_stale:
            return
        torch = self._torch
        keys, slots = self._hkeys[: self._hsize], self._hslot[: self._hsize]
        used = keys >= 0
        keys, slots = keys[used], slots[used]
        order = torch.argsort(keys)
        self._keys, self._slots = keys[order], slots[order]
        self._free = self._free[: self._n_free]
        self._index_stale = False

    def _rebuild_hash(self, size: int = 0) -> None:
        """(Re)build the table from the sorted index: after reset, erase, import or growth."""
        torch = self._torch
        size = max(size, self._hsize, 1 << max(10, math.ceil(math.log2(HASH_LOAD * max(self._capacity, 1)))))
        dev = self.device
        self._hsize = size
        self._hkeys = torch.full((size + 1,), -1, dtype=torch.int64, device=dev)
        self._hkeys[size] = -2  # never a key, never EMPTY
        self._hslot = torch.full((size,), -1, dtype=torch.int64, device=dev)
        self._hstamp = torch.zeros(size, dtype=torch.int32, device=dev)
        self._touched = torch.zeros(size, dtype=torch.int64, device=dev)
        self._ctr = torch.zeros(4, dtype=torch.int64, device=dev)
        self._n_free = int(self._free.numel())
        self._ctr[0] = self._n_free
        n = int(self._keys.numel())
        if n:
            fail = torch.zeros(1, dtype=torch.int64, device=dev)
            self._k.insert_blocks[(math.ceil(n / 256),)](
                self._keys, self._slots, n, self._hkeys, self._hslot, size - 1, size, fail, BLOCK=256
            )
            if int(fail.item()):  # cannot happen with a probe limit of the table's size
                raise RuntimeError("TSDF hash table rebuild failed")

    def reset(self) -> None:
        """Drop every block and shrink back to the initial capacity."""
        super().reset()
        self._hsize = 0
        self._index_stale = False
        self._rebuild_hash()

    def _grow(self, needed_free: int) -> None:
        self._refresh_index()
        super()._grow(needed_free)
        self._n_free = int(self._free.numel())
        if self._hsize:
            if self._hsize < HASH_LOAD * self._capacity:
                self._rebuild_hash(2 * self._hsize)
            else:
                self._ctr[0] = self._n_free

    @property
    def num_blocks(self) -> int:
        """Allocated blocks, known on the host without a device read (capacity minus free slots)."""
        return self._capacity - self._n_free

    def block_coords(self) -> np.ndarray:
        """(N, 3) int64 coordinates of the allocated blocks (sorted by key)."""
        self._refresh_index()
        return super().block_coords()

    def block_max_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """Block coordinates (sorted by key) and their largest voxel weight, reduced on the device."""
        self._refresh_index()
        return super().block_max_weight()

    def erase_blocks(self, block_coords: np.ndarray) -> int:
        """Deallocate blocks (zeroed, back on the free stack); the table is rebuilt without them."""
        self._refresh_index()
        n = super().erase_blocks(block_coords)
        if n:
            self._rebuild_hash()
        return n

    def clear_voxels(self, voxels: np.ndarray) -> int:
        """Forget voxels (weight 0: not surface until observed again); returns how many had data."""
        self._refresh_index()
        return super().clear_voxels(voxels)

    def extract(self, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Zero-crossing surface points and colours (the torch grid's extraction)."""
        self._refresh_index()
        return super().extract(min_weight)

    def export(self) -> dict[str, np.ndarray]:
        """All allocated blocks as numpy arrays, sorted by key."""
        self._refresh_index()
        return super().export()

    def import_(
        self, block_coords: np.ndarray, tsdf: np.ndarray, weight: np.ndarray, color: np.ndarray
    ) -> None:
        """Replace the contents with exported blocks, then rebuild the table."""
        super().import_(block_coords, tsdf, weight, color)
        self._rebuild_hash()

    # ------------------------------------------------------------------ integration
    def integrate(self, depth: Any, color: Any, K: np.ndarray, T_world_cam: np.ndarray) -> None:
        """Fuse one frame (same arguments and result as ``TorchBlockGrid.integrate``)."""
        torch = self._torch
        d = self._tensor(depth).to(torch.float32).contiguous()
        c = self._tensor(color).to(torch.uint8).contiguous()
        T = np.asarray(T_world_cam, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        h, w = d.shape
        if self._n_free < self._reserve:
            self._grow(self._reserve - self._n_free)
        n_listed = self._allocate_frame(d, K, T)
        if n_listed == 0:
            return
        P = K @ T[:3, :3].T
        q = -P @ T[:3, 3]
        A = (P.T * self.voxel_size).astype(np.float32)
        q = q.astype(np.float32)
        self._k.update_blocks[(n_listed,)](
            d,
            c,
            self.tsdf,
            self.weight,
            self.color,
            self._hkeys,
            self._hslot,
            self._touched,
            w,
            h,
            *[float(x) for x in A.ravel()],
            *[float(x) for x in q],
            self.depth_max,
            self.trunc,
            VOXELS=VOXELS_PER_BLOCK,
        )

    def _allocate_frame(self, d: Any, K: np.ndarray, T: np.ndarray) -> int:
        """Run the allocation pass until every touched block has a slot; returns blocks listed."""
        h, w = d.shape
        stride = max(1, int(math.floor(self.voxel_size * float(K[0, 0]) / max(self.depth_max, 1e-6))))
        n_cols, n_rows = math.ceil(w / stride), math.ceil(h / stride)
        n_pix = n_cols * n_rows
        n_s = int(math.ceil(2.0 * self.trunc / self.voxel_size)) + 1
        step = 2.0 * self.trunc / (n_s - 1) if n_s > 1 else 0.0
        R, t = T[:3, :3], T[:3, 3]
        inv_block = 1.0 / (8 * self.voxel_size)
        block_p = 4096 if interpreting() else BLOCK_P
        for _attempt in range(8):
            self._frame += 1
            if self._frame >= 2**31 - 1:  # stamps are int32: start over with clean stamps
                self._hstamp.zero_()
                self._frame = 1
            self._ctr[1:].zero_()
            self._k.touch_blocks[(math.ceil(n_pix / block_p),)](
                d,
                self._hkeys,
                self._hslot,
                self._hstamp,
                self._free,
                self._touched,
                self._ctr,
                w,
                n_cols,
                n_pix,
                stride,
                n_s,
                self._frame,
                self._hsize - 1,
                MAX_PROBES,
                *[float(x) for x in R.ravel()],
                *[float(x) for x in t],
                float(K[0, 0]),
                float(K[1, 1]),
                float(K[0, 2]),
                float(K[1, 2]),
                self.depth_max,
                self.trunc,
                step,
                inv_block,
                BLOCK_P=block_p,
            )
            free_left, listed, probe_fail, no_slot = (int(x) for x in self._ctr.tolist())
            new_blocks = self._n_free - free_left
            if new_blocks:
                self._index_stale = True
                self._reserve = max(256, new_blocks)
            if probe_fail == 0 and no_slot == 0:
                self._n_free = free_left
                self._free = self._free[:free_left]  # a view: the kernels' free stack
                return listed
            self.recoveries += 1
            self._recover(max(free_left, 0), no_slot, probe_fail > 0)
        raise RuntimeError("TSDF block allocation did not settle after 8 attempts")

    def _recover(self, free_left: int, no_slot: int, table_full: bool) -> None:
        """Give slots to blocks inserted without one, grow the table if needed, and rebuild it."""
        self._n_free = free_left
        self._index_stale = True  # the table is the truth, also for blocks still without a slot
        self._refresh_index()
        if no_slot:
            if self._free.numel() < no_slot:  # the base class's growth: the table is rebuilt below
                TorchBlockGrid._grow(self, no_slot - int(self._free.numel()))
            self._slots[self._slots < 0] = self._free[-no_slot:]
            self._free = self._free[:-no_slot]
        self._rebuild_hash(2 * self._hsize if table_full else 0)
