"""Tests of the simulated room: its renders must be exact ground truth, its queries unambiguous.

Everything downstream (fusion accuracy, 3D mask scores) is measured against this simulator, so a
silent error here (range instead of z-depth, a mislabelled pixel, an ambiguous query) would make
every later benchmark wrong without failing anything else.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import open3d as o3d
import pytest

from reasoning_seg.camera import (
    CameraIntrinsics,
    invert_transform,
    is_rigid_transform,
    look_at,
    transform_points,
)
from reasoning_seg.sim.scene import (
    SPATIAL_MARGIN,
    ObjectSpec,
    QueryPredicate,
    SceneQuery,
    SyntheticScene,
    apply_depth_noise,
)

FULL = CameraIntrinsics(640, 480, 570.342205, 570.342205, 320.0, 240.0)  # Kinect-like, as in sun3d
SMALL = FULL.scaled(160, 120)
MEDIUM = FULL.scaled(320, 240)
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene.generate(3)


@pytest.fixture(scope="module")
def poses(scene: SyntheticScene) -> list[np.ndarray]:
    return scene.trajectory(24, seed=1)


def _door(scene: SyntheticScene) -> ObjectSpec:
    (door,) = [o for o in scene.objects if o.category == "door"]
    return door


# --- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_layout_has_the_requested_furniture_without_interpenetration(seed: int) -> None:
    s = SyntheticScene.generate(seed)
    lx, ly, h = s.room_size
    assert 4.5 <= lx <= 5.5 and 3.5 <= ly <= 4.5 and h == pytest.approx(2.6)
    counts = Counter(o.category for o in s.objects)
    assert counts["floor"] == 1 and counts["wall"] == 4 and counts["door"] == 1
    assert counts["table"] == 2 and 2 <= counts["chair"] <= 4 and counts["bin"] == 2
    for cat in ("sofa", "shelf", "monitor", "cup", "lamp", "plant"):
        assert counts[cat] == 1, cat
    assert [o.instance_id for o in s.objects] == list(range(1, len(s.objects) + 1))
    assert s.interpenetrations() == []

    tables = [o for o in s.objects if o.category == "table"]
    for o in s.furnished_objects:
        # inside the room, and standing on the floor or on a table (nothing floats)
        c, sn = math.cos(o.yaw), math.sin(o.yaw)
        for du, dv in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            u, v = du * o.size[0] / 2, dv * o.size[1] / 2
            x, y = o.center[0] + c * u - sn * v, o.center[1] + sn * u + c * v
            assert -1e-9 <= x <= lx + 1e-9 and -1e-9 <= y <= ly + 1e-9, o
        assert -1e-9 <= o.bottom and o.top <= h
        on_floor = abs(o.bottom) < 1e-9
        on_table = any(abs(o.bottom - t.top) < 1e-9 and t.contains_xy(o.center[:2]) for t in tables)
        assert on_floor or on_table, o
    for cat in ("monitor", "cup"):
        (o,) = [o for o in s.objects if o.category == cat]
        assert any(abs(o.bottom - t.top) < 1e-9 for t in tables), f"the {cat} is not on a table"


def test_interpenetration_check_detects_overlap() -> None:
    a = ObjectSpec(1, "box", "red", (255, 0, 0), (0, 0, 0.5), (1, 1, 1))
    touching = ObjectSpec(2, "box", "red", (255, 0, 0), (1.0, 0, 0.5), (1, 1, 1), yaw=0.0)
    rotated = ObjectSpec(3, "box", "red", (255, 0, 0), (0.0, 1.2, 0.5), (1, 1, 1), yaw=math.pi / 4)
    assert SyntheticScene((5, 5, 3), [a, touching]).interpenetrations() == []
    assert SyntheticScene((5, 5, 3), [a, rotated]).interpenetrations() == [(1, 3)]  # corner pokes in


def test_generation_is_reproducible() -> None:
    a, b = SyntheticScene.generate(11), SyntheticScene.generate(11)
    assert a == b and a.to_dict() == b.to_dict()
    assert SyntheticScene.generate(12).to_dict() != a.to_dict()
    pose = a.trajectory(5, seed=2)[3]
    for x, y in zip(a.render(SMALL, pose), b.render(SMALL, pose), strict=True):
        assert np.array_equal(x, y)
    for x, y in zip(a.trajectory(5, seed=2), b.trajectory(5, seed=2), strict=True):
        assert np.array_equal(x, y)


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


def test_point_on_a_face_projects_to_that_instance(scene: SyntheticScene) -> None:
    boxes = scene.boxes()
    for o in scene.furnished_objects:
        parts = [b for b in boxes if b.instance_id == o.instance_id]
        top = max(b.center[2] + b.size[2] / 2 for b in parts)
        # the widest part reaching the object's top: its top face is free from above
        at_top = [b for b in parts if b.center[2] + b.size[2] / 2 > top - 1e-6]
        b = max(at_top, key=lambda b: b.size[0] * b.size[1])
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        lu, lv = 0.25 * b.size[0], 0.25 * b.size[1]  # off-centre, away from things standing on tables
        point = np.array([b.center[0] + c * lu - s * lv, b.center[1] + s * lu + c * lv, top])
        toward_centre = np.array([b.center[0], b.center[1], 0.0]) - [point[0], point[1], 0.0]
        eye = point + [0.0, 0.0, 0.5] - 0.1 * toward_centre
        pose = look_at(eye, point)
        _, depth, inst = scene.render(SMALL, pose)
        uv, z = SMALL.project(transform_points(invert_transform(pose), point[None]))
        col, row = np.rint(uv[0]).astype(int)
        assert inst[row, col] == o.instance_id, o.category
        assert depth[row, col] == pytest.approx(z[0], abs=2e-3)


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


def _brute_force(scene: SyntheticScene, p: QueryPredicate) -> list[int]:
    """Independent (loop-by-loop) evaluation of the predicate forms the generator uses."""

    def rests_on(a: ObjectSpec, b: ObjectSpec) -> bool:
        return a is not b and abs(a.bottom - b.top) < 0.01 and b.contains_xy(a.center[:2])

    c = [
        o
        for o in scene.objects
        if p.category in (None, o.category)
        and p.color_name in (None, o.color_name)
        and (p.affordance is None or p.affordance in o.affordances)
    ]
    if p.on is not None:
        c = [o for o in c if any(rests_on(o, scene.object(i)) for i in _brute_force(scene, p.on))]
    if p.supports is not None:
        c = [o for o in c if any(rests_on(scene.object(i), o) for i in _brute_force(scene, p.supports))]
    anchor_p = p.nearest_to or p.farthest_from
    if anchor_p is not None:
        (anchor_id,) = _brute_force(scene, anchor_p)
        a = scene.object(anchor_id)
        dist = {o.instance_id: math.dist(o.center[:2], a.center[:2]) for o in c}
        sign = 1 if p.nearest_to is not None else -1
        order = sorted(dist, key=lambda i: sign * dist[i])
        if len(order) >= 2:
            assert abs(dist[order[1]] - dist[order[0]]) >= SPATIAL_MARGIN
        c = [scene.object(order[0])]
    return sorted(o.instance_id for o in c)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_query_singles_out_its_target(seed: int) -> None:
    s = SyntheticScene.generate(seed)
    kinds = Counter(q.kind for q in s.queries)
    assert kinds["explicit"] and kinds["affordance"] and kinds["spatial"], kinds
    assert len({q.text for q in s.queries}) == len(s.queries)
    ids = {o.instance_id for o in s.objects}
    for q in s.queries:
        assert q.target_instance_id in ids, q
        assert s.query_is_unique(q), q
        assert _brute_force(s, q.predicate) == [q.target_instance_id], q
        if q.kind == "spatial" or (q.kind == "affordance" and "whichever" in q.text):
            relation = q.predicate.without_superlative()
            if relation != q.predicate:  # the relation is what disambiguates
                assert len(s.select(relation)) >= 2, q
        if q.kind == "explicit":
            assert s.object(q.target_instance_id).category in q.text


@pytest.mark.parametrize("seed", SEEDS)
def test_the_bin_closest_to_the_door_is_generated_and_correct(seed: int) -> None:
    s = SyntheticScene.generate(seed)
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
    bogus = SceneQuery("the chair", 1, "explicit", QueryPredicate(category="chair"))
    assert not scene.query_is_unique(bogus)
    with pytest.raises(ValueError):
        SceneQuery("x", 1, "vague")
    with pytest.raises(ValueError):
        door = QueryPredicate(category="door")
        QueryPredicate(nearest_to=door, farthest_from=door)


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


def test_scene_pickles_without_its_ray_caster(scene: SyntheticScene, poses: list[np.ndarray]) -> None:
    import pickle

    scene.render(SMALL, poses[0])  # builds the (unpicklable) Open3D geometry
    copy = pickle.loads(pickle.dumps(scene))
    assert copy == scene
    np.testing.assert_array_equal(copy.render(SMALL, poses[0])[2], scene.render(SMALL, poses[0])[2])
