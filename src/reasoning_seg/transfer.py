"""Host <-> device copies of arrays, staged through page-locked memory on CUDA (map and query share them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array (camera constants, weights, masks, depth images) on ``device``, queued.

    A copy from ordinary (pageable) host memory makes CUDA drain the stream first; staged through
    page-locked memory it is queued like a kernel, and the host goes on launching. On the CPU the
    tensor is the array.
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return t.to(device)
    try:
        return t.pin_memory().to(device, non_blocking=True)
    except RuntimeError:  # no page-locked memory to be had: the ordinary copy
        return t.to(device)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array; from a GPU, copied through page-locked memory.

    Into ordinary memory CUDA copies through a bounce buffer, piece by piece; into page-locked
    memory it is one DMA. That matters for the megabytes a query brings back (the map surface,
    fused probabilities). The array owns its page-locked buffer until it is freed, when PyTorch's
    caching host allocator takes it back for the next copy.
    """
    import torch

    if tensor.device.type != "cuda":
        return tensor.detach().cpu().numpy()
    try:
        out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    except RuntimeError:  # no page-locked memory to be had: the ordinary copy
        return tensor.detach().cpu().numpy()
    out.copy_(tensor)
    return out.numpy()
