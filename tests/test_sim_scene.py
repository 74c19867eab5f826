"""Tests of the simulated room: its renders must be exact ground truth, its queries unambiguous.

Everything downstream (fusion accuracy, 3D mask scores) is measured against this simulator, so a
silent error here (range instead of z-depth, a mislabelled pixel, an ambiguous query) would make
every later benchmark wrong without failing anything else.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from reasoning_seg.camera import (
    CameraIntrinsics,
    invert_transform,
    is_rigid_transform,
    look_at,
    transform_points,
)
from reasoning_seg.sim.scene import (
    AFFORDANCE_PHRASES,
    CATEGORY_AFFORDANCES,
    QUERY_KINDS,
    SIDE_DEPTH,
    SIDE_MARGIN,
    SIDE_RANGE,
    SPATIAL_MARGIN,
    ObjectSpec,
    QueryPredicate,
    SceneQuery,
    SyntheticScene,
    apply_depth_noise,
    simulate_pose_drift,
)

FULL = CameraIntrinsics(640, 480, 570.342205, 545.0, 326.0, 231.0)  # Kinect-like; fx != fy, off-centre
SMALL = FULL.scaled(160, 120)
MEDIUM = FULL.scaled(320, 240)
SEEDS = tuple(range(10))


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene.generate(3)


@pytest.fixture(scope="module")
def poses(scene: SyntheticScene) -> list[np.ndarray]:
    return scene.trajectory(24, seed=1)


def _door(scene: SyntheticScene) -> ObjectSpec:
    (door,) = [o for o in scene.objects if o.category == "door"]
    return door


# --- independent geometry (written here, not taken from the module under test) -----------------


def _local(box_center, yaw: float, xy) -> tuple[float, float]:
    """World xy -> coordinates along a yawed box's local x and y."""
    dx, dy = xy[0] - box_center[0], xy[1] - box_center[1]
    return dx * math.cos(yaw) + dy * math.sin(yaw), -dx * math.sin(yaw) + dy * math.cos(yaw)


def _stands_on(scene: SyntheticScene, a: ObjectSpec, b: ObjectSpec) -> bool:
    """True when a's bottom touches the top face of one of b's world boxes right under a's centre."""
    if a.instance_id == b.instance_id:
        return False
    for box in scene.boxes():
        if box.instance_id != b.instance_id:
            continue
        u, v = _local(box.center, box.yaw, a.center)
        top = box.center[2] + box.size[2] / 2
        if (
            abs(a.bottom - top) < 0.01
            and abs(u) <= box.size[0] / 2 + 1e-9
            and abs(v) <= box.size[1] / 2 + 1e-9
        ):
            return True
    return False


def _front(o: ObjectSpec) -> np.ndarray:
    """The documented front: the object's local +y after its yaw."""
    return np.array([-math.sin(o.yaw), math.cos(o.yaw)])


def _has_front(scene: SyntheticScene, o: ObjectSpec) -> bool:
    if o.category in FRONTED:
        return True
    if o.category != "table":
        return False
    f = _front(o)
    if min(abs(f[0]), abs(f[1])) > math.sin(0.1):  # not square to the walls
        return False
    back_mid = np.array(o.center[:2]) - f * o.size[1] / 2
    lx, ly, _ = scene.room_size
    # distance from the back edge's middle to the room boundary, walking backwards
    t = min(
        (bound - back_mid[i]) / -f[i]
        for i, bound in ((0, 0.0), (0, lx), (1, 0.0), (1, ly))
        if abs(f[i]) > 1e-9 and (bound - back_mid[i]) / -f[i] > -1e-9
    )
    return t <= 0.15 + 1e-9


def _beside(scene: SyntheticScene, c: ObjectSpec, anchor: ObjectSpec, side: str) -> float:
    """Slack of "c is on the <side> of anchor", from the camera of a person standing in front of it.

    The person stands 2 m in front of the anchor and looks at it (camera x = their right): the
    candidate's offset to their left is -x_cam, its offset in front of the anchor is 2 - z_cam.
    """
    f = _front(anchor)
    eye = np.array([anchor.center[0] + 2 * f[0], anchor.center[1] + 2 * f[1], anchor.center[2]])
    cam = transform_points(invert_transform(look_at(eye, anchor.center)), np.array([c.center]))[0]
    to_left, ahead = -cam[0], 2.0 - cam[2]
    if (
        abs(_local(c.center, c.yaw, anchor.center)[0]) <= c.size[0] / 2
        and abs(_local(c.center, c.yaw, anchor.center)[1]) <= c.size[1] / 2
    ):
        return -math.inf  # the anchor stands on / inside it: not beside it
    s = to_left if side == "left" else -to_left
    hx, hy = anchor.size[0] / 2, anchor.size[1] / 2
    return min(s - hx, hx + SIDE_RANGE - s, hy + SIDE_DEPTH - abs(ahead))


FRONTED = {"chair", "sofa", "shelf", "cabinet", "monitor", "laptop", "keyboard", "printer", "door", "window"}


