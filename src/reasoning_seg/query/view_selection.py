"""Choosing which keyframes the 2D reasoning model looks at for a query.

REALM's global stage (K-means over camera poses for diversity, then the views that see the most of
the scene for coverage) adapted to a keyframe window: cluster the window's poses into N clusters
and take, from each cluster, the keyframe that sees the most map points. MLLM-For3D §3.1 selects
views at random; that strategy is kept for comparison. More views is not monotonically better
(MLLM-For3D Table 4: 4 views beat 2 and 8), so N is a parameter, not "as many as possible".

REALM's local stage (GLSpaG-Local) is :func:`select_local_views`: once the global views have located
a candidate target, the keyframes in which that candidate appears largest are close-ups of it.

Both take ``device`` like :func:`reasoning_seg.query.fusion.fuse`: None runs numpy, a torch device
runs the depth tests of all keyframes as one batch there
(:func:`~reasoning_seg.query.fusion_torch.visible_pixels_torch`), which is what makes scoring a
30-keyframe window cheap on a GPU. The choice of views is the same.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from reasoning_seg.camera import invert_transform, visible_pixels
from reasoning_seg.config import ViewSelectionConfig
from reasoning_seg.mapping.keyframes import Keyframe
from reasoning_seg.query.fusion_torch import (
    Camera,
    points_on_device,
    to_device,
    torch_device,
    visible_pixels_torch,
)

if TYPE_CHECKING:
    import torch


def pose_features(keyframes: Sequence[Keyframe], direction_weight: float = 1.0) -> np.ndarray:
    """(K, 6) position + scaled viewing direction: two cameras at one spot looking apart are distinct."""
    pos = np.array([kf.T_world_cam[:3, 3] for kf in keyframes])
    fwd = np.array([kf.T_world_cam[:3, 2] for kf in keyframes])
    return np.hstack([pos, direction_weight * fwd])


def _cameras(keyframes: Sequence[Keyframe]) -> list[Camera]:
    return [(kf.frame.T_world_cam, kf.frame.intrinsics, kf.frame.depth) for kf in keyframes]


def coverage(
    keyframes: Sequence[Keyframe], points: np.ndarray, tolerance: float, device: str | None = None
) -> np.ndarray:
    """(K,) number of ``points`` each keyframe sees (visibility-checked against its depth)."""
    dev = torch_device(device)
    if dev is not None:
        if not keyframes:
            return np.zeros(0, dtype=np.int64)
        pts = _spatial_subsample_torch(points, len(points), dev)  # the upload, through the cache
        visible, _, _ = visible_pixels_torch(pts, _cameras(keyframes), tolerance, dev)
        return visible.sum(1).cpu().numpy().astype(np.int64)
    out = np.zeros(len(keyframes), dtype=np.int64)
    for i, kf in enumerate(keyframes):
        f = kf.frame
        vis, _ = visible_pixels(points, f.T_world_cam, f.intrinsics, f.depth, tolerance)
        out[i] = int(vis.sum())
    return out


def spatial_subsample(points: np.ndarray, max_points: int) -> np.ndarray:
    """About ``max_points`` of ``points``, chosen by a hash of their millimetre coordinates.

    Unlike a random draw this depends only on the point set, not its order, so the same map (for
    example after save/load, which extracts points in another order) selects the same views.
    """
    if len(points) <= max_points:
        return points
    q = np.round(np.asarray(points) * 1000.0).astype(np.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791)
    keep = (h % 1_000_003) < int(1_000_003 * max_points / len(points))
    return points[keep]


def _spatial_subsample_torch(points: np.ndarray, max_points: int, device: torch.device) -> torch.Tensor:
    """:func:`spatial_subsample` on ``device`` (same hash, same points, same order), as a tensor."""
    import torch

    p = points_on_device(points, device)
    if len(p) <= max_points:
        return p
    q = torch.round(p * 1000.0).to(torch.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791)
    keep = (h % 1_000_003) < int(1_000_003 * max_points / len(p))
    return p[keep]


_KMEANS_MEMO: OrderedDict[tuple, np.ndarray] = OrderedDict()
_KMEANS_LOCK = threading.Lock()


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Labels of a small deterministic k-means (k-means++ seeding); k <= len(x).

    Deterministic in its inputs, so the labels are remembered for the last few inputs: between two
    queries the keyframe window (whose poses are clustered) usually has not changed, and the
    Python-level iterations cost about half a millisecond. The returned array is read-only.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    key = (x.shape, x.tobytes(), k, seed, iters)
    with _KMEANS_LOCK:
        hit = _KMEANS_MEMO.get(key)
        if hit is not None:
            _KMEANS_MEMO.move_to_end(key)
            return hit
    labels = _kmeans(x, k, seed, iters)
    labels.setflags(write=False)
    with _KMEANS_LOCK:
        _KMEANS_MEMO[key] = labels
        while len(_KMEANS_MEMO) > 16:
            _KMEANS_MEMO.popitem(last=False)
    return labels


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() <= 0:
            centers.append(x[rng.integers(len(x))])
        else:
            centers.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.array(centers)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels


def select_views(
    keyframes: Sequence[Keyframe],
    map_points: np.ndarray,
    num_views: int,
    config: ViewSelectionConfig,
    visibility_tolerance: float,
    device: str | None = None,
) -> list[Keyframe]:
    """Pick up to ``num_views`` keyframes for a query, ordered by keyframe id.

    Strategies: ``random`` (MLLM-For3D), ``diverse`` (one per pose cluster, nearest its centre),
    ``diverse_coverage`` (one per pose cluster, the one seeing most map points; REALM).
    """
    kfs = list(keyframes)
    if num_views <= 0 or not kfs:
        return []
    if len(kfs) <= num_views:
        return sorted(kfs, key=lambda kf: kf.keyframe_id)
    rng = np.random.default_rng(config.seed)
    if config.strategy == "random":
        idx = rng.choice(len(kfs), size=num_views, replace=False)
        return sorted((kfs[i] for i in idx), key=lambda kf: kf.keyframe_id)

    feats = pose_features(kfs)
    labels = kmeans(feats, num_views, config.seed)
    if config.strategy == "diverse_coverage":
        dev = torch_device(device)
        if dev is not None:  # subsample and depth tests on the device, one batch for the whole window
            pts = _spatial_subsample_torch(map_points, config.max_points, dev)
            visible, _, _ = visible_pixels_torch(pts, _cameras(kfs), visibility_tolerance, dev)
            score = visible.sum(1).cpu().numpy().astype(np.float64)
        else:
            pts = spatial_subsample(map_points, config.max_points)
            score = coverage(kfs, pts, visibility_tolerance).astype(np.float64)
    elif config.strategy == "diverse":
        score = np.zeros(len(kfs))
    else:
        raise ValueError(f"unknown view selection strategy '{config.strategy}'")
    chosen: list[int] = []
    for j in range(num_views):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        centre = feats[members].mean(0)
        dist = np.linalg.norm(feats[members] - centre, axis=1)
        # Highest score first; ties (and the 'diverse' strategy) go to the most central member.
        order = np.lexsort((dist, -score[members]))
        chosen.append(int(members[order[0]]))
    # k-means can leave a cluster empty; fill up with the best remaining views so N is honoured.
    if len(chosen) < num_views:
        rest = [i for i in np.argsort(-score, kind="stable") if i not in chosen]
        chosen.extend(int(i) for i in rest[: num_views - len(chosen)])
    return sorted((kfs[i] for i in chosen), key=lambda kf: kf.keyframe_id)


def select_local_views(
    keyframes: Sequence[Keyframe],
    candidate_points: np.ndarray,
    num_views: int,
    exclude_ids: set[int],
    visibility_tolerance: float,
    min_visible_fraction: float = 0.3,
    device: str | None = None,
) -> list[Keyframe]:
    """Close-up views of a candidate target (REALM GLSpaG-Local, adapted to a keyframe window).

    A keyframe's score is the image area the visible candidate points cover, approximated by
    ``sum (fx / z)^2`` over them (each map point stands for one voxel, whose image footprint shrinks
    with the square of its depth). Views that see less than ``min_visible_fraction`` of the
    candidate are skipped: a close-up of a corner of the object tells the 2D model little. Global
    views (``exclude_ids``) are not chosen again.
    """
    pts = np.asarray(candidate_points, dtype=np.float64).reshape(-1, 3)
    if num_views <= 0 or len(pts) == 0:
        return []
    kfs = [kf for kf in keyframes if kf.keyframe_id not in exclude_ids]
    dev = torch_device(device)
    if dev is not None and kfs:
        scored = _local_scores_torch(kfs, pts, visibility_tolerance, min_visible_fraction, dev)
    else:
        scored = []
        for kf in kfs:
            f = kf.frame
            vis, _ = visible_pixels(pts, f.T_world_cam, f.intrinsics, f.depth, visibility_tolerance)
            if vis.sum() < min_visible_fraction * len(pts):
                continue
            world_to_cam = invert_transform(f.T_world_cam)
            z = pts[vis] @ world_to_cam[2, :3] + world_to_cam[2, 3]
            area = float(np.sum((f.intrinsics.fx / z) ** 2))
            scored.append((area, kf.keyframe_id, kf))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return sorted((kf for _, _, kf in scored[:num_views]), key=lambda kf: kf.keyframe_id)


def _local_scores_torch(
    keyframes: list[Keyframe],
    pts: np.ndarray,
    tolerance: float,
    min_visible_fraction: float,
    dev: torch.device,
) -> list[tuple[float, int, Keyframe]]:
    """(area, id, keyframe) of the keyframes that see enough of ``pts``: the numpy loop, as one batch."""
    import torch

    visible, _, z = visible_pixels_torch(pts, _cameras(keyframes), tolerance, dev)
    fx = to_device(np.array([kf.frame.intrinsics.fx for kf in keyframes], dtype=np.float64), dev)
    area = torch.where(visible, (fx[:, None] / z) ** 2, 0.0).sum(1)
    # one device-to-host copy for both (counts are exact in float64)
    area, counts = torch.stack([area, visible.sum(1).to(torch.float64)]).cpu().numpy()
    return [
        (float(a), kf.keyframe_id, kf)
        for kf, a, c in zip(keyframes, area, counts, strict=True)
        if c >= min_visible_fraction * len(pts)
    ]
