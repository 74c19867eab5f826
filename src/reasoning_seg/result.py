"""Packaging the fused per-point probability into what a manipulation stack consumes.

A grasp planner wants the target's points, a box it can reason about, and one number saying how
much to trust it. The box is gravity-aligned (yaw only, REP-103 z-up): objects rest on surfaces,
and a box tilted by noise is worse for grasping than an upright one that is slightly loose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OrientedBox:
    """Box with ``center`` (3,), ``rotation`` (3x3, columns = box axes in the map frame), ``size`` (3,)."""

    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray

    @classmethod
    def empty(cls) -> OrientedBox:
        """A zero-size box at the origin (the box of a query that found nothing)."""
        return cls(np.zeros(3), np.eye(3), np.zeros(3))

    def corners(self) -> np.ndarray:
        """(8, 3) corners in the map frame."""
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        return self.center + (signs * self.size / 2.0) @ self.rotation.T

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: which points lie inside the box grown by ``margin``."""
        local = (np.asarray(points) - self.center) @ self.rotation
        return np.all(np.abs(local) <= self.size / 2.0 + margin, axis=1)


def gravity_aligned_box(points: np.ndarray) -> OrientedBox:
    """Smallest-variance-aligned box with a vertical z axis (2D PCA of the footprint)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0:
        return OrientedBox.empty()
    xy = p[:, :2] - p[:, :2].mean(0)
    if len(p) >= 3 and np.linalg.matrix_rank(xy) == 2:
        _, vecs = np.linalg.eigh(xy.T @ xy)
        ax = vecs[:, 1]  # major axis of the footprint
    else:
        ax = np.array([1.0, 0.0])
    R = np.array([[ax[0], -ax[1], 0.0], [ax[1], ax[0], 0.0], [0.0, 0.0, 1.0]])
    local = p @ R
    lo, hi = local.min(0), local.max(0)
    return OrientedBox(center=R @ ((lo + hi) / 2.0), rotation=R, size=hi - lo)


@dataclass
class QueryResult:
    """The answer to one query, in the map frame.

    ``success`` means the query ran; ``found`` that a target was segmented (a query can succeed and
    find nothing: 'not found' is a valid answer). ``method`` says what produced the points:
    ``"fusion:<fusion.method>"`` or ``"3d_net"`` (the label-free 3D network, MLLM-For3D §3.3).
    ``unified_embedding`` is fusion's attention-weighted ``[SEG]`` embedding (§3.1, the 3D network's
    query token; a unit vector), None when fusion computed none (every view filtered out, or the
    naive method); it is kept so a caller can re-ask a 3D network without the 2D model.
    """

    query: str
    success: bool
    found: bool
    message: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    point_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    box: OrientedBox = field(default_factory=OrientedBox.empty)
    confidence: float = 0.0
    answer: str = ""
    method: str = ""
    segmenter: str = ""
    keyframe_ids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    view_reports: list[dict] = field(default_factory=list)
    unified_embedding: np.ndarray | None = None

    def summary(self) -> dict:
        """JSON-serialisable summary (no point arrays)."""
        return {
            "query": self.query,
            "success": self.success,
            "found": self.found,
            "message": self.message,
            "num_points": int(len(self.points)),
            "confidence": float(self.confidence),
            "box": {
                "center": self.box.center.tolist(),
                "rotation": self.box.rotation.tolist(),
                "size": self.box.size.tolist(),
            },
            "answer": self.answer,
            "method": self.method,
            "segmenter": self.segmenter,
            "keyframe_ids": list(self.keyframe_ids),
            "timings_s": dict(self.timings),
            "views": self.view_reports,
        }

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`summary` as pretty JSON."""
        Path(path).write_text(json.dumps(self.summary(), indent=2))


def largest_cluster(points: np.ndarray, eps: float, min_points: int = 5) -> np.ndarray:
    """(N,) bool mask of the largest DBSCAN cluster (Open3D); all True if clustering finds nothing."""
    import open3d as o3d

    if len(points) == 0 or eps <= 0:
        return np.ones(len(points), dtype=bool)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    labels = np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_points))
    if labels.size == 0 or labels.max() < 0:
        return np.ones(len(points), dtype=bool)
    best = np.bincount(labels[labels >= 0]).argmax()
    return labels == best


def package_result(
    query: str,
    points: np.ndarray,
    colors: np.ndarray,
    probability: np.ndarray,
    score_threshold: float,
    min_points: int,
    cluster_radius: float = 0.0,
) -> QueryResult:
    """Threshold the fused probability and describe the target; 'not found' below ``min_points``.

    Confidence = mean probability of the target points: 1.0 when every view that saw the target
    agreed, lower when views disagreed. Stages before this one fold their own doubts (view
    confidences, filtering) into the probability itself.
    """
    sel = probability >= score_threshold
    if cluster_radius > 0 and sel.any():
        keep = largest_cluster(points[sel], cluster_radius)
        idx = np.flatnonzero(sel)
        sel[idx[~keep]] = False
    n = int(sel.sum())
    if n < min_points:
        return QueryResult(
            query,
            True,
            False,
            f"not found: {n} map points reached probability {score_threshold:.2f} (need {min_points})",
        )
    pts, prob = points[sel], probability[sel]
    return QueryResult(
        query,
        True,
        True,
        f"found {n} points",
        points=pts,
        colors=colors[sel],
        point_confidence=prob.astype(np.float32),
        box=gravity_aligned_box(pts),
        confidence=float(prob.mean()),
    )