# --- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_layout_has_the_requested_furniture_without_interpenetration(seed: int) -> None:
    s = SyntheticScene.generate(seed)
    lx, ly, h = s.room_size
    assert 4.5 <= lx <= 5.5 and 3.5 <= ly <= 4.5 and h == pytest.approx(2.6)
    counts = Counter(o.category for o in s.objects)
    assert counts["floor"] == 1 and counts["wall"] == 4 and counts["door"] == 1 and counts["window"] == 1
    assert counts["table"] == 2 and 2 <= counts["chair"] <= 4 and counts["bin"] == 2
    assert 2 <= counts["cup"] <= 3 and 2 <= counts["book"] <= 5
    for cat in ("sofa", "shelf", "monitor", "lamp", "plant"):
        assert counts[cat] == 1, cat
    for cat in ("cabinet", "keyboard", "laptop", "printer", "scissors"):  # optional pieces
        assert counts[cat] <= 1, cat
    assert [o.instance_id for o in s.objects] == list(range(1, len(s.objects) + 1))
    assert s.interpenetrations() == []

    by_id = {o.instance_id: o for o in s.objects}
    for o in s.furnished_objects:
        # inside the room, and standing on the floor or on a part of another object (nothing floats)
        c, sn = math.cos(o.yaw), math.sin(o.yaw)
        for du, dv in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            u, v = du * o.size[0] / 2, dv * o.size[1] / 2
            x, y = o.center[0] + c * u - sn * v, o.center[1] + sn * u + c * v
            assert -1e-9 <= x <= lx + 1e-9 and -1e-9 <= y <= ly + 1e-9, o
        assert -1e-9 <= o.bottom and o.top <= h
        supports = [b.category for b in by_id.values() if _stands_on(s, o, b)]
        assert abs(o.bottom) < 1e-9 or supports, o
        if o.category in ("monitor", "cup", "keyboard", "laptop", "scissors"):
            assert supports == ["table"], (o.category, supports)
        if o.category == "printer":
            assert supports in (["table"], ["cabinet"]), supports
        if o.category == "book":
            assert supports in (["table"], ["cabinet"], ["shelf"]), supports
    # every part of every object stays inside the object's bounding box
    for b in s.boxes():
        o = by_id[b.instance_id]
        corners = [
            (b.center[0] + du * b.size[0] / 2 * math.cos(b.yaw) - dv * b.size[1] / 2 * math.sin(b.yaw),
             b.center[1] + du * b.size[0] / 2 * math.sin(b.yaw) + dv * b.size[1] / 2 * math.cos(b.yaw))
            for du in (-1, 1) for dv in (-1, 1)
        ]  # fmt: skip
        assert all(o.contains_xy(xy, tol=1e-6) for xy in corners), o.category
        assert o.bottom - 1e-6 <= b.center[2] - b.size[2] / 2 and b.center[2] + b.size[2] / 2 <= o.top + 1e-6


def test_catalogue_appears_across_seeds() -> None:
    """Over ten rooms every new category shows up and several are sometimes missing.

    Spatial reasoning is needed because several instances of the same category stand in every room.
    """
    scenes = [SyntheticScene.generate(seed) for seed in range(10)]
    present = Counter(cat for s in scenes for cat in {o.category for o in s.objects})
    for cat in ("book", "printer", "scissors", "laptop", "cabinet", "keyboard", "cup"):
        assert present[cat] >= 3, (cat, present[cat])
    assert any(present[cat] < 10 for cat in ("printer", "scissors", "laptop", "cabinet"))
    for s in scenes:
        counts = Counter(o.category for o in s.objects)
        assert all(counts[cat] >= 2 for cat in ("chair", "bin", "cup", "book", "table")), counts
        for o in s.objects:
            assert o.affordances == list(CATEGORY_AFFORDANCES.get(o.category, ())), o
    assert CATEGORY_AFFORDANCES["book"] == ("read",) and CATEGORY_AFFORDANCES["printer"] == ("print",)
    assert "cut with" in CATEGORY_AFFORDANCES["scissors"]
    assert AFFORDANCE_PHRASES["cut with"] == "something I can use to cut this paper"
    assert {"type on", "browse the web on"} <= set(CATEGORY_AFFORDANCES["laptop"])
    assert "store in" in CATEGORY_AFFORDANCES["cabinet"]


@pytest.mark.parametrize("seed", (0, 3, 7))
def test_part_builders_put_the_front_at_local_plus_y(seed: int) -> None:
    """The geometry agrees with the documented front (local +y), which "on the left of" relies on."""
    s = SyntheticScene.generate(seed)
    by_id = {o.instance_id: o for o in s.objects}
    parts: dict[int, list] = {}
    for b in s.boxes():
        parts.setdefault(b.instance_id, []).append(b)

    def local_y(o: ObjectSpec, b) -> float:
        return _local(o.center, o.yaw, b.center)[1]

    for o in by_id.values():
        ps = parts[o.instance_id]
        if o.category in ("chair", "sofa"):  # the backrest is the part reaching highest, at the back
            top = max(ps, key=lambda b: b.center[2] + b.size[2] / 2)
            assert local_y(o, top) < -0.1 * o.size[1], o.category
        if o.category == "shelf":  # the back panel: the thin full-width full-height part, at -y
            back = min(
                ps,
                key=lambda b: b.size[1] if b.size[2] > 0.9 * o.size[2] and b.size[0] > 0.5 * o.size[0] else 9,
            )
            assert local_y(o, back) < -0.4 * o.size[1]
        if o.category in ("cabinet", "printer"):  # handles / output tray stick out at the front
            body = max(ps, key=lambda b: b.size[0] * b.size[1] * b.size[2])
            front_most = max(ps, key=lambda b: local_y(o, b) + b.size[1] / 2)
            assert front_most is not body and local_y(o, body) < 0, o.category
            assert local_y(o, front_most) + front_most.size[1] / 2 == pytest.approx(o.size[1] / 2, abs=1e-6)
        if o.category in ("monitor", "laptop"):  # the (thin, tall) screen is in front of its panel / lid
            screen = next(b for b in ps if b.size[1] < 0.006 and b.size[2] > 0.1)
            panel = max(ps, key=lambda b: b.size[2] * b.size[0])
            assert local_y(o, screen) > local_y(o, panel), o.category
        if o.category in ("door", "window") or (o.category == "table" and _has_front(s, o)):
            inward = np.array(o.center[:2]) + 0.5 * _front(o)  # the front faces into the room
            lx, ly, _ = s.room_size
            assert 0 < inward[0] < lx and 0 < inward[1] < ly, o.category
    desk_ids = [o.instance_id for o in by_id.values() if o.category == "table" and _has_front(s, o)]
    assert desk_ids, "the desk with the monitor stands against a wall"
    for o in by_id.values():
        assert (s.facing(o) is not None) == _has_front(s, o), o


