"""The papers' metrics on hand-checked cases (Acc@k, mIoU with misses, grounded mIoU, false found)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasoning_seg.eval.metrics import QueryScore, precision_recall, score_query, summarise, voxel_iou

V = 0.1  # voxel edge for the hand cases


def _cube(n: int, offset: float = 0.0) -> np.ndarray:
    """``n`` voxel centres in a row along x, starting at ``offset`` voxels."""
    return np.array([[(i + offset + 0.5) * V, 0.05, 0.05] for i in range(n)])


def test_voxel_iou_by_hand():
    gt = _cube(4)  # voxels 0..3
    pred = _cube(4, offset=2)  # voxels 2..5 -> intersection 2, union 6
    assert voxel_iou(pred, gt, V) == pytest.approx(2 / 6)
    assert precision_recall(pred, gt, V) == pytest.approx((0.5, 0.5))
    # Several points in one voxel count once.
    assert voxel_iou(np.repeat(gt, 3, axis=0), gt, V) == 1.0
    assert voxel_iou(np.zeros((0, 3)), np.zeros((0, 3)), V) == 0.0


def test_score_query_not_found_scores_zero_even_with_points():
    gt = _cube(4)
    s = score_query("s", "q", "explicit", "chair", 5, False, gt, gt, V)
    assert s.iou == 0.0 and s.pred_points == 0 and s.gt_points == 4


def _score(iou: float, kind: str = "explicit", category: str = "chair", target: int = 3, found: bool = True):
    return QueryScore("s", f"q{iou}", kind, category, target, gt_points=100, found=found, iou=iou)


def test_summary_by_hand():
    scores = [
        _score(0.9),  # >= 0.5
        _score(0.4, kind="spatial"),  # >= 0.25 only
        _score(0.1, kind="spatial", category="bin"),  # grounded at neither
        _score(0.0, found=False, category="bin"),  # a miss counts as IoU 0
        _score(0.0, kind="absent", category="", target=0, found=True),  # false found
        _score(0.0, kind="absent", category="", target=0, found=False),
    ]
    out = summarise(scores)
    o = out["overall"]
    assert o["queries"] == 4
    assert o["acc_25"] == pytest.approx(2 / 4)
    assert o["acc_50"] == pytest.approx(1 / 4)
    assert o["miou"] == pytest.approx((0.9 + 0.4 + 0.1 + 0.0) / 4)
    assert o["miou_grounded"] == pytest.approx((0.9 + 0.4) / 2)
    assert out["absent_queries"] == 2 and out["false_found_rate"] == pytest.approx(0.5)
    assert out["found_rate"] == pytest.approx(3 / 4)
    assert out["by_kind"]["spatial"]["acc_25"] == pytest.approx(1 / 2)
    assert out["by_kind"]["explicit"]["miou"] == pytest.approx(0.45)
    assert out["by_category"]["bin"]["queries"] == 2 and "absent" not in out["by_kind"]


def test_unobserved_targets_are_not_scored_but_a_found_answer_is_a_false_positive():
    seen = _score(0.8)
    never_seen = QueryScore("s", "q", "explicit", "cup", 9, gt_points=3, found=True, iou=0.0)
    out = summarise([seen, never_seen], min_gt_points=20)
    assert out["overall"]["queries"] == 1 and out["overall"]["miou"] == pytest.approx(0.8)
    assert out["unobserved"] == 1 and out["false_found_rate"] == 1.0


def test_empty_summary_is_nan_not_an_error():
    out = summarise([])
    assert math.isnan(out["overall"]["miou"]) and math.isnan(out["false_found_rate"])


def test_boundary_iou_counts_as_accurate():
    out = summarise([_score(0.25), _score(0.5)])
    assert out["overall"]["acc_25"] == 1.0 and out["overall"]["acc_50"] == 0.5


# Holes found by mutation testing (DEVELOPERS.md): each test below kills surviving mutants.


def test_score_query_found_is_scored_by_hand():
    gt = _cube(4)
    pred = _cube(4, offset=2)
    s = score_query(
        "s", "q", "explicit", "chair", 5, True, pred, gt, V, message="m", timings={"a": 0.25, "b": 0.5}
    )
    assert s.iou == pytest.approx(2 / 6) and (s.precision, s.recall) == pytest.approx((0.5, 0.5))
    assert s.pred_points == 4 and s.gt_points == 4 and s.found and not s.absent
    assert (s.scene, s.query, s.kind, s.category, s.target_id, s.message) == (
        "s",
        "q",
        "explicit",
        "chair",
        5,
        "m",
    )
    assert s.seconds == pytest.approx(0.75) and s.timings == {"a": 0.25, "b": 0.5}
    # Absent target: no truth points, IoU 0 whatever was found.
    absent = score_query("s", "q", "absent", "", 0, True, pred, np.zeros((0, 3)), V)
    assert absent.absent and absent.iou == 0.0 and absent.gt_points == 0 and absent.pred_points == 4


def test_min_gt_points_boundary_is_scored():
    at = QueryScore("s", "q", "explicit", "cup", 9, gt_points=20, found=True, iou=0.6)
    below = QueryScore("s", "r", "explicit", "cup", 9, gt_points=19, found=False, iou=0.0)
    out = summarise([at, below], min_gt_points=20)
    assert out["overall"]["queries"] == 1 and out["unobserved"] == 1
    assert out["absent_queries"] == 1 and out["false_found_rate"] == 0.0


def test_empty_accuracy_has_every_key_as_nan_and_timings_summarise():
    out = summarise([_score(0.0, kind="absent", category="", target=0, found=False)])
    o = out["overall"]
    assert o["queries"] == 0 and {"acc_25", "acc_50", "miou", "miou_grounded"} <= set(o)
    assert all(math.isnan(o[k]) for k in ("acc_25", "acc_50", "miou", "miou_grounded"))
    assert math.isnan(out["found_rate"]) and out["false_found_rate"] == 0.0
    timed = [
        QueryScore(
            "s",
            f"q{i}",
            "explicit",
            "cup",
            9,
            gt_points=50,
            found=True,
            iou=0.5,
            seconds=float(i),
            timings={"fusion": float(i)},
        )
        for i in range(1, 5)
    ]
    t = summarise(timed)["timing"]
    assert t["query_p50_s"] == pytest.approx(2.5) and t["query_p95_s"] == pytest.approx(3.85)
    assert t["stage_mean_s"] == {"fusion": pytest.approx(2.5)}
