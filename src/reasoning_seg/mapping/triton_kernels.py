"""Triton kernels of the fused TSDF integration (:mod:`reasoning_seg.mapping.triton_tsdf`).

Why fused: the PyTorch block grid spends a 640x480 frame at 5 cm in ~30 kernel launches and three
host synchronisations (bench/results/map.md: 2.3-3.8 ms on an H100, launch-bound for a few hundred
thousand voxel updates). Here a frame is two kernels around one 32-byte read-back:

- :func:`touch_blocks`: every strided pixel's ray is sampled across the truncation band, exactly as
  ``TorchBlockGrid.touched_blocks`` does; each sample's block is found in (or inserted into) an
  open-addressing hash table with ``atomic_cas``, a newly inserted block pops a storage slot from
  the free stack, and the first sample of a frame to reach a block appends it to the frame's list
  (a per-entry frame stamp makes that exactly once). This is block allocation on the device, with
  no sort and no host round trip;
- :func:`update_blocks`: one program per listed block projects its 512 voxels and updates tsdf,
  weight and colour in place with the same running average as the torch path.

With ``TRITON_INTERPRET=1`` in the environment before Triton is imported, ``triton.jit`` gives
Triton's interpreter instead of a compiler: the kernels then run on CPU tensors, which is how the
tests run them in CI (tests/conftest.py sets it where no GPU is present).

Hash layout: ``hkeys`` has ``size + 1`` int64 entries, ``EMPTY`` (-1) where free; the extra last
entry is never used by a key. ``hslot`` holds each entry's storage slot, ``hstamp`` the last frame
that listed it. ``ctr`` (int64): [0] free slots left on the stack, [1] blocks listed this frame,
[2] samples that found no hash entry within ``max_probes`` (table too full), [3] inserted blocks
that found no free slot. The host reads ``ctr`` after :func:`touch_blocks` and repairs [2] and [3]
before any voxel changes.
"""

from __future__ import annotations

import triton
import triton.language as tl

EMPTY = -1
"""An unused hash entry (packed block keys are never negative)."""