def test_interpenetration_check_detects_overlap() -> None:
    a = ObjectSpec(1, "box", "red", (255, 0, 0), (0, 0, 0.5), (1, 1, 1))
    touching = ObjectSpec(2, "box", "red", (255, 0, 0), (1.0, 0, 0.5), (1, 1, 1), yaw=0.0)
    rotated = ObjectSpec(3, "box", "red", (255, 0, 0), (0.0, 1.2, 0.5), (1, 1, 1), yaw=math.pi / 4)
    assert SyntheticScene((5, 5, 3), [a, touching]).interpenetrations() == []
    assert SyntheticScene((5, 5, 3), [a, rotated]).interpenetrations() == [(1, 3)]  # corner pokes in


def test_generation_is_reproducible(scenes: dict[int, SyntheticScene]) -> None:
    a, b = SyntheticScene.generate(11), SyntheticScene.generate(11)
    assert a == b and a.to_dict() == b.to_dict()
    assert SyntheticScene.generate(12).to_dict() != a.to_dict()
    pose = a.trajectory(5, seed=2)[3]
    for x, y in zip(a.render(SMALL, pose), b.render(SMALL, pose), strict=True):
        assert np.array_equal(x, y)
    for x, y in zip(a.trajectory(5, seed=2), b.trajectory(5, seed=2), strict=True):
        assert np.array_equal(x, y)
    # every seed: the same room and the same queries again, and no two seeds give the same room
    docs = [json.dumps(scenes[seed].to_dict(), sort_keys=True) for seed in SEEDS]
    assert len(set(docs)) == len(SEEDS)
    for seed in SEEDS[::3]:
        assert json.dumps(SyntheticScene.generate(seed).to_dict(), sort_keys=True) == docs[SEEDS.index(seed)]


# --- rendering ---------------------------------------------------------------------------------


