"""Tests of the torch ray caster of the SIMULATED rooms (``reasoning_seg.sim.raycast``).

It replaces Open3D where Open3D is missing (the GPU machine that makes pseudo-labels), so a
render made with it must be the same picture: same depth, same instance ids, same colours, up to
float32 rounding at box edges. Open3D is the reference everywhere below.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import open3d as o3d
import pytest

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.sim.raycast import TRIANGLES_PER_BOX, BoxRayCaster, nearest_box_surface
from reasoning_seg.sim.scene import RAYCAST_DEVICE_ENV, RAYCAST_ENV, SceneBox, SyntheticScene

FULL = CameraIntrinsics(640, 480, 570.342205, 570.342205, 320.0, 240.0)
SMALL = FULL.scaled(160, 120)
SEEDS = (0, 3, 7)


@pytest.fixture(scope="module")
def scenes() -> dict[int, SyntheticScene]:
    return {s: SyntheticScene.generate(s) for s in SEEDS}


def _fresh(scene: SyntheticScene) -> SyntheticScene:
    """The same room with an empty cache, so the next render picks its caster from the environment again."""
    return SyntheticScene.from_dict(scene.to_dict())


def _render(
    scene: SyntheticScene,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    pose: np.ndarray,
    intr: CameraIntrinsics = SMALL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    monkeypatch.setenv(RAYCAST_ENV, backend)
    monkeypatch.setenv(RAYCAST_DEVICE_ENV, "cpu")
    s = _fresh(scene)
    out = s.render(intr, pose)
    assert s.raycast_backend == ("open3d" if backend == "open3d" else "torch:cpu")
    return out


def _open3d_cast(
    boxes: list[SceneBox], origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: Open3D on the scene's own triangle mesh of ``boxes``."""
    s = SyntheticScene((10.0, 10.0, 10.0), [])
    s.boxes = lambda: boxes  # type: ignore[method-assign]  # the mesh is built from boxes() alone
    rays = np.hstack([np.broadcast_to(origin, dirs.shape), dirs]).astype(np.float32)
    ans = s.raycasting_scene.cast_rays(o3d.core.Tensor(rays))
    return ans["t_hit"].numpy(), ans["primitive_ids"].numpy().astype(np.int64)


def _random_boxes(rng: np.random.Generator, n: int) -> list[SceneBox]:
    return [
        SceneBox(
            k + 1,
            tuple(rng.uniform([-3, -3, 0], [3, 3, 2])),
            tuple(rng.uniform(0.05, 1.5, 3)),
            float(rng.uniform(-math.pi, math.pi)),
            (100, 100, 100),
        )
        for k in range(n)
    ]


# --- the per-triangle tables: either triangle of a face gives the same pixel ----------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_both_triangles_of_a_face_share_their_table_rows(
    scenes: dict[int, SyntheticScene], seed: int
) -> None:
    tab = scenes[seed]._tables()
    for key in ("instance", "lit_albedo", "normal", "t1", "t2"):
        assert np.array_equal(tab[key][0::2], tab[key][1::2]), key
    # ... and the shared normal is each triangle's own outward normal (the faces are planar).
    v, t = tab["verts"], tab["tris"]
    own = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    np.testing.assert_allclose(tab["normal"], own, atol=1e-6)
    box_centre = np.repeat(v.reshape(-1, 8, 3).mean(axis=1), TRIANGLES_PER_BOX, axis=0)
    assert np.all(np.einsum("ij,ij->i", own, v[t].mean(axis=1) - box_centre) > 0)


# --- whole renders against Open3D --------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_render_matches_open3d(scenes: dict[int, SyntheticScene], seed: int, monkeypatch) -> None:
    scene = scenes[seed]
    for pose in scene.trajectory(12, seed=seed)[::4]:
        c0, d0, i0 = _render(scene, "open3d", monkeypatch, pose)
        c1, d1, i1 = _render(scene, "torch", monkeypatch, pose)
        assert d1.dtype == np.float32 and i1.dtype == np.int32 and c1.dtype == np.uint8
        depth_ok = np.abs(d1 - d0) <= np.maximum(1e-4, 1e-5 * d0)
        assert depth_ok.mean() >= 0.999, depth_ok.mean()
        same = i0 == i1
        assert same.mean() >= 0.999, same.mean()
        # The texture's 1 cm grain is floor() of the hit point: a 1e-6 m difference in depth may
        # flip a grain cell at a handful of pixels; everything else must be identical.
        colour_ok = np.all(c0 == c1, axis=2)[same]
        assert colour_ok.mean() >= 0.999, colour_ok.mean()