@triton.jit
def touch_blocks(
    depth_ptr,
    hkeys_ptr,
    hslot_ptr,
    hstamp_ptr,
    free_ptr,
    touched_ptr,
    ctr_ptr,
    width,
    n_cols,
    n_pix,
    stride,
    n_samples,
    frame,
    hmask,
    max_probes,
    r00,
    r01,
    r02,
    r10,
    r11,
    r12,
    r20,
    r21,
    r22,
    tx,
    ty,
    tz,
    fx,
    fy,
    cx,
    cy,
    depth_max,
    trunc,
    step,
    inv_block,
    BLOCK_P: tl.constexpr,
):
    """Find or allocate the blocks of a frame's truncation band and list each once.

    One lane per strided pixel (``n_cols`` per row, pixel (col * stride, row * stride)); the ray's
    ``n_samples`` points ``d - trunc + k * step`` (clamped at 0) go to block coordinates by the
    same arithmetic as the torch path. Consecutive samples of a ray in the same block are looked
    up once.
    """
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    in_range = p < n_pix
    row = p // n_cols
    col = p - row * n_cols
    u = col * stride
    v = row * stride
    d = tl.load(depth_ptr + v.to(tl.int64) * width + u, mask=in_range, other=0.0)
    d = tl.where(d <= depth_max, d, 0.0)
    valid = in_range & (d > 0)
    # camera ray with unit z, rotated into the world and scaled to blocks
    ru = (u.to(tl.float32) - cx) / fx
    rv = (v.to(tl.float32) - cy) / fy
    wx = (r00 * ru + r01 * rv + r02) * inv_block
    wy = (r10 * ru + r11 * rv + r12) * inv_block
    wz = (r20 * ru + r21 * rv + r22) * inv_block
    ox = tx * inv_block
    oy = ty * inv_block
    oz = tz * inv_block
    prev = tl.full([BLOCK_P], -2, tl.int64)
    for k in range(n_samples):
        z = tl.maximum(d + (k * step - trunc), 0.0)
        bx = tl.floor(ox + wx * z).to(tl.int64)
        by = tl.floor(oy + wy * z).to(tl.int64)
        bz = tl.floor(oz + wz * z).to(tl.int64)
        bx = tl.minimum(tl.maximum(bx, -1048575), 1048575) + 1048576
        by = tl.minimum(tl.maximum(by, -1048575), 1048575) + 1048576
        bz = tl.minimum(tl.maximum(bz, -1048575), 1048575) + 1048576
        key = (bx << 42) | (by << 21) | bz
        pending = valid & (key != prev)
        prev = tl.where(valid, key, prev)
        h = ((bx * 73856093) ^ (by * 19349663) ^ (bz * 83492791)) & hmask
        found = tl.zeros([BLOCK_P], tl.int1)
        won = tl.zeros([BLOCK_P], tl.int1)
        probes = 0
        go = tl.sum(pending.to(tl.int32), axis=0) > 0
        while go:
            cur = tl.load(hkeys_ptr + h, mask=pending, other=-2)
            hit = pending & (cur == key)
            empty = pending & (cur == -1)
            if tl.sum(empty.to(tl.int32), axis=0) > 0:
                # atomic_cas has no mask: lanes that saw no empty entry compare against EMPTY at
                # their own (occupied) entry, which cannot succeed and writes nothing.
                old = tl.atomic_cas(hkeys_ptr + h, tl.where(empty, -1, -3).to(tl.int64), key)
                won = won | (empty & (old == -1))
                hit = hit | (empty & (old == key))
            found = found | hit
            pending = pending & ~hit & ~(won & empty)
            h = tl.where(pending, (h + 1) & hmask, h)
            probes += 1
            go = (tl.sum(pending.to(tl.int32), axis=0) > 0) & (probes < max_probes)
        tl.atomic_add(ctr_ptr + 2 + tl.zeros([BLOCK_P], tl.int64), 1, mask=pending)
        # a block inserted by this lane takes the slot on top of the free stack
        top = tl.atomic_add(ctr_ptr + tl.zeros([BLOCK_P], tl.int64), -1, mask=won)
        got = won & (top > 0)
        slot = tl.load(free_ptr + (top - 1), mask=got, other=-1)
        tl.store(hslot_ptr + h, slot, mask=won)
        tl.atomic_add(ctr_ptr + 3 + tl.zeros([BLOCK_P], tl.int64), 1, mask=won & ~got)
        # list the block once per frame
        have = found | won
        stamp = tl.load(hstamp_ptr + h, mask=have, other=0)
        fresh = have & (stamp != frame)
        old_stamp = tl.atomic_xchg(hstamp_ptr + h, frame, mask=fresh)
        first = fresh & (old_stamp != frame)
        pos = tl.atomic_add(ctr_ptr + 1 + tl.zeros([BLOCK_P], tl.int64), 1, mask=first)
        tl.store(touched_ptr + pos, h, mask=first)


