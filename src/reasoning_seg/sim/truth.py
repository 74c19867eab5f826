"""Ground truth for a map built from drifting poses: label what the map really holds.

A map point was fused from depth pixels that the *reported* (drifting) poses placed in the world.
Labelling it with the object of the true mesh surface nearest to where it landed (what
:meth:`SyntheticScene.label_points` does) scores a drifted map against misplaced truth: a shelf
fused 5 cm to the left is "wrong" there even where the map holds nothing but the shelf.

Here each map point ``p`` is traced back through every recorded frame that sees it: in frame
``k`` it sits at ``p_cam = T_reported_k^-1 p`` (the camera-frame point the depth pixel measured),
which in the true world is ``T_true_k p_cam``; the true mesh says which object is there. The
frames that see ``p`` (inside the image, recorded depth within ``depth_tolerance`` of its range)
vote, and the majority wins. With zero drift every vote is ``label_points(p)``, so the labels are
exactly today's (a test holds it to that); with drift, a point takes the object it was measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics


@dataclass(frozen=True)
class TruthView:
    """One recorded frame as the labelling needs it."""

    depth: np.ndarray  # (H, W) metres, 0 / NaN = no reading
    intrinsics: CameraIntrinsics
    T_reported: np.ndarray  # (4, 4) the pose the map was built with
    T_true: np.ndarray  # (4, 4) where the camera really was


def label_map_points(
    scene: Any,
    points: np.ndarray,
    views: Sequence[TruthView],
    max_distance: float,
    depth_tolerance: float = 0.05,
) -> np.ndarray:
    """(N,) int32 instance id of each map point as the drifted map holds it (0 = no object).

    Points that no frame sees (occluded everywhere, or outside every image) keep the label of
    their own position, the only place there is to look.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    n = len(pts)
    idx_parts, true_parts = [], []
    for v in views:
        R, t = v.T_reported[:3, :3], v.T_reported[:3, 3]
        cam = (pts - t) @ R  # R^T (p - t), row-wise
        z = cam[:, 2]
        intr = v.intrinsics
        front = z > 1e-6
        u = np.full(n, -1, np.int64)
        r = np.full(n, -1, np.int64)
        u[front] = np.floor(intr.fx * cam[front, 0] / z[front] + intr.cx + 0.5).astype(np.int64)
        r[front] = np.floor(intr.fy * cam[front, 1] / z[front] + intr.cy + 0.5).astype(np.int64)
        inside = front & (u >= 0) & (u < intr.width) & (r >= 0) & (r < intr.height)
        k = np.flatnonzero(inside)
        d = np.asarray(v.depth)[r[k], u[k]]
        seen = np.isfinite(d) & (d > 0) & (np.abs(d - z[k]) <= depth_tolerance)
        k = k[seen]
        if not len(k):
            continue
        idx_parts.append(k)
        if np.array_equal(v.T_true, v.T_reported):  # no drift here: the point itself, not a round trip
            true_parts.append(pts[k])
        else:
            true_parts.append(cam[k] @ v.T_true[:3, :3].T + v.T_true[:3, 3])
    labels = scene.label_points(pts, max_distance=max_distance)  # fallback: the point's own position
    if not idx_parts:
        return labels
    idx = np.concatenate(idx_parts)
    votes = scene.label_points(np.vstack(true_parts), max_distance=max_distance).astype(np.int64)
    # Majority per point: count (point, label) pairs, keep each point's most frequent label
    # (ties to the smaller id, so the result does not depend on the order of the frames).
    top = int(votes.max()) + 1
    pairs, counts = np.unique(idx * top + votes, return_counts=True)
    point, label = pairs // top, pairs % top
    order = np.lexsort((label, -counts, point))
    first = np.ones(len(order), bool)
    first[1:] = point[order][1:] != point[order][:-1]
    winners = order[first]
    labels[point[winners]] = label[winners]
    return labels


def recorded_truth_views(sequence_dir: str | Path, every: int = 1) -> list[TruthView]:
    """The frames of a recording made by ``SyntheticScene.record_sequence`` (``.gt_pose.txt`` needed)."""
    from reasoning_seg.io.sequence_io import FolderSequence

    seq = FolderSequence(sequence_dir)
    views = []
    for i in range(0, len(seq), max(1, every)):
        true = seq.gt_pose(i)
        if true is None:
            raise FileNotFoundError(
                f"frame {i} of {sequence_dir} has no .gt_pose.txt (not a simulated recording)"
            )
        frame = seq[i]
        views.append(TruthView(frame.depth, frame.intrinsics, frame.T_world_cam, true))
    return views


def map_truth(scene: Any, sequence_dir: str | Path, points: np.ndarray, max_distance: float) -> np.ndarray:
    """Labels of a map built from a simulated recording: drift-aware where its poses drift.

    Without drift (every reported pose equals the true one) the answer is
    ``scene.label_points(points)`` itself, without reading the images (the same labels, cheaper).
    """
    from reasoning_seg.io.sequence_io import FolderSequence

    seq = FolderSequence(sequence_dir)
    drifted = any(
        (gt := seq.gt_pose(i)) is not None and not np.array_equal(gt, seq.pose(i)) for i in range(len(seq))
    )
    if not drifted:
        return scene.label_points(points, max_distance=max_distance)
    return label_map_points(scene, points, recorded_truth_views(sequence_dir), max_distance)
