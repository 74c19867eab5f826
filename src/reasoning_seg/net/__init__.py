"""The label-free 3D network of MLLM-For3D (§3.2, §3.3, Appendix A.2/A.3), in plain PyTorch.

Modules:

- :mod:`reasoning_seg.net.sparse_conv`: the sparse-convolution backend. A :class:`SparseTensor`
  (integer voxel sites + features + tensor stride) and the layers the U-Net is built from
  (submanifold, strided and transposed convolution, BatchNorm, ReLU, channel concatenation),
  implemented with coordinate hashing and gather/scatter so they run unchanged on CPU and CUDA
  without a compiled extension (the reference). :func:`~reasoning_seg.net.sparse_conv.set_backend`
  switches the layers to :mod:`reasoning_seg.net.spconv_backend` (spconv-triton's CUDA kernels,
  ``net.backend``) with the same weights.
- :mod:`reasoning_seg.net.unet`: the MinkowskiNet14-style U-Net (:class:`SparseUNet`,
  :class:`UNetConfig`) that maps voxel colours/geometry to per-voxel features, the query head
  (:class:`QueryHead`: learned projection of the 256-d ``[SEG]`` embedding, dot-product logits for
  training, cosine probability at inference) and :class:`SpatialProjection` (3D features into the
  SAM feature space for Eq. 2).
- :mod:`reasoning_seg.net.losses`: token-for-query alignment (Eq. 1), spatial consistency (Eq. 2)
  and their sum (Eq. 3) over point-view pairs (:class:`PointViewPairs`, :class:`LabelFreeLoss`).
- :mod:`reasoning_seg.net.pseudo_labels`: runs the node's own query stages (view selection,
  segmenter, fusion) over recorded scenes and stores the pseudo-labels per scene: fused probability,
  depth-checked point-view pairs with sampled 2D logits and SAM features, [SEG] embeddings; the
  stored form and its validated save/load are :mod:`reasoning_seg.net.pseudo_label_store` (files and
  checkpoints are written through :mod:`reasoning_seg.net.atomic_file`).
- :mod:`reasoning_seg.net.data`: dataset over stored pseudo-labels, the paper's augmentations
  (rotation about the up axis, flips) and collation into one batched sparse tensor.
- :mod:`reasoning_seg.net.model`: :class:`LabelFree3DNet` (U-Net + query head + spatial projection),
  §3.3 inference and checkpoint save/load.
- :mod:`reasoning_seg.net.train`: the PyTorch Lightning trainer (checkpoints, resume, CSV/TensorBoard
  logs, DDP through Lightning's strategies) and its CLI.
- :mod:`reasoning_seg.net.experiment`: MLLM-For3D Table 4 in the benchmark world (pseudo-labels,
  training, evaluation on unseen rooms, CLI), with its scales and variants in
  :mod:`~reasoning_seg.net.ablation_config`, multi-query training in
  :mod:`~reasoning_seg.net.scene_queries` and its table in :mod:`~reasoning_seg.net.ablation_report`.

The package needs PyTorch (the ``net`` extra; Lightning for training); nothing else in
:mod:`reasoning_seg` imports it.
"""
