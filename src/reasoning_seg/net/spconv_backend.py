"""spconv's sparse-convolution kernels behind the U-Net's layers (``net.backend: spconv``).

Why this shape: spconv-triton (the spconv 2.x API written in Triton, maintained, a 70 KB wheel) does
the expensive part, the gather-GEMM of every kernel offset in one kernel with its backward, while
the sites, their order and the kernel maps stay those of :mod:`reasoning_seg.net.sparse_conv`. The
maps of a level are converted once into spconv's "native" pair format ``(2, kernel volume, P)``
(input rows, output rows, -1 padded) and cached on the :class:`CoordinateMap`, next to the torch
path's maps, so every layer of a level and its backward share them (spconv also memoises its
gather tables on that pair tensor). Because the pairs are built from our maps, the kernel offset
``k`` of a pair is the index of ``weight[k]``: no permutation of rows, no second convention.

Weight layout: ours is ``(K, C_in, C_out)`` with the offsets x-major; spconv's is KRSC
``(C_out, kx, ky, kz, C_in)`` with the same x-major flattening when the index columns are x, y, z
(:func:`to_spconv_weight`/:func:`from_spconv_weight`; checked against spconv's own
``SubMConv3d``/``SparseConv3d``/``SparseInverseConv3d`` modules in tests/test_net_backends.py). The
transposed convolution is spconv's inverse convolution over the pairs of the strided one, as
``SparseInverseConv3d`` does with a shared ``indice_key``.

spconv-triton's kernels run on CUDA only (its GEMM refuses CPU tensors), so the CPU keeps the torch
path, which is also the reference the tests compare against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reasoning_seg.net.sparse_conv import SparseConvOps

NAME = "spconv"


def available() -> bool:
    """Whether spconv-triton (and so Triton) can be imported."""
    try:
        import spconv_triton.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def limit_autotune(candidates: int = 1) -> int:
    """Cut each of spconv-triton's autotuned kernels to its first ``candidates`` tile configurations.

    Why: the library times every candidate (37 for its gather-GEMM) the first time it meets a
    (kernel volume, C_in, C_out) combination; on an H100 that took 60-94 s per layer shape
    (bench/results/net.md), so a U-Net's first forward and backward take many minutes. With one
    candidate there is nothing to time, only one compilation per shape (about a second). Triton caches
    a finished sweep under ``TRITON_CACHE_DIR``, so a long-running node may prefer the full sweep
    once. Returns how many kernels were cut.
    """
    import sys

    import spconv_triton.pytorch  # noqa: F401  (imports every module that defines kernels)
    from triton.runtime.autotuner import Autotuner

    cut = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("spconv_triton"):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Autotuner) and len(obj.configs) > candidates:
                obj.configs = obj.configs[:candidates]
                cut += 1
    return cut


def _lib() -> tuple[Any, Any]:
    from spconv_triton.core import ConvAlgo
    from spconv_triton.pytorch import functional

    return functional, ConvAlgo.Native


def to_spconv_weight(weight: Tensor, kernel_size: int) -> Tensor:
    """Our ``(K, C_in, C_out)`` weight as spconv's KRSC ``(C_out, k, k, k, C_in)`` (a view)."""
    k, c_in, c_out = weight.shape
    return weight.permute(2, 0, 1).reshape(c_out, kernel_size, kernel_size, kernel_size, c_in)


def from_spconv_weight(weight: Tensor) -> Tensor:
    """Spconv's KRSC ``(C_out, kx, ky, kz, C_in)`` weight in our ``(K, C_in, C_out)`` layout."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    return weight.reshape(c_out, -1, c_in).permute(1, 2, 0).contiguous()


def _native_pairs(
    volume: int, groups: list[tuple[int, Tensor, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(2, volume, P)`` int32 pairs (row 0 input rows, row 1 output rows, -1 padded) and counts."""
    counts = torch.zeros(volume, dtype=torch.int32)
    width = max((int(in_rows.numel()) for _, in_rows, _ in groups), default=0)
    pairs = torch.full((2, volume, max(1, width)), -1, dtype=torch.int32, device=device)
    for k, in_rows, out_rows in groups:
        n = int(in_rows.numel())
        pairs[0, k, :n] = in_rows.to(torch.int32)
        pairs[1, k, :n] = out_rows.to(torch.int32)
        counts[k] = n
    return pairs, counts.to(device)


def submanifold_pairs(cmap: Any, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Pairs of a submanifold convolution on ``cmap`` (the centre offset included), cached."""
    key = ("spconv_sub", kernel_size)
    if key not in cmap._cache:
        volume = kernel_size**3
        rows = torch.arange(len(cmap), device=cmap.device)
        groups = [(volume // 2, rows, rows)]
        groups += [(k, in_rows, out_rows) for k, out_rows, in_rows in cmap.submanifold_map(kernel_size)]
        cmap._cache[key] = _native_pairs(volume, groups, cmap.device)
    return cmap._cache[key]


def downsample_pairs(cmap: Any) -> tuple[Tensor, Tensor]:
    """Pairs of the kernel-2 stride-2 convolution from ``cmap`` to its coarse map, cached."""
    if "spconv_down" not in cmap._cache:
        groups = [(k, fine, coarse) for k, fine, coarse in cmap.downsample().groups]
        cmap._cache["spconv_down"] = _native_pairs(8, groups, cmap.device)
    return cmap._cache["spconv_down"]


def _as_krsc(weight: Tensor) -> Tensor:
    return weight.permute(2, 0, 1)  # (C_out, K, C_in); spconv flattens the kernel axes the same way


def submanifold(feats: Tensor, weight: Tensor, cmap: Any, kernel_size: int) -> Tensor:
    """``out[c] = sum_d x[c + d s] @ W[d]`` by spconv's submanifold GEMM."""
    functional, algo = _lib()
    pairs, counts = submanifold_pairs(cmap, kernel_size)
    return functional.SubMConvFunction.apply(
        feats.contiguous(), _as_krsc(weight), pairs, counts, len(cmap), algo
    )


def strided(feats: Tensor, weight: Tensor, cmap: Any) -> Tensor:
    """Kernel-2 stride-2 convolution onto ``cmap.downsample().coarse`` by spconv's GEMM."""
    functional, algo = _lib()
    pairs, counts = downsample_pairs(cmap)
    n_out = len(cmap.downsample().coarse)
    return functional.SparseConvFunction.apply(
        feats.contiguous(), _as_krsc(weight), pairs, counts, n_out, algo
    )


def transposed(feats: Tensor, weight: Tensor, fine: Any) -> Tensor:
    """Kernel-2 stride-2 transposed convolution back onto ``fine`` (spconv's inverse convolution)."""
    functional, algo = _lib()
    pairs, counts = downsample_pairs(fine)
    return functional.SparseInverseConvFunction.apply(
        feats.contiguous(), _as_krsc(weight), pairs, counts, len(fine), algo
    )


OPS = SparseConvOps(
    available=available,
    device_types=("cuda",),
    submanifold=submanifold,
    strided=strided,
    transposed=transposed,
)
"""What ``reasoning_seg.backends.SPARSE_CONV`` registers as ``spconv``."""
