"""Projection round trips and the visibility test every fusion vote depends on."""

import numpy as np
import pytest

from reasoning_seg.camera import (
    CameraIntrinsics,
    invert_transform,
    is_rigid_transform,
    look_at,
    transform_points,
    visible_pixels,
)

INTR = CameraIntrinsics(64, 48, 50.0, 52.0, 31.5, 23.5)


def test_unproject_then_project_returns_the_same_pixels():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 4.0, size=(48, 64)).astype(np.float32)
    depth[5, 7] = 0.0
    depth[9, 9] = np.nan
    pts, idx = INTR.unproject(depth)
    assert len(pts) == 64 * 48 - 2
    uv, z = INTR.project(pts)
    np.testing.assert_allclose(uv[:, 0], idx % 64, atol=1e-9)
    np.testing.assert_allclose(uv[:, 1], idx // 64, atol=1e-9)
    np.testing.assert_allclose(z, depth.reshape(-1)[idx], rtol=1e-6)


# fx != fy and an off-centre principal point, so a swap of fx/fy or cx/cy cannot cancel out.
SKEWED = CameraIntrinsics(80, 60, 100.0, 40.0, 30.0, 12.0)


def test_projection_by_hand_with_unequal_focal_lengths():
    # u = fx x / z + cx, v = fy y / z + cy, worked out by hand for two points.
    uv, z = SKEWED.project(np.array([[0.4, 0.3, 2.0], [-0.1, 0.5, 0.5]]))
    np.testing.assert_allclose(uv, [[100 * 0.2 + 30, 40 * 0.15 + 12], [-20 + 30, 40 + 12]], atol=1e-12)
    np.testing.assert_allclose(z, [2.0, 0.5])
    rays = SKEWED.pixel_rays()
    assert rays.shape == (60, 80, 3)
    # pixel (u=70, v=2): ((70 - 30) / 100, (2 - 12) / 40, 1)
    np.testing.assert_allclose(rays[2, 70], [0.4, -0.25, 1.0], atol=1e-12)
    depth = np.zeros((60, 80))
    depth[2, 70] = 3.0
    pts, idx = SKEWED.unproject(depth)
    np.testing.assert_allclose(pts, [[1.2, -0.75, 3.0]], atol=1e-12)
    assert idx.tolist() == [2 * 80 + 70]


def test_visibility_picks_the_hand_computed_pixel():
    depth = np.full((60, 80), 2.0)
    # (0.4, 0.3, 2) lands on u = 50, v = 18 (see above); flat index 18 * 80 + 50.
    vis, pix = visible_pixels(np.array([[0.4, 0.3, 2.0]]), np.eye(4), SKEWED, depth, tolerance=0.01)
    assert vis.tolist() == [True] and pix.tolist() == [18 * 80 + 50]


def test_world_round_trip_through_a_pose():
    T = look_at([1.0, -2.0, 1.5], [0.0, 0.0, 0.5])
    assert is_rigid_transform(T)
    pts = np.random.default_rng(1).normal(size=(100, 3))
    back = transform_points(invert_transform(T), transform_points(T, pts))
    np.testing.assert_allclose(back, pts, atol=1e-12)
    # the optical axis points at the target
    np.testing.assert_allclose(T[:3, 2], np.array([-1.0, 2.0, -1.0]) / np.sqrt(6), atol=1e-12)


def test_points_behind_the_camera_do_not_project():
    uv, z = INTR.project(np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))
    assert np.isnan(uv[0]).all() and not np.isnan(uv[1]).any()


def test_scaled_intrinsics_map_pixel_centres_consistently():
    half = INTR.scaled(32, 24)
    p = np.array([[0.3, -0.2, 2.0]])
    uv_full, _ = INTR.project(p)
    uv_half, _ = half.project(p)
    np.testing.assert_allclose((uv_full + 0.5) / 2 - 0.5, uv_half, atol=1e-9)


@pytest.mark.parametrize("bad", [np.full((4, 4), np.nan), np.diag([2.0, 1, 1, 1]), np.eye(3)])
def test_non_rigid_poses_are_detected(bad):
    assert not is_rigid_transform(bad)


def test_occluded_points_are_not_visible():
    T = np.eye(4)  # camera at the origin looking along +z
    depth = np.full((48, 64), 2.0, dtype=np.float32)  # a wall 2 m away
    on_wall = np.array([[0.0, 0.0, 2.0]])
    behind_wall = np.array([[0.0, 0.0, 3.0]])
    outside = np.array([[10.0, 0.0, 2.0]])
    vis, pix = visible_pixels(np.vstack([on_wall, behind_wall, outside]), T, INTR, depth, tolerance=0.05)
    assert vis.tolist() == [True, False, False]
    assert pix[0] == 24 * 64 + 32 and pix[1] == -1 and pix[2] == -1


def test_bad_intrinsics_are_rejected():
    with pytest.raises(ValueError):
        CameraIntrinsics(0, 48, 50, 50, 1, 1)
    with pytest.raises(ValueError):
        CameraIntrinsics(64, 48, float("nan"), 50, 1, 1)
