"""Querying: from keyframes and per-view 2D masks to the target's 3D points.

``view_selection`` (REALM's global and local views), ``fusion`` (MLLM-For3D §3.1 view filtering and
token-attention fusion; the numpy reference), ``fusion_torch`` (the batched device path),
``result`` (target cloud, gravity-aligned box, confidence).
May import: the foundation, ``segmenter`` (the 2D model contract) and ``mapping``. Never
``pipeline``, ``ros``, ``sim``.
"""
