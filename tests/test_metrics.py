"""The papers' metrics on hand-checked cases (Acc@k, mIoU with misses, grounded mIoU, false found)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasoning_seg.metrics import QueryScore, precision_recall, score_query, summarise, voxel_iou

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
