"""Fused gather-GEMM sparse convolutions in Triton (``net.backend: triton``).

Why a kernel of our own next to spconv: on an H100 the torch path spends a 300k-voxel forward in
hundreds of small launches (one gather, one matmul and one ``index_add_`` per kernel offset per layer)
and spconv-triton times 37 tile candidates per layer shape before its first result
(bench/results/net.md). Here one *output-stationary* kernel computes a whole convolution: each program
owns a tile of output rows and a tile of output channels, walks the kernel offsets, gathers the input
rows its neighbour table names and accumulates ``x[in] @ W[k]`` in registers, then writes the tile
once — no atomics, no gathered copies in memory, one launch per layer, fixed tile sizes (nothing to
autotune).

What it computes is exactly the layers of :mod:`reasoning_seg.net.sparse_conv` (the reference):

- submanifold: ``out[c] = sum_k x[nbr[c, k]] @ W[k]`` with ``nbr[c, k]`` the row of site
  ``c + offset_k * s`` or -1; the table is dense ``(N, K)`` int32, centre column included;
- strided (kernel 2, stride 2): the same kernel over the coarse sites with an ``(N_coarse, 8)`` table
  of children;
- transposed: every fine row has exactly one parent, so it is eight plain gathers and matmuls
  (``index_copy_``, no accumulation) in torch.

Gradients (``torch.autograd.Function``): the input gradient of a submanifold convolution is the same
kernel with the table's columns reversed and each ``W[k]`` transposed (the neighbour relation is
symmetric: if ``c`` gathers ``c + d`` then ``c + d`` gathers ``c`` at ``-d``, column ``K - 1 - k`` in
x-major order); the weight gradient ``sum x[in]^T g[out]`` per offset uses the compact pair lists
the torch path caches. Precision: fp32 uses IEEE products (``input_precision="ieee"``) so results match
the reference to rounding; under bf16/fp16 autocast the operands are cast and the sums kept in fp32.

With ``TRITON_INTERPRET=1`` set before Triton is imported the kernel runs on CPU tensors in Triton's
interpreter, which is how CI tests it (tests/conftest.py); on a GPU it is compiled.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from reasoning_seg.net.sparse_conv import (
    _MAP_CHUNK,
    CoordinateMap,
    SparseConvOps,
    _offset_key,
    kernel_offsets,
)

NAME = "triton"


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether Triton can be imported (the kernel needs nothing else)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel() -> Any:
    from reasoning_seg.net.triton_conv_kernel import gather_gemm

    return gather_gemm


def _tiles(c_in: int, c_out: int) -> tuple[int, int, int, int]:
    """Fixed tile sizes ``(BM, BN, BK, warps)`` from the channel counts (``tl.dot`` needs >= 16 each).

    Why fixed: autotuning per layer shape is what makes spconv-triton's first forward take minutes;
    these were chosen for H100-class GPUs (wide output tiles for wide layers, one K chunk for narrow
    inputs) and need no search.
    """
    bn = 16 if c_out <= 16 else 32 if c_out <= 32 else 64
    bk = 16 if c_in <= 16 else 32
    bm = 64 if c_out <= 32 else 128
    return bm, bn, bk, 4 if bm * bn <= 4096 else 8


def gather_gemm(x: Tensor, weight: Tensor, table: Tensor, n_out: int, reverse: bool = False) -> Tensor:
    """``out[r] = sum_k x[table[r, k]] @ weight[k]`` over ``table[r, k] >= 0`` (no autograd).

    Args:
        x: (N_in, C_in) features, fp32 / bf16 / fp16.
        weight: (K, C_in, C_out), same dtype as ``x``.
        table: (n_out, K) int32 input rows, -1 for none.
        n_out: output rows.
        reverse: read the table's columns in reverse order (column ``K - 1 - k`` for ``weight[k]``).

    Returns:
        (n_out, C_out) in ``x``'s dtype, sums in fp32.
    """
    x = x.contiguous()
    weight = weight.contiguous()
    table = table.contiguous()
    volume, c_in, c_out = weight.shape
    out = torch.empty((n_out, c_out), dtype=x.dtype, device=x.device)
    if n_out == 0:
        return out
    bm, bn, bk, warps = _tiles(c_in, c_out)
    grid = ((n_out + bm - 1) // bm, (c_out + bn - 1) // bn)
    _kernel()[grid](
        x,
        weight,
        table,
        out,
        n_out,
        c_in,
        c_out,
        volume,
        REVERSE=reverse,
        BM=bm,
        BN=bn,
        BK=bk,
        IEEE=x.dtype == torch.float32,
        num_warps=warps,
    )
    return out


def submanifold_table(cmap: CoordinateMap, kernel_size: int) -> Tensor:
    """Dense ``(N, K)`` int32 neighbour table of a submanifold convolution on ``cmap``, cached.

    Column ``k`` holds the row of ``c + offset_k * stride`` (centre column: the row itself), -1 where
    that site is not occupied. Built from the map's sorted keys in chunks of ``_MAP_CHUNK`` look-ups,
    with no host synchronisation.
    """
    key = ("triton_sub", kernel_size)
    if key not in cmap._cache:
        offsets = kernel_offsets(kernel_size)
        n = len(cmap)
        table = torch.empty((n, len(offsets)), dtype=torch.int32, device=cmap.device)
        per_chunk = max(1, _MAP_CHUNK // max(1, n))
        for c0 in range(0, len(offsets), per_chunk):
            ks = range(c0, min(len(offsets), c0 + per_chunk))
            deltas = torch.tensor(
                [_offset_key(*(d * cmap.stride for d in offsets[k])) for k in ks],
                dtype=torch.int64,
                device=cmap.device,
            )
            rows = cmap.lookup((cmap.keys[None, :] + deltas[:, None]).reshape(-1)).reshape(len(ks), n)
            table[:, c0 : c0 + len(ks)] = rows.t()
        cmap._cache[key] = table
    return cmap._cache[key]


def downsample_table(cmap: CoordinateMap) -> Tensor:
    """``(N_coarse, 8)`` int32: the fine row at each of a coarse site's 8 child offsets, or -1. Cached."""
    if "triton_down" not in cmap._cache:
        down = cmap.downsample()
        table = torch.full((len(down.coarse), 8), -1, dtype=torch.int32, device=cmap.device)
        for k, fine_rows, coarse_rows in down.groups:
            table[coarse_rows, k] = fine_rows.to(torch.int32)
        cmap._cache["triton_down"] = table
    return cmap._cache["triton_down"]


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