def test_render_outputs(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    color, depth, inst = scene.render(FULL, poses[0])
    assert color.shape == (480, 640, 3) and color.dtype == np.uint8
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    assert inst.shape == (480, 640) and inst.dtype == np.int32
    assert np.all(inst > 0) and np.all(depth > 0)  # a closed room: every ray hits something
    assert depth.max() < math.hypot(*scene.room_size)
    assert set(np.unique(inst)) <= {o.instance_id for o in scene.objects}
    # shading + texture: a single object's pixels are not one flat colour
    largest = Counter(inst.ravel().tolist()).most_common(1)[0][0]
    assert color[inst == largest].std(axis=0).max() > 3.0
    with pytest.raises(ValueError):
        scene.render(SMALL, np.diag([2.0, 1.0, 1.0, 1.0]))


def test_depth_is_z_depth_not_ray_range() -> None:
    # a camera at the origin looking along +x at a wall 3 m away: z-depth is 3 m at every pixel,
    # whereas the range along off-axis rays grows towards the image corners.
    wall = ObjectSpec(1, "wall", "white", (200, 200, 200), (3.05, 0.0, 0.0), (0.1, 40.0, 40.0))
    s = SyntheticScene((10.0, 10.0, 10.0), [wall])
    pose = look_at([0.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    _, depth, inst = s.render(SMALL, pose)
    assert np.all(inst == 1)
    np.testing.assert_allclose(depth, 3.0, atol=1e-5)


def test_depth_equals_z_of_the_unit_ray_hit(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    pose = poses[5]
    _, depth, _ = scene.render(MEDIUM, pose)
    rng = np.random.default_rng(0)
    v, u = rng.integers(0, MEDIUM.height, 200), rng.integers(0, MEDIUM.width, 200)
    d_cam = MEDIUM.pixel_rays()[v, u]
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    d_world = d_cam @ pose[:3, :3].T
    rays = np.hstack([np.broadcast_to(pose[:3, 3], d_world.shape), d_world]).astype(np.float32)
    r = scene.raycasting_scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()  # metres along the ray
    np.testing.assert_allclose(depth[v, u], r * d_cam[:, 2], rtol=1e-5, atol=1e-5)


def test_unprojected_depth_labels_back_to_rendered_instances(
    scene: SyntheticScene, poses: list[np.ndarray]
) -> None:
    for pose in poses[::8]:
        _, depth, inst = scene.render(MEDIUM, pose)
        pts_cam, idx = MEDIUM.unproject(depth)
        labels = scene.label_points(transform_points(pose, pts_cam), max_distance=0.02)
        agree = np.mean(labels == inst.reshape(-1)[idx])
        assert idx.size == depth.size and agree > 0.99, agree


def _front_face_view(o: ObjectSpec, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """(point, eye): a point on the largest face looking out of the object's front, and a camera 0.6 m out."""

    def front_y(b) -> float:
        return _local(o.center, o.yaw, b.center)[1] + b.size[1] / 2

    facing_out = [b for b in parts if front_y(b) > o.size[1] / 2 - 0.03]
    b = max(facing_out, key=lambda b: b.size[0] * b.size[2])
    f = np.array([*_front(o), 0.0])
    along = np.array([math.cos(o.yaw), math.sin(o.yaw), 0.0])
    point = np.array(b.center) + f * b.size[1] / 2 + along * 0.25 * b.size[0] + [0.0, 0.0, 0.2 * b.size[2]]
    return point, point + 0.6 * f


def _top_face_view(
    o: ObjectSpec, parts: list, loads: list[ObjectSpec]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(point, eye): a point on the object's top face clear of what stands on it, seen from above."""
    top = max(b.center[2] + b.size[2] / 2 for b in parts)
    # the widest part reaching the object's top: its top face is free from above
    at_top = [b for b in parts if b.center[2] + b.size[2] / 2 > top - 1e-6]
    b = max(at_top, key=lambda b: b.size[0] * b.size[1])
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    for fu in (0.25, -0.25, 0.4, -0.4, 0.1, -0.1):
        for fv in (0.25, -0.25, 0.4, -0.4, 0.0):  # off-centre, away from things standing on it
            lu, lv = fu * b.size[0], fv * b.size[1]
            point = np.array([b.center[0] + c * lu - s * lv, b.center[1] + s * lu + c * lv, top])
            if not any(lo.contains_xy(point[:2], tol=0.08) for lo in loads):
                toward_centre = np.array([b.center[0], b.center[1], 0.0]) - [point[0], point[1], 0.0]
                return point, point + [0.0, 0.0, 0.5] - 0.1 * toward_centre
    return None


def test_point_on_a_face_projects_to_that_instance(scene: SyntheticScene) -> None:
    boxes = scene.boxes()
    by_id = {o.instance_id: o for o in scene.objects}
    for o in scene.furnished_objects:
        parts = [b for b in boxes if b.instance_id == o.instance_id]
        loads = [lo for lo in by_id.values() if _stands_on(scene, lo, o)]
        on_shelf = any(_stands_on(scene, o, b) for b in by_id.values() if b.category == "shelf")
        # a board above hides the top of a book on a shelf, things may cover a cabinet: use the front
        view = None if on_shelf else _top_face_view(o, parts, loads)
        point, eye = view if view is not None else _front_face_view(o, parts)
        pose = look_at(eye, point)
        _, depth, inst = scene.render(SMALL, pose)
        uv, z = SMALL.project(transform_points(invert_transform(pose), point[None]))
        col, row = np.rint(uv[0]).astype(int)
        assert inst[row, col] == o.instance_id, o.category
        assert depth[row, col] == pytest.approx(z[0], abs=2e-3)


def test_full_resolution_render_is_exact_geometry(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    """Every depth pixel unprojects onto the mesh (sub-millimetre), onto the instance it was labelled with."""
    for pose in poses[1::12]:
        _, depth, inst = scene.render(FULL, pose)
        pts_cam, idx = FULL.unproject(depth)
        world = transform_points(pose, pts_cam)
        dist = scene.raycasting_scene.compute_distance(o3d.core.Tensor(world.astype(np.float32))).numpy()
        assert np.mean(dist < 1e-3) > 0.999, np.percentile(dist, 99.9)
        labels = scene.label_points(world, max_distance=0.01)
        assert np.mean(labels == inst.reshape(-1)[idx]) > 0.99
        # and back: the points project onto the pixels they came from, at the depth they came from
        uv, z = FULL.project(transform_points(invert_transform(pose), world))
        rows, cols = np.divmod(idx, FULL.width)
        np.testing.assert_allclose(uv, np.stack([cols, rows], axis=1), atol=1e-3)
        np.testing.assert_allclose(z, depth.reshape(-1)[idx], rtol=1e-5)


def test_projection_round_trip_through_rendered_frames(
    scene: SyntheticScene, poses: list[np.ndarray]
) -> None:
    pose_a, pose_b = poses[2], poses[4]
    _, depth_a, inst_a = scene.render(MEDIUM, pose_a)
    _, depth_b, inst_b = scene.render(MEDIUM, pose_b)
    pts_cam, idx = MEDIUM.unproject(depth_a)
    world = transform_points(pose_a, pts_cam)

    # back into the same camera: the original pixel centres
    uv, _ = MEDIUM.project(transform_points(invert_transform(pose_a), world))
    rows, cols = np.divmod(idx, MEDIUM.width)
    np.testing.assert_allclose(uv, np.stack([cols, rows], axis=1), atol=1e-3)

    # into another view: where the point is visible there, it has the same instance id
    uv_b, z_b = MEDIUM.project(transform_points(invert_transform(pose_b), world))
    col, row = np.rint(uv_b[:, 0]), np.rint(uv_b[:, 1])
    ok = np.isfinite(col) & (col >= 0) & (col < MEDIUM.width) & (row >= 0) & (row < MEDIUM.height)
    col, row = col[ok].astype(int), row[ok].astype(int)
    visible = np.abs(depth_b[row, col] - z_b[ok]) < 0.01
    assert visible.sum() > 0.2 * idx.size
    same = inst_b[row, col][visible] == inst_a.reshape(-1)[idx][ok][visible]
    assert same.mean() > 0.98


def test_label_points_distance_threshold(scene: SyntheticScene) -> None:
    lx, ly, h = scene.room_size
    floor_id = next(o.instance_id for o in scene.objects if o.category == "floor")
    pts = np.array(
        [[0.7 * lx, 0.5 * ly, 0.03], [0.5 * lx, 0.5 * ly, h - 0.6], [np.nan, 0.0, 0.0], [lx / 2, ly / 2, 0.0]]
    )
    labels = scene.label_points(pts, max_distance=0.05)
    assert labels.dtype == np.int32
    assert labels[2] == 0 and labels[3] == floor_id and labels[1] == 0
    assert scene.label_points(np.zeros((0, 3))).shape == (0,)


# --- trajectory --------------------------------------------------------------------------------


def test_trajectory_is_a_smooth_handheld_loop(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    lx, ly, _ = scene.room_size
    eyes = np.array([pose[:3, 3] for pose in poses])
    assert len(poses) == 24 and all(is_rigid_transform(pose) for pose in poses)
    assert np.all((eyes[:, 2] >= 1.3) & (eyes[:, 2] <= 1.6))
    assert np.all((eyes[:, 0] > 0.5) & (eyes[:, 0] < lx - 0.5) & (eyes[:, 1] > 0.5) & (eyes[:, 1] < ly - 0.5))
    axes = np.array([pose[:3, 2] for pose in poses])
    assert np.all(axes[:, 2] < -0.05) and np.all(axes[:, 2] > -0.6)  # looking slightly down
    # smooth: at a denser sampling of the same loop, consecutive frames differ by a little
    dense = scene.trajectory(120, seed=1)
    eyes_d = np.array([pose[:3, 3] for pose in dense])
    axes_d = np.array([pose[:3, 2] for pose in dense])
    steps = np.linalg.norm(np.diff(eyes_d, axis=0), axis=1)
    assert 0.01 < steps.min() and steps.max() < 0.12
    turn = np.degrees(np.arccos(np.clip(np.sum(axes_d[1:] * axes_d[:-1], axis=1), -1, 1)))
    assert turn.max() < 10.0  # scales with 1 / n_frames: under 1 degree per frame for a 1200-frame scan
    # never inside or grazing furniture (a depth camera sees nothing nearer than ~0.4 m)
    closest = scene.raycasting_scene.compute_closest_points(o3d.core.Tensor(eyes.astype(np.float32)))
    assert np.linalg.norm(closest["points"].numpy() - eyes, axis=1).min() > 0.3
    assert all(np.array_equal(a, b) for a, b in zip(poses, scene.trajectory(24, seed=1), strict=True))


def test_every_furnished_object_is_seen_from_several_views(
    scene: SyntheticScene, poses: list[np.ndarray]
) -> None:
    views: Counter[int] = Counter()
    for pose in poses:
        ids, counts = np.unique(scene.render(MEDIUM, pose)[2], return_counts=True)
        views.update(int(i) for i, c in zip(ids, counts, strict=True) if c >= 10)
    for o in scene.furnished_objects:
        assert views[o.instance_id] >= 3, (o.category, views[o.instance_id])


# --- queries -----------------------------------------------------------------------------------

SURROUNDING = {"floor", "ceiling", "wall"}


def _brute_force(scene: SyntheticScene, p: QueryPredicate) -> list[int]:
    """Independent (loop-by-loop) evaluation of the predicate forms the generator uses.

    Relations are recomputed from the geometry here: "on" from the world part boxes, "left / right"
    from the camera of a person standing in front of the anchor, "closest" from centre distances.
    Every margin the module promises is asserted on the way.
    """
    c = [
        o
        for o in scene.objects
        if p.category in (None, o.category)
        and p.color_name in (None, o.color_name)
        and (p.affordance is None or p.affordance in o.affordances)
    ]
    if p.on is not None:
        c = [o for o in c if any(_stands_on(scene, o, scene.object(i)) for i in _brute_force(scene, p.on))]
    if p.supports is not None:
        c = [
            o
            for o in c
            if any(_stands_on(scene, scene.object(i), o) for i in _brute_force(scene, p.supports))
        ]
    for side, anchor_p in (("left", p.left_of), ("right", p.right_of)):
        if anchor_p is None:
            continue
        (anchor_id,) = _brute_force(scene, anchor_p)
        a = scene.object(anchor_id)
        assert _has_front(scene, a), a
        kept = []
        for o in c:
            if o.instance_id == anchor_id or o.category in SURROUNDING:
                continue
            slack = _beside(scene, o, a, side)
            assert abs(slack) >= SIDE_MARGIN - 1e-9, (o, slack)  # nobody on the border
            if slack > 0:
                kept.append(o)
        c = kept
    anchor_p = p.nearest_to or p.farthest_from
    if anchor_p is not None:
        (anchor_id,) = _brute_force(scene, anchor_p)
        a = scene.object(anchor_id)
        dist = {o.instance_id: math.dist(o.center[:2], a.center[:2]) for o in c if o.instance_id != anchor_id}
        sign = 1 if p.nearest_to is not None else -1
        order = sorted(dist, key=lambda i: sign * dist[i])
        if len(order) >= 2:
            assert abs(dist[order[1]] - dist[order[0]]) >= SPATIAL_MARGIN
        c = [scene.object(order[0])]
    return sorted(o.instance_id for o in c)


def _names(text: str, category: str) -> bool:
    return re.search(rf"\b{re.escape(category)}(e?s)?\b", text) is not None


@pytest.fixture(scope="module")
def scenes() -> dict[int, SyntheticScene]:
    return {seed: SyntheticScene.generate(seed) for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_every_query_singles_out_its_target(seed: int, scenes: dict[int, SyntheticScene]) -> None:
    s = scenes[seed]
    kinds = Counter(q.kind for q in s.queries)
    assert set(kinds) == set(QUERY_KINDS), kinds
    assert 3 <= kinds["absent"] <= 6
    assert [q.kind for q in s.queries] == sorted((q.kind for q in s.queries), key=QUERY_KINDS.index)
    assert len({q.text for q in s.queries}) == len(s.queries)
    ids = {o.instance_id for o in s.objects}
    for q in s.queries:
        assert s.query_is_unique(q), q
        if q.kind == "absent":
            assert q.target_instance_id == 0 and s.select(q.predicate) == [], q
            assert _brute_force(s, q.predicate) == [], q
            continue
        assert q.target_instance_id in ids, q
        assert _brute_force(s, q.predicate) == [q.target_instance_id], q
        target = s.object(q.target_instance_id)
        if q.kind != "explicit" and q.predicate.nested():  # the relation is what disambiguates
            assert len(s.select(q.predicate.without_relations())) >= 2, q
        if q.kind == "spatial":
            assert q.predicate.nested() and q.predicate.category == target.category, q
        if q.kind == "explicit":
            assert _names(q.text, target.category), q
        if q.kind == "no_name":
            assert q.predicate.category is None and not _names(q.text, target.category), q
            assert re.search(r"\b(object|thing)\b", q.text), q
            assert target.category not in SURROUNDING


@pytest.mark.parametrize("seed", SEEDS)
def test_left_and_right_queries_match_what_a_person_in_front_sees(
    seed: int, scenes: dict[int, SyntheticScene]
) -> None:
    s = scenes[seed]
    sided = [
        q for q in s.queries if q.predicate is not None and (q.predicate.left_of or q.predicate.right_of)
    ]
    for q in sided:
        side = "left" if q.predicate.left_of is not None else "right"
        (anchor_id,) = s.select(q.predicate.left_of or q.predicate.right_of)
        anchor, target = s.object(anchor_id), s.object(q.target_instance_id)
        assert f"on the {side} of" in q.text
        assert _beside(s, target, anchor, side) >= SIDE_MARGIN, q
        assert s.side_of(target, anchor, side) == pytest.approx(_beside(s, target, anchor, side), abs=1e-9)


def test_query_kinds_cover_the_benchmark_across_seeds(scenes: dict[int, SyntheticScene]) -> None:
    texts = [q.text for s in scenes.values() for q in s.queries]
    sided = [t for t in texts if " on the left of " in t or " on the right of " in t]
    assert len(sided) >= 5 * len(scenes)
    cups_by_monitor = [
        t for t in texts if re.fullmatch(r"the (\w+ )?cup on the (left|right) of the monitor", t)
    ]
    assert len(cups_by_monitor) >= len(scenes) // 2, cups_by_monitor
    assert any(re.fullmatch(r"the chair on the (left|right) of the .*table.*", t) for t in texts)
    assert any(t.startswith("the object closest to the door that you can") for t in texts)
    assert any(re.fullmatch(r"the \w+ object on the (left|right) of the monitor", t) for t in texts)
    assert any(
        t.startswith("the thing on the table by the") or t.startswith("the thing on the") for t in texts
    )
    absent = [q for s in scenes.values() for q in s.queries if q.kind == "absent"]
    assert len({q.text for q in absent}) >= 10
    # the honest hard case: "something I can use to cut this paper" in a room without scissors
    for s in scenes.values():
        cut = [q for q in s.queries if q.text == "something I can use to cut this paper"]
        has_scissors = any(o.category == "scissors" for o in s.objects)
        assert all(q.kind == ("affordance" if has_scissors else "absent") for q in cut)
    assert any(q.text == "something I can use to cut this paper" for q in absent)


def test_demo_and_pipeline_pickers_still_find_furniture_queries(scenes: dict[int, SyntheticScene]) -> None:
    """The picks other modules make (one query per kind over furniture) never land on an absent query."""
    s = scenes[3]
    furniture = {o.instance_id for o in s.objects if not o.is_structure}
    for kind in ("explicit", "affordance", "spatial", "no_name"):
        q = next(q for q in s.queries if q.kind == kind and q.target_instance_id in furniture)
        assert q.target_instance_id > 0
    assert next(q for q in s.queries if q.kind == "spatial").text == "the bin closest to the door"


@pytest.mark.parametrize("seed", SEEDS)
def test_the_bin_closest_to_the_door_is_generated_and_correct(
    seed: int, scenes: dict[int, SyntheticScene]
) -> None:
    s = scenes[seed]
    door = _door(s)
    bins = [o for o in s.objects if o.category == "bin"]
    assert len(bins) == 2 and bins[0].color_name == bins[1].color_name  # only space tells them apart
    dist = sorted((math.dist(b.center[:2], door.center[:2]), b.instance_id) for b in bins)
    assert dist[1][0] - dist[0][0] >= SPATIAL_MARGIN
    by_text = {q.text: q for q in s.queries}
    assert by_text["the bin closest to the door"].target_instance_id == dist[0][1]
    assert by_text["the bin farthest from the door"].target_instance_id == dist[1][1]
    wrapper = by_text["somewhere to throw away this wrapper, whichever is closest to the door"]
    assert wrapper.target_instance_id == dist[0][1]


def test_ambiguous_descriptions_select_nothing_unique(scene: SyntheticScene) -> None:
    assert len(scene.select(QueryPredicate(category="wall"))) == 4
    assert len(scene.select(QueryPredicate(affordance="throw away"))) == 2
    assert scene.select(QueryPredicate(category="unicorn")) == []
    # anchor must be unique: "closest to the wall" is meaningless
    assert scene.select(QueryPredicate(category="bin", nearest_to=QueryPredicate(category="wall"))) == []
    assert scene.select(QueryPredicate(category="bin", left_of=QueryPredicate(category="chair"))) == []
    bogus = SceneQuery("the chair", 1, "explicit", QueryPredicate(category="chair"))
    assert not scene.query_is_unique(bogus)
    with pytest.raises(ValueError):
        SceneQuery("x", 1, "vague")
    with pytest.raises(ValueError):
        door = QueryPredicate(category="door")
        QueryPredicate(nearest_to=door, farthest_from=door)
    with pytest.raises(ValueError):
        QueryPredicate(left_of=door, right_of=door)


def test_absent_queries_have_target_zero_and_nothing_else_does(scene: SyntheticScene) -> None:
    piano = QueryPredicate(category="piano")
    q = SceneQuery("the piano", 0, "absent", piano)
    assert q.is_absent and scene.query_is_unique(q)
    assert SceneQuery.from_dict(q.to_dict()) == q
    with pytest.raises(ValueError):
        SceneQuery("the piano", 3, "absent", piano)  # an absent query has no target
    for kind in ("explicit", "affordance", "spatial", "no_name"):
        with pytest.raises(ValueError):
            SceneQuery("the piano", 0, kind, piano)
    # "absent" is only true when nothing matches
    present = next(o for o in scene.objects if o.category == "sofa")
    assert not scene.query_is_unique(SceneQuery("the sofa", 0, "absent", QueryPredicate(category="sofa")))
    assert scene.query_is_unique(
        SceneQuery("the sofa", present.instance_id, "explicit", QueryPredicate(category="sofa"))
    )
    assert not scene.query_is_unique(SceneQuery("the piano", 0, "absent", None))


def test_a_tie_is_not_a_superlative() -> None:
    obj = [
        ObjectSpec(1, "door", "white", (255, 255, 255), (0.0, 0.0, 1.0), (0.9, 0.04, 2.0)),
        ObjectSpec(2, "bin", "grey", (128, 128, 128), (1.0, 0.0, 0.2), (0.3, 0.3, 0.4)),
        ObjectSpec(3, "bin", "grey", (128, 128, 128), (0.0, 1.0 + SPATIAL_MARGIN / 2, 0.2), (0.3, 0.3, 0.4)),
    ]
    s = SyntheticScene((5, 5, 3), obj)
    assert s.select(QueryPredicate(category="bin", nearest_to=QueryPredicate(category="door"))) == []
    s.objects[2].center = (0.0, 1.0 + 2 * SPATIAL_MARGIN, 0.2)
    assert s.select(QueryPredicate(category="bin", nearest_to=QueryPredicate(category="door"))) == [2]


def _desk_scene(cup_xs: tuple[float, ...], yaw: float = 0.0, monitor: str = "monitor") -> SyntheticScene:
    """A monitor at the origin facing +y (yaw 0) and cups at the given local x offsets, 0.2 m in front."""
    c, s = math.cos(yaw), math.sin(yaw)
    objs = [ObjectSpec(1, monitor, "black", (38, 38, 40), (2.0, 2.0, 1.0), (0.5, 0.18, 0.45), yaw=yaw)]
    for i, u in enumerate(cup_xs):
        v = 0.2
        objs.append(
            ObjectSpec(
                i + 2,
                "cup",
                "red",
                (190, 40, 40),
                (2.0 + c * u - s * v, 2.0 + s * u + c * v, 0.8),
                (0.08, 0.08, 0.1),
            )
        )
    return SyntheticScene((4.0, 4.0, 2.6), objs)


@pytest.mark.parametrize("yaw", (0.0, 0.7, math.pi / 2, math.pi, -2.0))
def test_left_of_is_the_left_of_a_person_facing_the_anchor(yaw: float) -> None:
    s = _desk_scene((0.45, -0.6), yaw=yaw)
    left = QueryPredicate(category="cup", left_of=QueryPredicate(category="monitor"))
    right = QueryPredicate(category="cup", right_of=QueryPredicate(category="monitor"))
    assert s.select(left) == [2] and s.select(right) == [3]  # local +x is on the viewer's left
    # the same answer from an actual picture taken by that person: the left cup is left in the image
    mon = s.object(1)
    f = _front(mon)
    eye = np.array([mon.center[0] + 2 * f[0], mon.center[1] + 2 * f[1], 1.5])
    pose = look_at(eye, mon.center)
    _, _, inst = s.render(SMALL, pose)
    cols = {i: np.nonzero(inst == i)[1].mean() for i in (1, 2, 3)}
    assert cols[2] < cols[1] < cols[3]
    assert _beside(s, s.object(2), mon, "left") == pytest.approx(s.side_of(s.object(2), mon, "left"))


def test_left_of_needs_a_clear_margin_a_band_and_a_front() -> None:
    hx = 0.25
    assert (
        _desk_scene((hx + SIDE_MARGIN / 2, -0.6)).select(
            QueryPredicate(category="cup", left_of=QueryPredicate(category="monitor"))
        )
        == []
    )  # a cup on the border makes "the cup on the left" unanswerable
    far = _desk_scene((hx + SIDE_RANGE + 0.3, -0.6))  # too far beyond the edge to be "beside" it
    assert far.select(QueryPredicate(category="cup", left_of=QueryPredicate(category="monitor"))) == []
    assert far.select(QueryPredicate(category="cup", right_of=QueryPredicate(category="monitor"))) == [3]
    both = _desk_scene((0.45, 0.7))
    assert both.select(QueryPredicate(category="cup", left_of=QueryPredicate(category="monitor"))) == [2, 3]
    in_front = _desk_scene((0.0, 0.6))  # straight in front is neither left nor right
    assert in_front.select(QueryPredicate(category="cup", right_of=QueryPredicate(category="monitor"))) == []
    # a bin has no front, so nothing is "on its left"
    no_front = _desk_scene((0.45, -0.6), monitor="bin")
    assert no_front.facing(no_front.object(1)) is None
    assert no_front.select(QueryPredicate(category="cup", left_of=QueryPredicate(category="bin"))) == []


# --- persistence and noise ---------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    path = scene.save(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["seed"] == 3 and len(doc["objects"]) == len(scene.objects)
    loaded = SyntheticScene.load(tmp_path)
    assert loaded == scene
    assert SyntheticScene.load(path) == scene
    for a, b in zip(loaded.render(SMALL, poses[7]), scene.render(SMALL, poses[7]), strict=True):
        assert np.array_equal(a, b)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        SyntheticScene.load(tmp_path)
    (tmp_path / "scene.json").write_text("{not json")
    with pytest.raises(ValueError, match="scene.json"):
        SyntheticScene.load(tmp_path)
    doc = SyntheticScene.generate(0).to_dict()
    broken_docs = (
        {**doc, "version": 99},
        {**doc, "format": "other"},
        {k: v for k, v in doc.items() if k != "objects"},
        {**doc, "objects": [{**doc["objects"][0], "instance_id": 0}]},
    )
    for broken in broken_docs:
        (tmp_path / "scene.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError):
            SyntheticScene.load(tmp_path)


def test_depth_noise_model() -> None:
    rng = np.random.default_rng(0)
    z = np.full((200, 200), 2.0, dtype=np.float32)
    z[:10] = 0.0  # no reading stays no reading
    z[10:20] = 0.3  # closer than the sensor's minimum range
    noisy = apply_depth_noise(z, rng)
    assert noisy.dtype == np.float32 and np.all(noisy[:20] == 0)
    body = noisy[20:]
    lost = np.mean(body == 0)
    assert 0.003 < lost < 0.03
    expected_sigma = 0.0012 + 0.0019 * (2.0 - 0.4) ** 2
    assert np.std(body[body > 0]) == pytest.approx(expected_sigma, rel=0.1)
    grazing = apply_depth_noise(z, rng, incidence_cos=np.full(z.shape, 0.1))
    assert np.all(grazing == 0)


def test_depth_noise_loses_returns_in_the_shadow_of_edges() -> None:
    """Missing returns are part of the sensor model: the far side of a depth edge is shadowed."""
    z = np.full((100, 100), 1.0, dtype=np.float32)
    z[:, 50:] = 3.0  # a near surface on the left, a wall 2 m behind it on the right
    lost = np.mean(
        [apply_depth_noise(z, np.random.default_rng(k))[:, 48:52] == 0 for k in range(20)], axis=(0, 1)
    )
    assert lost[2] == pytest.approx(0.5, abs=0.1)  # the far pixel next to the edge: shadowed half the time
    assert lost[0] < 0.05 and lost[1] < 0.05 and lost[3] < 0.05  # elsewhere only the random dropout
    none = apply_depth_noise(z, np.random.default_rng(0), edge_dropout=0.0)
    assert np.mean(none[:, 50] == 0) < 0.05


def test_recorded_pose_drift_is_a_bounded_growing_random_walk(tmp_path) -> None:
    s = SyntheticScene.generate(4)
    poses = s.trajectory(6, seed=0)
    s.record_sequence(tmp_path / "clean", SMALL, poses)
    s.record_sequence(tmp_path / "drift", SMALL, poses, pose_drift=0.02, noise_seed=5)
    seq_c, seq_d = tmp_path / "clean" / "seq-01", tmp_path / "drift" / "seq-01"
    for i, pose in enumerate(poses):
        stem = f"frame-{i:06d}"
        gt_c, gt_d = (np.loadtxt(d / f"{stem}.gt_pose.txt") for d in (seq_c, seq_d))
        np.testing.assert_array_equal(gt_c, pose)
        np.testing.assert_array_equal(gt_d, pose)
        np.testing.assert_array_equal(np.loadtxt(seq_c / f"{stem}.pose.txt"), pose)  # no drift: identical
        written = np.loadtxt(seq_d / f"{stem}.pose.txt")
        assert is_rigid_transform(written)
        assert (i == 0) == np.allclose(written, pose)  # the first frame is the map origin
        # images are rendered at the true pose, whatever pose is written next to them
        np.testing.assert_array_equal(
            np.asarray(Image.open(seq_d / f"{stem}.instance.png")), s.render(SMALL, pose)[2]
        )

    # statistics of the walk: per-axis translation error std = sigma * sqrt(k), rotation likewise
    sigma, rot_sigma, k_max = 0.01, 0.004, 60
    true = [np.eye(4) for _ in range(k_max)]
    for k, pose in enumerate(true):
        pose[:3, 3] = [0.05 * k, 0.0, 1.5]  # a camera walking 5 cm per frame
    t_sq, r_sq, steps = np.zeros(k_max), np.zeros(k_max), []
    n_runs = 200
    for seed in range(n_runs):
        drifted = simulate_pose_drift(true, sigma, rot_sigma, seed=seed)
        for k, (d, t) in enumerate(zip(drifted, true, strict=True)):
            err = d @ invert_transform(t)  # the world-frame drift transform D_k
            rot_err = math.acos(np.clip((np.trace(err[:3, :3]) - 1) / 2, -1, 1))
            trans_err = err[:3, 3] - true[0][:3, 3] + err[:3, :3] @ true[0][:3, 3]  # about the first camera
            t_sq[k] += trans_err @ trans_err / n_runs
            r_sq[k] += rot_err**2 / n_runs
            if k:
                prev = drifted[k - 1] @ invert_transform(true[k - 1])
                steps.append(
                    np.linalg.norm(trans_err - (prev[:3, 3] - true[0][:3, 3] + prev[:3, :3] @ true[0][:3, 3]))
                )
    ks = np.arange(1, k_max)
    np.testing.assert_allclose(t_sq[1:] / (3 * sigma**2 * ks), 1.0, atol=0.35)
    np.testing.assert_allclose(r_sq[1:] / (3 * rot_sigma**2 * ks), 1.0, atol=0.35)
    assert t_sq[0] == 0 and r_sq[0] == 0 and t_sq[-1] > 10 * t_sq[3]  # grows
    assert max(steps) < 6 * sigma * math.sqrt(3)  # each step is bounded
    same = simulate_pose_drift(true, 0.0, 0.0, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(same, true, strict=True))
    with pytest.raises(ValueError):
        simulate_pose_drift(true, -0.1)


def test_scene_pickles_without_its_ray_caster(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    import pickle

    scene.render(SMALL, poses[0])  # builds the (unpicklable) Open3D geometry
    copy = pickle.loads(pickle.dumps(scene))
    assert copy == scene
    np.testing.assert_array_equal(copy.render(SMALL, poses[0])[2], scene.render(SMALL, poses[0])[2])