def test_full_frame_render_matches_open3d(scenes: dict[int, SyntheticScene], monkeypatch) -> None:
    scene = scenes[3]
    pose = scene.trajectory(8, seed=1)[3]
    c0, d0, i0 = _render(scene, "open3d", monkeypatch, pose, FULL)
    c1, d1, i1 = _render(scene, "torch", monkeypatch, pose, FULL)
    assert np.mean(i0 == i1) >= 0.999
    assert np.mean(np.abs(d1 - d0) <= np.maximum(1e-4, 1e-5 * d0)) >= 0.999
    assert np.all(c0 == c1, axis=2)[i0 == i1].mean() >= 0.999


def test_outside_the_room_looking_away_renders_nothing(
    scenes: dict[int, SyntheticScene], monkeypatch
) -> None:
    scene = scenes[0]
    pose = look_at([-5.0, 2.0, 1.5], [-10.0, 2.0, 1.5])  # behind the -x wall, facing away from it
    for backend in ("open3d", "torch"):
        color, depth, inst = _render(scene, backend, monkeypatch, pose)
        assert not color.any() and not depth.any() and not inst.any(), backend
    # The room seen from far outside its corner: hit and miss pixels mixed, as Open3D has them.
    pose = look_at([-8.0, -8.0, 1.3], [0.0, 0.0, 1.3])
    _, d0, i0 = _render(scene, "open3d", monkeypatch, pose)
    _, d1, i1 = _render(scene, "torch", monkeypatch, pose)
    assert 0.05 < np.mean(i0 == 0) < 0.95
    assert np.mean(i0 == i1) >= 0.999 and np.mean((d0 == 0) == (d1 == 0)) >= 0.999


# --- single rays ------------------------------------------------------------------------------------


def test_a_ray_into_nothing_misses() -> None:
    caster = BoxRayCaster([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], [0.3])
    t, tri = caster.cast([3.0, 0.0, 0.0], np.array([[1, 0, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32))
    assert np.all(np.isinf(t)) and np.all(tri == -1)
    empty = BoxRayCaster(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    t, tri = empty.cast([0, 0, 0], np.ones((4, 3), np.float32))
    assert np.all(np.isinf(t)) and np.all(tri == -1)


def test_axis_aligned_rays_give_exact_faces_and_no_nan() -> None:
    # A 2 x 4 x 6 box at the origin, no yaw: every axis-parallel ray has two zero components.
    caster = BoxRayCaster([[0.0, 0.0, 0.0]], [[2.0, 4.0, 6.0]], [0.0])
    origin = np.array([-5.0, 0.5, 0.5])
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 0, -1], [2, 0, 0], [1, -0.0, 0]], np.float32)
    t, tri = caster.cast(origin, dirs)
    assert not np.isnan(t).any()
    np.testing.assert_allclose(t, [4.0, np.inf, np.inf, np.inf, 2.0, 4.0])  # t is in units of dirs
    assert tri.tolist() == [0, -1, -1, -1, 0, 0]  # the -x face: triangles 0 and 1
    # From each side along each axis, the face hit is that side's face (triangle 4 * axis + 2 * side).
    for axis in range(3):
        for side, sign in ((0, -1.0), (1, 1.0)):
            o = np.zeros(3)
            o[axis] = 10.0 * sign
            d = np.zeros((1, 3), np.float32)
            d[0, axis] = -sign
            t, tri = caster.cast(o, d)
            assert tri[0] == 4 * axis + 2 * side and t[0] == pytest.approx(10.0 - [1, 2, 3][axis])
    # An origin exactly on the plane of a face, ray parallel to it: grazing, but never NaN.
    t, tri = caster.cast([-5.0, 2.0, 0.0], np.array([[1, 0, 0]], np.float32))
    assert not np.isnan(t).any() and (np.isinf(t[0]) or t[0] == pytest.approx(4.0))


