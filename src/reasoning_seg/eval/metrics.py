"""Scoring predicted 3D masks against ground truth, and the papers' summary numbers.

Per query
    Point sets from different extractions of the same map do not share indices, so masks are
    compared as sets of occupied voxels: a voxel is "predicted" if any predicted point falls in it
    and "true" if any ground-truth point does. With the voxel equal to the map's, this is the
    per-point IoU of MLLM-For3D / Reason3D evaluated on the map's own points.

Over a set of queries (:func:`summarise`), exactly as computed here:
    - ``acc_25`` / ``acc_50`` (Acc@0.25 / Acc@0.5): the fraction of *scored* queries whose IoU is
      >= 0.25 / >= 0.5. A query answered "not found" has IoU 0.
    - ``miou``: the arithmetic mean of the per-query IoU over the same scored queries, misses
      included as 0. This is the Reason3D / MLLM-For3D convention (a mean over queries, not over
      categories, and not only over the queries that were grounded).
    - ``miou_grounded``: the mean IoU over the queries with IoU >= 0.25 only (the "segmentation
      quality after successful grounding" reading of MLLM-For3D §4); reported beside ``miou``
      so that neither reading has to be guessed.
    - ``false_found_rate``: over queries whose target is absent from the scene (or never seen by
      the map), the fraction answered "found" anyway: the hallucination rate of the whole system.
    - A query is *scored* when its target is in the scene and at least ``min_gt_points`` map points
      carry its label; targets the camera never saw are counted in ``unobserved`` and left out,
      since no method could segment them from this map.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

IOU_THRESHOLDS = (0.25, 0.5)


def voxel_keys(points: np.ndarray, voxel: float) -> set[tuple[int, int, int]]:
    """Set of integer voxel coordinates occupied by ``points``."""
    if len(points) == 0:
        return set()
    idx = np.floor(np.asarray(points, dtype=np.float64) / voxel).astype(np.int64)
    return set(map(tuple, np.unique(idx, axis=0)))


def _overlap(pred_points: np.ndarray, gt_points: np.ndarray, voxel: float) -> tuple[int, int, int]:
    """(intersection, predicted, true) voxel counts."""
    a, b = voxel_keys(pred_points, voxel), voxel_keys(gt_points, voxel)
    return len(a & b), len(a), len(b)


def _iou_pr(inter: int, n_pred: int, n_gt: int) -> tuple[float, float, float]:
    union = n_pred + n_gt - inter
    return (
        inter / union if union else 0.0,
        inter / n_pred if n_pred else 0.0,
        inter / n_gt if n_gt else 0.0,
    )


def voxel_iou(pred_points: np.ndarray, gt_points: np.ndarray, voxel: float) -> float:
    """IoU of two point sets compared on a voxel grid; 0.0 when both are empty."""
    return _iou_pr(*_overlap(pred_points, gt_points, voxel))[0]


def precision_recall(pred_points: np.ndarray, gt_points: np.ndarray, voxel: float) -> tuple[float, float]:
    """Voxel precision (predicted voxels that are true) and recall (true voxels predicted)."""
    return _iou_pr(*_overlap(pred_points, gt_points, voxel))[1:]


@dataclass
class QueryScore:
    """The outcome of one query of a benchmark, with what is needed to group and explain it."""

    scene: str
    query: str
    kind: str  # explicit | affordance | spatial | no_name | absent | ...
    category: str  # the target's category ("" when the target is absent)
    target_id: int  # 0 when the target is absent from the scene
    gt_points: int  # map points labelled as the target
    found: bool
    iou: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    pred_points: int = 0
    message: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def absent(self) -> bool:
        """The target is not in the scene, or the map never saw it: the right answer is "not found"."""
        return self.target_id == 0

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def score_query(
    scene: str,
    query: str,
    kind: str,
    category: str,
    target_id: int,
    found: bool,
    pred_points: np.ndarray,
    gt_points: np.ndarray,
    voxel: float,
    message: str = "",
    timings: dict[str, float] | None = None,
) -> QueryScore:
    """Score one answer: voxel IoU / precision / recall of ``pred_points`` against ``gt_points``."""
    pred = np.asarray(pred_points, dtype=np.float64).reshape(-1, 3) if found else np.zeros((0, 3))
    gt = np.asarray(gt_points, dtype=np.float64).reshape(-1, 3)
    iou, prec, rec = _iou_pr(*_overlap(pred, gt, voxel)) if len(gt) else (0.0, 0.0, 0.0)
    t = dict(timings or {})
    return QueryScore(
        scene=scene,
        query=query,
        kind=kind,
        category=category,
        target_id=int(target_id),
        gt_points=len(gt),
        found=bool(found),
        iou=float(iou),
        precision=float(prec),
        recall=float(rec),
        pred_points=len(pred),
        message=message,
        seconds=float(sum(t.values())),
        timings=t,
    )


def _accuracy(scored: Sequence[QueryScore]) -> dict[str, float | int]:
    """Acc@k, mIoU and grounded mIoU over queries that have a target in the map."""
    n = len(scored)
    out: dict[str, float | int] = {"queries": n}
    if n == 0:
        out.update({"acc_25": float("nan"), "acc_50": float("nan"), "miou": float("nan")})
        out["miou_grounded"] = float("nan")
        return out
    ious = np.array([s.iou for s in scored])
    for k in IOU_THRESHOLDS:
        out[f"acc_{int(round(k * 100))}"] = float(np.mean(ious >= k))
    out["miou"] = float(ious.mean())
    grounded = ious[ious >= IOU_THRESHOLDS[0]]
    out["miou_grounded"] = float(grounded.mean()) if len(grounded) else float("nan")
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarise(scores: Iterable[QueryScore], min_gt_points: int = 1) -> dict:
    """The benchmark's numbers for one method: overall, per query kind, per category, absent, timings.

    See the module docstring for the exact definitions.
    """
    scores = list(scores)
    present = [s for s in scores if not s.absent]
    scored = [s for s in present if s.gt_points >= min_gt_points]
    # A target the map never saw is, for this map, an absent target: "found" is a false positive.
    absent = [s for s in scores if s.absent] + [s for s in present if s.gt_points < min_gt_points]
    out = {"overall": _accuracy(scored)}
    out["unobserved"] = len(present) - len(scored)
    out["absent_queries"] = len(absent)
    out["false_found_rate"] = float(np.mean([s.found for s in absent])) if absent else float("nan")
    out["found_rate"] = float(np.mean([s.found for s in scored])) if scored else float("nan")

    def group(key: Callable[[QueryScore], str]) -> dict[str, dict]:
        buckets: dict[str, list[QueryScore]] = defaultdict(list)
        for s in scored:
            buckets[key(s)].append(s)
        return {k: _accuracy(v) for k, v in sorted(buckets.items())}

    out["by_kind"] = group(lambda s: s.kind)
    out["by_category"] = group(lambda s: s.category)
    seconds = [s.seconds for s in scores]
    stages: dict[str, list[float]] = defaultdict(list)
    for s in scores:
        for stage, t in s.timings.items():
            stages[stage].append(t)
    out["timing"] = {
        "query_p50_s": _percentile(seconds, 50),
        "query_p95_s": _percentile(seconds, 95),
        "stage_mean_s": {k: float(np.mean(v)) for k, v in stages.items()},
    }
    return out
