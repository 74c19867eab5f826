"""Scoring a predicted 3D mask against ground truth (the papers' Acc@k and mIoU build on this).

Point sets from different extractions of the same map do not share indices, so masks are compared
as sets of occupied voxels: a voxel is "predicted" if any predicted point falls in it and "true" if
any ground-truth point does. With the voxel equal to the map's, this is the per-point IoU of
MLLM-For3D / Reason3D evaluated on the map's own points.
"""

from __future__ import annotations

import numpy as np


def voxel_keys(points: np.ndarray, voxel: float) -> set[tuple[int, int, int]]:
    """Set of integer voxel coordinates occupied by ``points``."""
    if len(points) == 0:
        return set()
    idx = np.floor(np.asarray(points, dtype=np.float64) / voxel).astype(np.int64)
    return set(map(tuple, np.unique(idx, axis=0)))


def voxel_iou(pred_points: np.ndarray, gt_points: np.ndarray, voxel: float) -> float:
    """IoU of two point sets compared on a voxel grid; 0.0 when both are empty."""
    a, b = voxel_keys(pred_points, voxel), voxel_keys(gt_points, voxel)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def precision_recall(pred_points: np.ndarray, gt_points: np.ndarray, voxel: float) -> tuple[float, float]:
    """Voxel precision (predicted voxels that are true) and recall (true voxels predicted)."""
    a, b = voxel_keys(pred_points, voxel), voxel_keys(gt_points, voxel)
    inter = len(a & b)
    return (inter / len(a) if a else 0.0), (inter / len(b) if b else 0.0)
