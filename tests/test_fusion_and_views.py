"""Hand-made cases for fusion, view selection, keyframes, stream sync and config."""

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.config import FusionConfig, KeyframeConfig, PipelineConfig, ViewSelectionConfig
from reasoning_seg.io.frame_sync import ApproximatePairSync, PoseBuffer
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.mapping.keyframes import Keyframe, KeyframeWindow
from reasoning_seg.query.fusion import fuse_naive
from reasoning_seg.query.result import gravity_aligned_box, package_result
from reasoning_seg.query.view_selection import kmeans, select_local_views, select_views
from reasoning_seg.segmenter import ViewInput, ViewSegmentation

INTR = CameraIntrinsics(64, 48, 50.0, 47.0, 32.5, 22.0)  # fx != fy, off-centre: a swap shows


def view(T, depth, kid=0):
    return ViewInput(kid, np.zeros((48, 64, 3), np.uint8), depth, INTR, T)


def seg(mask, conf=0.9):
    return ViewSegmentation(np.where(mask, 5.0, -5.0).astype(np.float32), conf, np.ones(4, np.float32))


def test_occluded_point_gets_no_vote_and_visible_point_outside_mask_votes_no():
    T = np.eye(4)
    depth = np.full((48, 64), 2.0, np.float32)
    pts = np.array(
        [
            [0.0, 0.0, 2.0],  # visible, inside the mask
            [0.0, 0.0, 3.0],  # behind the wall: occluded
            [0.5, 0.0, 2.0],
        ]
    )  # visible, outside the mask
    mask = np.zeros((48, 64), bool)
    mask[20:28, 28:36] = True
    r = fuse_naive(pts, [view(T, depth)], [seg(mask)], FusionConfig())
    assert r.probability.tolist() == [1.0, 0.0, 0.0]
    assert r.observed.tolist() == [1, 0, 1]


def test_views_average_and_filtered_views_do_not_vote():
    T = np.eye(4)
    depth = np.full((48, 64), 2.0, np.float32)
    pts = np.array([[0.0, 0.0, 2.0]])
    yes, no = np.ones((48, 64), bool), np.zeros((48, 64), bool)
    cfg = FusionConfig(min_confidence=0.5, min_mask_pixels=0)  # an empty mask is a 'no' vote here
    r = fuse_naive(pts, [view(T, depth)] * 3, [seg(yes), seg(no), seg(no, conf=0.1)], cfg)
    assert r.probability[0] == pytest.approx(0.5)
    assert r.view_weights.tolist() == [1.0, 1.0, 0.0] and "confidence" in r.filtered_reasons[2]


def test_threshold_and_not_found():
    pts = np.random.default_rng(0).uniform(size=(100, 3))
    prob = np.zeros(100, np.float32)
    prob[:30] = 0.8
    r = package_result("q", pts, np.zeros((100, 3), np.float32), prob, 0.5, min_points=20)
    assert r.found and len(r.points) == 30 and r.confidence == pytest.approx(0.8)
    r = package_result("q", pts, np.zeros((100, 3), np.float32), prob, 0.5, min_points=31)
    assert not r.found and "not found" in r.message


def test_gravity_aligned_box_recovers_a_rotated_box():
    rng = np.random.default_rng(0)
    local = rng.uniform(-0.5, 0.5, size=(2000, 3)) * [2.0, 0.5, 1.0]
    yaw = np.deg2rad(30)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    box = gravity_aligned_box(local @ R.T + [1, 2, 3])
    np.testing.assert_allclose(box.center, [1, 2, 3], atol=0.05)
    np.testing.assert_allclose(np.sort(box.size), np.sort([2.0, 0.5, 1.0]), atol=0.05)
    assert abs(abs(box.rotation[:, 0] @ R[:, 0]) - 1) < 1e-3


def ring_keyframes(n):
    win = KeyframeWindow(
        KeyframeConfig(window_size=100, min_translation=0.0, min_rotation_deg=0.0, max_interval=0)
    )
    for i in range(n):
        a = 2 * np.pi * i / n
        T = look_at([2 * np.cos(a), 2 * np.sin(a), 1.0], [0, 0, 0.5])
        win.add(
            RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 2.0, np.float32), INTR, T, i / 30)
        )
    return win.snapshot()


@pytest.mark.parametrize("strategy", ["random", "diverse", "diverse_coverage"])
def test_view_selection_returns_n_distinct_views(strategy):
    kfs = ring_keyframes(24)
    chosen = select_views(kfs, np.zeros((10, 3)), 4, ViewSelectionConfig(strategy=strategy), 0.05)
    ids = [k.keyframe_id for k in chosen]
    assert len(set(ids)) == 4 and ids == sorted(ids)


def test_diverse_selection_spreads_views_around_the_ring():
    kfs = ring_keyframes(24)
    chosen = select_views(kfs, np.zeros((10, 3)), 4, ViewSelectionConfig(strategy="diverse"), 0.05)
    angles = np.sort([np.arctan2(k.T_world_cam[1, 3], k.T_world_cam[0, 3]) for k in chosen])
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
    assert gaps.min() > np.pi / 4  # no two chosen views within 45 degrees of each other


