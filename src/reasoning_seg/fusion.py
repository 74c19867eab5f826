"""Lifting per-view 2D masks onto the map's surface points.

The naive method is MLLM-For3D's projection-only baseline (Table 4 (a)): every view in which a
map point is *visible* (depth-consistent, see :func:`reasoning_seg.camera.visible_pixels`) votes
1 if the point falls inside that view's mask and 0 otherwise, and the point's probability is the
mean vote. Points no view sees get probability 0 and ``observed == 0``. Views below a confidence
or mask-area floor cast no votes (the first half of §3.1's view filtering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reasoning_seg.camera import visible_pixels
from reasoning_seg.config import FusionConfig
from reasoning_seg.segmenter import ViewInput, ViewSegmentation


@dataclass
class FusionResult:
    """Per-point fused evidence for one query."""

    probability: np.ndarray  # (N,) float32 in [0, 1]
    observed: np.ndarray  # (N,) int32: how many voting views saw the point
    view_weights: np.ndarray  # (V,) float32 weight each view voted with (0 = filtered out)
    filtered_reasons: list[str]  # per view: "" if it voted, else why it was dropped


def view_filter_reason(seg: ViewSegmentation, config: FusionConfig) -> str:
    """Why a view's mask is not trusted ('' when it is)."""
    if seg.confidence < config.min_confidence:
        return f"confidence {seg.confidence:.2f} < {config.min_confidence:.2f}"
    area = int(np.count_nonzero(seg.mask))
    if area < config.min_mask_pixels:
        return f"mask area {area} px < {config.min_mask_pixels} px"
    return ""


def fuse_naive(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
) -> FusionResult:
    """Unweighted multi-view unprojection of masks onto ``points`` (N, 3)."""
    if len(views) != len(segmentations):
        raise ValueError(f"{len(views)} views but {len(segmentations)} segmentations")
    n = len(points)
    votes = np.zeros(n, dtype=np.float64)
    observed = np.zeros(n, dtype=np.int32)
    weights = np.zeros(len(views), dtype=np.float32)
    reasons: list[str] = []
    for i, (view, seg) in enumerate(zip(views, segmentations, strict=True)):
        reason = view_filter_reason(seg, config)
        reasons.append(reason)
        if reason:
            continue
        weights[i] = 1.0
        visible, pix = visible_pixels(
            points, view.T_world_cam, view.intrinsics, view.depth, config.visibility_tolerance
        )
        inside = seg.mask.reshape(-1)[pix[visible]]
        votes[visible] += inside
        observed[visible] += 1
    prob = np.zeros(n, dtype=np.float32)
    seen = observed > 0
    prob[seen] = (votes[seen] / observed[seen]).astype(np.float32)
    return FusionResult(prob, observed, weights, reasons)


def fuse(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
) -> FusionResult:
    """Dispatch on ``config.method``."""
    if config.method == "naive":
        return fuse_naive(points, views, segmentations, config)
    raise ValueError(f"unknown fusion method '{config.method}'")
