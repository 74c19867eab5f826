"""The Triton kernel of :mod:`reasoning_seg.net.triton_conv` (kept apart: importing it needs Triton).

One program computes a ``BM x BN`` tile of ``out = sum_k x[table[:, k]] @ W[k]``: for every kernel
offset it loads the tile's neighbour rows, skips the offset when none of them is occupied (surfaces
fill about a third of a 3x3x3 neighbourhood), gathers ``BM x BK`` input slices and multiplies them
with ``BK x BN`` weight slices on the tensor cores, accumulating in fp32 registers.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_gemm(
    x_ptr,
    w_ptr,
    table_ptr,
    out_ptr,
    n_out,
    c_in,
    c_out,
    volume,
    REVERSE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``out[r, n] = sum_k sum_c x[table[r, k'], c] * w[k, c, n]`` (``k' = K-1-k`` if REVERSE)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    row_ok = rows < n_out
    col_ok = cols < c_out
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, volume):
        column = volume - 1 - k if REVERSE else k
        src = tl.load(table_ptr + rows.to(tl.int64) * volume + column, mask=row_ok, other=-1)
        has = src >= 0
        if tl.max(has.to(tl.int32), axis=0) > 0:
            src64 = src.to(tl.int64)
            for c0 in range(0, c_in, BK):
                ks = c0 + tl.arange(0, BK)
                k_ok = ks < c_in
                a = tl.load(
                    x_ptr + src64[:, None] * c_in + ks[None, :],
                    mask=has[:, None] & k_ok[None, :],
                    other=0.0,
                )
                w = tl.load(
                    w_ptr + (k * c_in + ks[:, None]).to(tl.int64) * c_out + cols[None, :],
                    mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )
                if IEEE:
                    acc += tl.dot(a, w, input_precision="ieee")
                else:
                    acc += tl.dot(a, w)
    out_offs = rows.to(tl.int64)[:, None] * c_out + cols[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
