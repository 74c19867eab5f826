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