def test_an_origin_inside_a_box_hits_its_exit_face() -> None:
    yaw = 0.7
    caster = BoxRayCaster([[1.0, 2.0, 0.5]], [[2.0, 1.0, 1.0]], [yaw])
    c, s = math.cos(yaw), math.sin(yaw)
    ex, ey = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    dirs = np.array([ex, -ex, ey, -ey, [0, 0, 1], [0, 0, -1]], np.float32)
    t, tri = caster.cast([1.0, 2.0, 0.5], dirs)
    np.testing.assert_allclose(t, [1.0, 1.0, 0.5, 0.5, 0.5, 0.5], atol=1e-6)
    assert tri.tolist() == [2, 0, 6, 4, 10, 8]  # +x, -x, +y, -y, +z, -z
    boxes = [SceneBox(1, (1.0, 2.0, 0.5), (2.0, 1.0, 1.0), yaw, (0, 0, 0))]
    rng = np.random.default_rng(1)
    d = rng.normal(size=(500, 3)).astype(np.float32)
    t, tri = caster.cast([1.2, 2.1, 0.4], d)
    t_ref, prim = _open3d_cast(boxes, np.array([1.2, 2.1, 0.4]), d)  # Open3D hits back faces too
    assert np.all(np.isfinite(t))
    np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-6)
    assert np.mean(tri // 2 == prim // 2) >= 0.99


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_rays_on_random_boxes_match_open3d(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 25)
    origin = rng.uniform([-2, -2, 0], [2, 2, 2])  # among the boxes
    dirs = rng.normal(size=(6000, 3)).astype(np.float32) * rng.uniform(0.2, 3.0, (6000, 1)).astype(np.float32)
    caster = BoxRayCaster.from_boxes(boxes, tile_rays=64)
    t, tri = caster.cast(origin, dirs)
    t_ref, prim = _open3d_cast(boxes, origin, dirs)
    hit = np.isfinite(t_ref)
    assert 0.1 < hit.mean() < 0.95  # a mix of hits and misses
    assert np.mean(np.isfinite(t) == hit) >= 0.999
    both = hit & np.isfinite(t)
    close = np.abs(t[both] - t_ref[both]) <= np.maximum(1e-4, 1e-5 * t_ref[both])
    assert close.mean() >= 0.999
    assert np.mean((tri[both] // 2 == prim[both] // 2)[close]) >= 0.999  # same box, same face
    assert np.all(tri[~np.isfinite(t)] == -1)
    # Culling and chunking change the work, never the answer.
    t_dense, tri_dense = BoxRayCaster.from_boxes(boxes, cull=False).cast(origin, dirs)
    np.testing.assert_array_equal(t, t_dense)
    t_small, _ = BoxRayCaster.from_boxes(boxes, max_temp_bytes=4096, tile_rays=7).cast(origin, dirs)
    np.testing.assert_array_equal(t, t_small)


def test_caster_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="box count"):
        BoxRayCaster(np.zeros((2, 3)), np.ones((1, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="positive"):
        BoxRayCaster(np.zeros((1, 3)), [[1.0, 0.0, 1.0]], [0.0])
    caster = BoxRayCaster(np.zeros((1, 3)), np.ones((1, 3)), [0.0])
    with pytest.raises(ValueError, match="origin"):
        caster.cast([0.0, np.nan, 0.0], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="dirs"):
        caster.cast([0.0, 0.0, 0.0], np.ones((3,), np.float32))
    t, tri = caster.cast([5.0, 0, 0], np.array([[np.nan, 0, 0], [-1, 0, 0]], np.float32))
    assert np.isinf(t[0]) and tri[0] == -1 and t[1] == pytest.approx(4.5) and tri[1] == 2


# --- backend selection ------------------------------------------------------------------------------


def test_auto_falls_back_to_torch_without_open3d(scenes: dict[int, SyntheticScene], monkeypatch) -> None:
    scene = scenes[3]
    pose = scene.trajectory(4, seed=0)[1]
    monkeypatch.delenv(RAYCAST_ENV, raising=False)
    monkeypatch.setenv(RAYCAST_DEVICE_ENV, "cpu")
    with_o3d = _fresh(scene)
    c0, d0, i0 = with_o3d.render(SMALL, pose)
    assert with_o3d.raycast_backend == "open3d"  # auto keeps Open3D wherever it imports
    monkeypatch.setitem(sys.modules, "open3d", None)  # `import open3d` now raises ImportError
    without = _fresh(scene)
    c1, d1, i1 = without.render(SMALL, pose)
    assert without.raycast_backend == "torch:cpu"
    assert np.mean(i0 == i1) >= 0.999 and np.mean(np.abs(d0 - d1) <= 1e-4) >= 0.999
    monkeypatch.setenv(RAYCAST_ENV, "open3d")  # asked for explicitly: no silent fallback
    with pytest.raises(ImportError):
        _fresh(scene).render(SMALL, pose)


def test_backend_is_read_from_the_environment(scenes: dict[int, SyntheticScene], monkeypatch) -> None:
    scene = scenes[0]
    monkeypatch.setenv(RAYCAST_ENV, "Torch ")
    monkeypatch.setenv(RAYCAST_DEVICE_ENV, "cpu")
    assert _fresh(scene).raycast_backend == "torch:cpu"
    monkeypatch.setenv(RAYCAST_ENV, "optix")
    with pytest.raises(ValueError, match=RAYCAST_ENV):
        _fresh(scene).render(SMALL, np.eye(4))
    # The choice is made once per scene: a later change of the variable does not switch it midway.
    monkeypatch.setenv(RAYCAST_ENV, "open3d")
    s = _fresh(scene)
    assert s.raycast_backend == "open3d"
    monkeypatch.setenv(RAYCAST_ENV, "torch")
    assert s.raycast_backend == "open3d"


@pytest.mark.parametrize("seed", SEEDS)
def test_ground_truth_labels_without_open3d_match_the_mesh_query(
    scenes: dict[int, SyntheticScene], seed: int, monkeypatch
) -> None:
    """``label_points`` (how 3D masks are scored) gives Open3D's answer from the boxes alone."""
    scene = scenes[seed]
    pose = scene.trajectory(8, seed=seed)[3]
    _, depth, _ = _render(scene, "open3d", monkeypatch, pose)
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    cam = np.stack([(u - SMALL.cx) * z / SMALL.fx, (v - SMALL.cy) * z / SMALL.fy, z], axis=1)
    surface = cam @ pose[:3, :3].T + pose[:3, 3]
    rng = np.random.default_rng(seed)
    pts = np.vstack([surface + rng.normal(0, 0.03, surface.shape), rng.uniform(-1, 6, (500, 3))])
    pts[0] = np.nan
    monkeypatch.setenv(RAYCAST_ENV, "open3d")
    ref = _fresh(scene).label_points(pts, max_distance=0.05)
    monkeypatch.setenv(RAYCAST_ENV, "torch")
    monkeypatch.setenv(RAYCAST_DEVICE_ENV, "cpu")
    got = _fresh(scene).label_points(pts, max_distance=0.05)
    assert got[0] == 0 and (ref > 0).mean() > 0.5
    assert (got == ref).mean() > 0.95
    # Every disagreement is a tie: the box Open3D named is exactly as close as the one chosen
    # (coplanar faces of an object flush on the floor or against a wall).
    boxes = scene.boxes()
    ids = np.array([b.instance_id for b in boxes])
    bad = np.flatnonzero(got != ref)
    for i in bad:
        d_all = [nearest_box_surface(pts[i], b.center, b.size, b.yaw)[0][0] for b in boxes]
        d_all = np.array(d_all)
        d_ref = d_all[ids == ref[i]].min() if ref[i] else np.inf
        d_got = d_all[ids == got[i]].min() if got[i] else np.inf
        near = min(d_ref, d_got)
        assert abs(d_ref - d_got) < 1e-5 or (near > 0.05 - 1e-5 and near < 0.05 + 1e-5), (i, d_ref, d_got)
