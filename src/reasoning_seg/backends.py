"""The backends this package ships, by the names the configuration uses (see :mod:`.registry`).

The one place that names implementations: contract modules (``segmenter``, ``voxel_map``'s
``BlockGrid``, ``fusion``'s method signature) import none of them, and a new backend is one line
here (or a ``register`` call in a plugin) plus its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reasoning_seg.registry import Registry

if TYPE_CHECKING:
    from reasoning_seg.config import SegmenterConfig
    from reasoning_seg.segmenter import Segmenter

#: ``segmenter.backend``: a function ``(SegmenterConfig) -> Segmenter``.
SEGMENTERS = Registry("segmenter backend")
SEGMENTERS.register_lazy("simulated", "reasoning_seg.sim.simulated_segmenter:from_config")
SEGMENTERS.register_lazy("lisa", "reasoning_seg.lisa.segmenter:from_config")

#: ``map.backend``: a ``BlockGrid`` class ``(voxel_size, trunc_voxels, depth_max, device, blocks)``.
BLOCK_GRIDS = Registry("map backend")
BLOCK_GRIDS.register_lazy("open3d", "reasoning_seg.mapping.voxel_map:Open3DBlockGrid")
BLOCK_GRIDS.register_lazy("torch", "reasoning_seg.mapping.torch_tsdf:TorchBlockGrid")
BLOCK_GRIDS.register_lazy("triton", "reasoning_seg.mapping.triton_tsdf:TritonBlockGrid")

#: ``net.backend``: a ``SparseConvOps`` (sparse_conv's contract); "torch" is the layers' own reference path.
SPARSE_CONV = Registry("net backend")
SPARSE_CONV.register_lazy("spconv", "reasoning_seg.net.spconv_backend:OPS")
SPARSE_CONV.register_lazy("triton", "reasoning_seg.net.triton_conv:OPS")

#: ``fusion.method``: ``fuse_*(points, views, segmentations, config, device=, cache=) -> FusionResult``.
FUSION_METHODS = Registry("fusion method")
for _name in ("naive", "filtered", "token_attention", "majority_vote"):
    FUSION_METHODS.register_lazy(_name, f"reasoning_seg.query.fusion:fuse_{_name}")


def segmenter_from_config(config: SegmenterConfig) -> Segmenter:
    """Build the 2D model ``config.backend`` names. ValueError/FileNotFoundError with a user-facing reason."""
    return SEGMENTERS.get(config.backend)(config)