@triton.jit
def update_blocks(
    depth_ptr,
    color_ptr,
    tsdf_ptr,
    weight_ptr,
    rgb_ptr,
    hkeys_ptr,
    hslot_ptr,
    touched_ptr,
    width,
    height,
    a00,
    a01,
    a02,
    a10,
    a11,
    a12,
    a20,
    a21,
    a22,
    q0,
    q1,
    q2,
    depth_max,
    trunc,
    VOXELS: tl.constexpr,
):
    """Project one listed block's 512 voxels and fuse the frame into them (one program per block).

    Voxel ``v`` has homogeneous pixel coordinates ``q + v A`` (``A = voxel_size (K R^T)^T``), split
    as in the torch path into the block's term ``q + 8 b A`` and the voxel's ``l A``. KinectFusion's
    projective update: ``sdf = d - z``, skipped where ``sdf < -trunc``, observed ``min(1, sdf/trunc)``
    averaged with weight 1 per frame; colour (0..255) averaged the same way.
    """
    e = tl.program_id(0)
    h = tl.load(touched_ptr + e)
    slot = tl.load(hslot_ptr + h)
    if slot >= 0:
        key = tl.load(hkeys_ptr + h)
        bx = (((key >> 42) & 2097151) - 1048576).to(tl.float32) * 8.0
        by = (((key >> 21) & 2097151) - 1048576).to(tl.float32) * 8.0
        bz = ((key & 2097151) - 1048576).to(tl.float32) * 8.0
        i = tl.arange(0, VOXELS)
        lx = (i % 8).to(tl.float32)
        ly = ((i // 8) % 8).to(tl.float32)
        lz = (i // 64).to(tl.float32)
        px = q0 + (bx * a00 + by * a10 + bz * a20) + (lx * a00 + ly * a10 + lz * a20)
        py = q1 + (bx * a01 + by * a11 + bz * a21) + (lx * a01 + ly * a11 + lz * a21)
        z = q2 + (bx * a02 + by * a12 + bz * a22) + (lx * a02 + ly * a12 + lz * a22)
        u = tl.floor(px / z + 0.5)
        v = tl.floor(py / z + 0.5)
        inside = (z > 0) & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
        pix = tl.where(inside, v * width + u, 0.0).to(tl.int64)
        d = tl.load(depth_ptr + pix, mask=inside, other=0.0)
        d = tl.where(d <= depth_max, d, 0.0)
        sdf = d - z
        upd = inside & (d > 0) & (sdf >= -trunc)
        obs = tl.minimum(sdf * (1.0 / trunc), 1.0)
        row = slot * VOXELS + i
        t_old = tl.load(tsdf_ptr + row)
        w_old = tl.load(weight_ptr + row)
        w_new = w_old + 1.0
        inv_w = 1.0 / tl.maximum(w_new, 1.0)
        tl.store(tsdf_ptr + row, (obs + t_old * w_old) * inv_w, mask=upd)
        tl.store(weight_ptr + row, w_new, mask=upd)
        for ch in tl.static_range(3):
            c = tl.load(color_ptr + pix * 3 + ch, mask=upd, other=0).to(tl.float32)
            c_old = tl.load(rgb_ptr + row * 3 + ch, mask=upd, other=0.0)
            tl.store(rgb_ptr + row * 3 + ch, (c + c_old * w_old) * inv_w, mask=upd)


@triton.jit
def insert_blocks(
    keys_ptr, slots_ptr, n, hkeys_ptr, hslot_ptr, hmask, max_probes, fail_ptr, BLOCK: tl.constexpr
):
    """Insert distinct (key, slot) pairs into an empty table (rebuilding it after erase or import)."""
    pid = tl.program_id(0)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    pending = j < n
    key = tl.load(keys_ptr + j, mask=pending, other=0)
    slot = tl.load(slots_ptr + j, mask=pending, other=-1)
    bx = (key >> 42) & 2097151
    by = (key >> 21) & 2097151
    bz = key & 2097151
    h = ((bx * 73856093) ^ (by * 19349663) ^ (bz * 83492791)) & hmask
    probes = 0
    go = tl.sum(pending.to(tl.int32), axis=0) > 0
    while go:
        cur = tl.load(hkeys_ptr + h, mask=pending, other=-2)
        empty = pending & (cur == -1)
        won = tl.zeros([BLOCK], tl.int1)
        if tl.sum(empty.to(tl.int32), axis=0) > 0:
            old = tl.atomic_cas(hkeys_ptr + h, tl.where(empty, -1, -3).to(tl.int64), key)
            won = empty & (old == -1)
        tl.store(hslot_ptr + h, slot, mask=won)
        pending = pending & ~won
        h = tl.where(pending, (h + 1) & hmask, h)
        probes += 1
        go = (tl.sum(pending.to(tl.int32), axis=0) > 0) & (probes < max_probes)
    tl.atomic_add(fail_ptr + tl.zeros([BLOCK], tl.int64), 1, mask=pending)