def test_coverage_prefers_the_view_that_sees_the_points():
    kfs = ring_keyframes(2)  # two cameras on opposite sides, each cluster has one member
    # Ask for one view: both are one cluster; the one that sees the point must win.
    target = kfs[1].T_world_cam[:3, 3] + 2.0 * kfs[1].T_world_cam[:3, 2]
    chosen = select_views(kfs, np.array([target]), 1, ViewSelectionConfig(), 0.05)
    assert chosen[0].keyframe_id == 1


def test_kmeans_separates_obvious_clusters():
    x = np.vstack([np.zeros((10, 2)), np.ones((10, 2)) * 10])
    labels = kmeans(x, 2, seed=0)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]


def test_keyframe_window_is_bounded_and_motion_gated():
    win = KeyframeWindow(
        # FIFO eviction: this test is about the motion gate and the bound (novelty eviction has its own
        # tests in test_keyframes.py).
        KeyframeConfig(
            window_size=3, min_translation=0.5, min_rotation_deg=90, max_interval=0, eviction="oldest"
        )
    )

    def f(x):
        T = np.eye(4)
        T[0, 3] = x
        return RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32), INTR, T)

    kept = [win.offer(f(x)) is not None for x in [0, 0.1, 0.6, 0.7, 1.2, 1.8, 2.4]]
    assert kept == [True, False, True, False, True, True, True]
    assert len(win) == 3 and [k.keyframe_id for k in win] == [2, 3, 4]


def test_pair_sync_matches_within_slop_and_stays_bounded():
    sync = ApproximatePairSync(slop=0.01, queue_size=4)
    assert sync.add_a(1.000, "c1") is None
    assert sync.add_b(1.005, "d1") == (1.000, "c1", "d1")
    for i in range(20):  # an unmatched stream must not grow without bound
        sync.add_a(2.0 + i, f"c{i}")
    assert len(sync._a) == 4 and sync.dropped > 0
    assert sync.add_b(21.0, "d") == (21.0, "c19", "d")


def test_pose_buffer_interpolates_and_refuses_stale_poses():
    buf = PoseBuffer(max_age=0.1)
    T0, T1 = np.eye(4), np.eye(4)
    T1[0, 3] = 1.0
    buf.add(0.0, T0)
    buf.add(0.1, T1)
    T, why = buf.lookup(0.05)
    assert why == "" and T[0, 3] == pytest.approx(0.5)
    assert buf.lookup(0.15)[0] is not None
    T, why = buf.lookup(5.0)
    assert T is None and "away" in why
    assert PoseBuffer(0.1).lookup(0.0)[1] == "no pose received yet"


def test_config_rejects_bad_values_and_unknown_names(tmp_path):
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": 0.05, "views.strategy": "random"})
    assert cfg.map.voxel_size == 0.05
    for bad in [
        {"map.voxel_size": -1.0},
        {"views.strategy": "best"},
        {"views.num_views": 2.5},
        {"nope.x": 1},
        {"map.voxel_size": float("nan")},
    ]:
        with pytest.raises(ValueError):
            PipelineConfig().update(bad)
    f = tmp_path / "p.yaml"
    f.write_text(
        "reasoning_seg:\n  ros__parameters:\n    map_frame: odom\n    map:\n      voxel_size: 0.03\n"
    )
    assert PipelineConfig.from_yaml(f).map.voxel_size == 0.03


def _wall_keyframe(kid: int, eye: np.ndarray) -> Keyframe:
    """A keyframe looking along +z at a wall at z = 3 (depth = 3 - eye z)."""
    T = look_at(eye, eye + np.array([0.0, 0.0, 1.0]), up=np.array([0.0, -1.0, 0.0]))
    depth = np.full((48, 64), 3.0 - eye[2], np.float32)
    frame = RGBDFrame(np.zeros((48, 64, 3), np.uint8), depth, INTR, T, stamp=float(kid), frame_id=kid)
    return Keyframe(kid, frame)


def test_local_views_prefer_close_ups_that_see_the_candidate_and_skip_global_views():
    patch = np.array([[x, y, 3.0] for x in np.linspace(-0.1, 0.1, 5) for y in np.linspace(-0.1, 0.1, 5)])
    far = _wall_keyframe(0, np.array([0.0, 0.0, 0.0]))
    near = _wall_keyframe(1, np.array([0.0, 0.0, 1.5]))
    nearer_but_global = _wall_keyframe(2, np.array([0.0, 0.0, 2.0]))
    aside = _wall_keyframe(3, np.array([3.0, 0.0, 2.0]))  # the patch is outside its image
    kfs = [far, near, nearer_but_global, aside]
    picked = select_local_views(kfs, patch, 1, exclude_ids={2}, visibility_tolerance=0.05)
    assert [k.keyframe_id for k in picked] == [1]
    both = select_local_views(kfs, patch, 5, exclude_ids={2}, visibility_tolerance=0.05)
    assert [k.keyframe_id for k in both] == [0, 1]  # 'aside' never sees the patch
    assert select_local_views(kfs, np.zeros((0, 3)), 2, set(), 0.05) == []