class _SubmanifoldFn(torch.autograd.Function):
    """Submanifold convolution by :func:`gather_gemm`; gradients as in the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, cmap: CoordinateMap, kernel_size: int) -> Tensor:
        dtype = _autocast_dtype(x.device) or x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        table = submanifold_table(cmap, kernel_size)
        ctx.save_for_backward(xc, wc)
        ctx.cmap, ctx.kernel_size, ctx.dtypes = cmap, kernel_size, (x.dtype, weight.dtype)
        return gather_gemm(xc, wc, table, len(cmap))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        xc, wc = ctx.saved_tensors
        cmap, kernel_size = ctx.cmap, ctx.kernel_size
        g = grad.to(xc.dtype).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            table = submanifold_table(cmap, kernel_size)
            grad_x = gather_gemm(g, wc.transpose(1, 2), table, len(cmap), reverse=True).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gw = torch.zeros(wc.shape, dtype=torch.float32, device=wc.device)
            centre = wc.shape[0] // 2
            gw[centre] = (xc.t() @ g).float()
            for k, out_rows, in_rows in cmap.submanifold_map(kernel_size):
                gw[k] = (xc[in_rows].t() @ g[out_rows]).float()
            grad_w = gw.to(ctx.dtypes[1])
        return grad_x, grad_w, None, None


class _StridedFn(torch.autograd.Function):
    """Kernel-2 stride-2 convolution by :func:`gather_gemm` over the children table."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, cmap: CoordinateMap) -> Tensor:
        dtype = _autocast_dtype(x.device) or x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.cmap, ctx.dtypes = cmap, (x.dtype, weight.dtype)
        return gather_gemm(xc, wc, downsample_table(cmap), len(cmap.downsample().coarse))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        xc, wc = ctx.saved_tensors
        g = grad.to(xc.dtype)
        groups = ctx.cmap.downsample().groups
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # each fine row has one parent: a copy, not a sum
            grad_x = torch.zeros(xc.shape, dtype=xc.dtype, device=xc.device)
            for k, fine_rows, coarse_rows in groups:
                grad_x.index_copy_(0, fine_rows, g[coarse_rows] @ wc[k].t())
            grad_x = grad_x.to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gw = torch.zeros(wc.shape, dtype=torch.float32, device=wc.device)
            for k, fine_rows, coarse_rows in groups:
                gw[k] = (xc[fine_rows].t() @ g[coarse_rows]).float()
            grad_w = gw.to(ctx.dtypes[1])
        return grad_x, grad_w, None


def submanifold(feats: Tensor, weight: Tensor, cmap: CoordinateMap, kernel_size: int) -> Tensor:
    """``out[c] = sum_d x[c + d s] @ W[d]`` in one fused kernel (differentiable)."""
    return _SubmanifoldFn.apply(feats, weight, cmap, kernel_size)


def strided(feats: Tensor, weight: Tensor, cmap: CoordinateMap) -> Tensor:
    """Kernel-2 stride-2 convolution onto ``cmap.downsample().coarse`` (differentiable)."""
    return _StridedFn.apply(feats, weight, cmap)


def transposed(feats: Tensor, weight: Tensor, fine: CoordinateMap) -> Tensor:
    """Kernel-2 stride-2 transposed convolution onto ``fine``: one parent per fine row, eight copies.

    Plain torch (autograd through indexing): with one product per output row there is nothing to fuse
    that the eight batched matmuls do not already do.
    """
    out = None
    for k, fine_rows, coarse_rows in fine.downsample().groups:
        prod = feats[coarse_rows] @ weight[k]
        if out is None:
            out = prod.new_zeros((len(fine), prod.shape[1]))
        out.index_copy_(0, fine_rows, prod)
    if out is None:
        out = (feats[:0] @ weight[0]).new_zeros((len(fine), weight.shape[2]))
    return out


OPS = SparseConvOps(
    available=available,
    device_types=("cuda", "cpu") if interpreting() else ("cuda",),
    submanifold=submanifold,
    strided=strided,
    transposed=transposed,
)
"""What ``reasoning_seg.backends.SPARSE_CONV`` registers as ``triton``."""
