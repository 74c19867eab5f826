"""The player's TF tree (used to derive the camera pose from a bag where tf2 is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from reasoning_seg.camera import look_at
from reasoning_seg.io.tf_tree import TfTree


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return look_at(rng.uniform(-3, 3, 3), rng.uniform(-1, 1, 3) + [0, 0, 5.0])


def test_a_chain_through_static_and_dynamic_edges_composes_by_hand():
    map_odom, odom_base, base_cam = _rigid(1), _rigid(2), _rigid(3)
    tree = TfTree()
    tree.add("base_link", "cam", base_cam, 0.0, static=True)
    tree.add("map", "odom", map_odom, 10.0, static=False)
    tree.add("odom", "base_link", odom_base, 10.5, static=False)
    T, stamp = tree.lookup("map", "cam")
    np.testing.assert_allclose(T, map_odom @ odom_base @ base_cam, atol=1e-12)
    assert stamp == 10.5  # the newest dynamic edge on the path; the static one has no time
    # The inverse direction, and between two branches (cam -> a sibling sensor under base_link).
    np.testing.assert_allclose(tree.lookup("cam", "map")[0] @ T, np.eye(4), atol=1e-9)
    lidar = _rigid(4)
    tree.add("base_link", "lidar", lidar, 0.0, static=True)
    np.testing.assert_allclose(tree.lookup("lidar", "cam")[0], np.linalg.inv(lidar) @ base_cam, atol=1e-9)
    assert tree.lookup("base_link", "cam")[1] is None  # all static
    assert tree.lookup("map", "nowhere") is None  # not connected


def test_newest_sample_wins_and_bad_input_is_refused():
    tree = TfTree()
    a, b = _rigid(5), _rigid(6)
    tree.add("map", "cam", a, 2.0, static=False)
    tree.add("map", "cam", b, 1.0, static=False)  # older, arrived late: ignored
    np.testing.assert_allclose(tree.lookup("map", "cam")[0], a)
    tree.add("map", "cam", b, 3.0, static=False)
    np.testing.assert_allclose(tree.lookup("map", "cam")[0], b)
    with pytest.raises(ValueError, match="two different frames"):
        tree.add("cam", "cam", a, 1.0, static=False)
    bad = a.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        tree.add("map", "x", bad, 1.0, static=False)
    tree.add("cam", "map2", a, 1.0, static=False)
    tree.add("map2", "map", a, 1.0, static=False)  # map -> cam -> map2 -> map: a cycle
    with pytest.raises(ValueError, match="cycle"):
        tree.lookup("map", "cam")
