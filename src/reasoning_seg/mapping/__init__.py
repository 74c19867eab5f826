"""Mapping: posed RGB-D frames in, a bounded TSDF voxel map and a keyframe window out.

``frames`` (validated frames, pose gates), ``voxel_map`` (the map and its Open3D block grid),
``torch_tsdf`` (the PyTorch block grid), ``triton_tsdf`` + ``triton_kernels`` (the same grid with
fused Triton integration for CUDA), ``sparse_voxels`` (hashed voxel tables), ``keyframes``
(the window REALM's view selection draws from), ``state_io`` (atomic save/load of it all).
May import: the foundation (``camera``, ``config``, ``registry``, ``backends``) and ``io``. Never
``query``, ``pipeline``, ``ros``, ``sim``.
"""
