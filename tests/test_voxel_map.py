"""Voxel map: accuracy, torch/Open3D agreement, removal, labels, bounded memory, rate, save/load."""

import shutil

import numpy as np
import open3d as o3d
import pytest
from scipy.spatial import cKDTree

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import MapConfig, PipelineConfig
from reasoning_seg.io.synthetic_stream import CorridorStream
from reasoning_seg.mapping import state_io
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.mapping.voxel_map import VoxelMap
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.sim.scene import SyntheticScene

INTR = CameraIntrinsics(160, 120, 131.25, 124.0, 81.0, 57.5)  # fx != fy, off-centre: a swap shows
VOXEL = 0.04

try:
    import torch  # noqa: F401

    BACKENDS = ["open3d", "torch"]
except ImportError:  # the torch backend is optional (GPU machines); CI has Open3D only
    BACKENDS = ["open3d"]
needs_torch = pytest.mark.skipif("torch" not in BACKENDS, reason="PyTorch is not installed")


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene.generate(3)


@pytest.fixture(scope="module")
def frames(scene):
    out = []
    for i, T in enumerate(scene.trajectory(24, seed=3)):
        color, depth, _ = scene.render(INTR, T)
        out.append(RGBDFrame(color, depth, INTR, T, stamp=i / 30.0, frame_id=i))
    return out


def build(frames, **cfg):
    m = VoxelMap(MapConfig(voxel_size=VOXEL, **cfg))
    for f in frames:
        m.integrate(f)
    return m


@pytest.fixture(scope="module")
def o3d_map(frames):
    return build(frames, backend="open3d")


def mesh_distance(scene, pts):
    return scene.raycasting_scene.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()


def test_surface_lies_on_the_scene_meshes(scene, o3d_map):
    pts = o3d_map.surface().points
    d = mesh_distance(scene, pts)
    assert len(pts) > 5000
    # Exact depth: the zero crossings sit on the faces; the tail is thin parts and corners, which a
    # 4-voxel truncation band blurs.
    assert np.median(d) < 0.1 * VOXEL and d.mean() < 0.25 * VOXEL and np.percentile(d, 95) < 1.5 * VOXEL


@needs_torch
def test_torch_backend_agrees_with_open3d(frames, o3d_map, scene):
    tm = build(frames, backend="torch", device="cpu")
    a, b = o3d_map.surface(), tm.surface()
    assert abs(len(a) - len(b)) < 0.05 * len(a)
    d_ab, i_ab = cKDTree(b.points).query(a.points)
    d_ba, _ = cKDTree(a.points).query(b.points)
    for d in (d_ab, d_ba):
        assert d.mean() < 0.25 * VOXEL and np.percentile(d, 95) < VOXEL
    assert np.abs(a.colors - b.colors[i_ab]).mean() < 0.03
    assert np.median(mesh_distance(scene, b.points)) < 0.1 * VOXEL
    ka = {tuple(c) for c in o3d_map.grid.block_coords()}
    kb = {tuple(c) for c in tm.grid.block_coords()}
    assert len(ka & kb) > 0.9 * len(ka | kb)


@needs_torch
def test_torch_extraction_matches_open3d_on_identical_voxels(o3d_map):
    tm = VoxelMap(MapConfig(voxel_size=VOXEL, backend="torch", device="cpu"))
    tm.from_arrays(o3d_map.to_arrays())
    a, b = o3d_map.surface(), tm.surface()
    assert len(a) == len(b)
    d_ab, i_ab = cKDTree(b.points).query(a.points)
    d_ba, _ = cKDTree(a.points).query(b.points)
    assert d_ab.max() < 1e-5 and d_ba.max() < 1e-5
    np.testing.assert_allclose(a.colors, b.colors[i_ab], atol=1e-4)


def largest_object(scene, pts, category="chair"):
    labels = scene.label_points(pts, max_distance=1.5 * VOXEL)
    ids = [o.instance_id for o in scene.objects if o.category == category]
    counts = [(labels == i).sum() for i in ids]
    tid = ids[int(np.argmax(counts))]
    return tid, labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_points_deletes_an_object_until_it_is_seen_again(scene, frames, backend):
    m = build(frames, backend=backend, device="CPU:0")
    pts = m.surface().points
    tid, labels = largest_object(scene, pts)
    target = pts[labels == tid]
    others = ((labels != tid) & (labels > 0)).sum()
    assert len(target) > 200
    cleared = m.remove_points(target)
    assert cleared > len(target) // 2
    after = m.surface().points
    la = scene.label_points(after, max_distance=1.5 * VOXEL)
    assert (la == tid).sum() < 0.02 * len(target)
    assert cKDTree(after).query(target)[0].min() > 0.5 * VOXEL
    assert ((la != tid) & (la > 0)).sum() > 0.8 * others  # only the contact band around it goes too
    for f in frames:  # the chair is still there in the images: seen again, it comes back
        m.integrate(f)
    back = scene.label_points(m.surface().points, max_distance=1.5 * VOXEL)
    assert (back == tid).sum() > 0.5 * len(target)


def test_remove_points_accepts_a_surface_mask(scene, frames):
    m = build(frames[:8], backend="open3d")
    surf = m.surface()
    mask = np.zeros(len(surf), dtype=bool)
    mask[:100] = True
    assert m.remove_points(mask, radius=VOXEL) > 0
    with pytest.raises(ValueError, match="mask"):
        m.remove_points(np.zeros(3, dtype=bool))


def test_labels_mark_a_target_follow_the_map_and_go_with_it(scene, frames):
    m = build(frames, backend="open3d")
    pts = m.surface().points
    tid, labels = largest_object(scene, pts)
    target = pts[labels == tid]
    n = m.set_labels(target, 0.9, label=5)
    assert 0 < n <= len(target) and m.num_labelled == n
    surf, prob = m.labelled_surface(5, min_probability=0.5)
    assert len(surf) >= 0.95 * len(target) and np.allclose(prob, 0.9)
    assert np.mean(scene.label_points(surf.points, max_distance=1.5 * VOXEL) == tid) > 0.9
    lab, _ = m.labels_at(pts[(labels != tid) & (labels > 0)])
    assert (lab == 0).mean() > 0.97
    assert m.set_labels(target[:10], 0.7, label=5) <= 10  # the latest answer replaces the previous one
    assert m.num_labelled <= 10
    m.set_labels(target, 0.9, label=5)
    m.remove_points(target)
    assert len(m.labelled_surface(5)[0]) == 0 and m.num_labelled == 0
    with pytest.raises(ValueError):
        m.set_labels(target, 0.9, label=0)


def small_corridor():
    return CorridorStream(intrinsics=CameraIntrinsics(80, 60, 65.6, 65.6, 39.5, 29.5))


def test_budget_and_radius_keep_an_endless_stream_bounded():
    stream = small_corridor()
    bounded = VoxelMap(MapConfig(voxel_size=0.05, max_blocks=700, keep_radius=4.0, block_count=1000))
    unbounded = VoxelMap(MapConfig(voxel_size=0.05, max_blocks=0, block_count=1000))
    blocks, memory = [], []
    last = None
    for f in stream.frames(600):  # 20 s at 30 Hz: 12 m of corridor
        bounded.integrate(f)
        unbounded.integrate(f)
        blocks.append(bounded.num_blocks)
        memory.append(bounded.memory_bytes())
        last = f
    assert max(blocks) <= 700
    assert len(set(memory[100:])) == 1  # flat after warm-up
    # (Measured 1793 vs 699 blocks, 2.6x; without the budget and radius the two would be equal.)
    assert unbounded.num_blocks > 2 * bounded.num_blocks and bounded.blocks_dropped > 0
    pts = bounded.surface().points
    near = np.linalg.norm(pts - last.T_world_cam[:3, 3], axis=1)
    assert near.max() < 4.0 + 0.8 and (near < 3.0).sum() > 1000


def _with_outliers(frame, rng, n=30):
    """The frame with ``n`` flying pixels: depths pulled 10-70% towards the camera, as at edges."""
    depth = frame.depth.copy()
    v, u = rng.integers(0, depth.shape[0], n), rng.integers(0, depth.shape[1], n)
    depth[v, u] *= rng.uniform(0.3, 0.9, n)
    return RGBDFrame(frame.color, depth, frame.intrinsics, frame.T_world_cam, frame.stamp, frame.frame_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_pruning_keeps_a_looped_room_from_growing_and_keeps_its_surfaces(frames, backend):
    rng = np.random.default_rng(0)
    kw = dict(backend=backend, device="cpu" if backend == "torch" else "CPU:0")
    clean = build(frames, **kw)
    plain = VoxelMap(MapConfig(voxel_size=VOXEL, **kw))
    pruned = VoxelMap(MapConfig(voxel_size=VOXEL, prune_after=20, prune_min_weight=3.0, **kw))
    after_loop = {"plain": [], "pruned": []}
    for _ in range(4):  # the same room, looped, with fresh depth outliers every frame
        for f in frames:
            g = _with_outliers(f, rng)
            plain.integrate(g)
            pruned.integrate(g)
        after_loop["plain"].append(plain.num_blocks)
        after_loop["pruned"].append(pruned.num_blocks)
    # Without pruning every loop adds the new outliers' blocks; with it the count stays near the room's.
    assert after_loop["plain"][-1] > after_loop["plain"][0] + 100, after_loop
    # (Measured: Open3D 1291 -> 1426 blocks without, 1291 -> 1286 with; the room alone has 1232.)
    # Pruning removes at least half of the growth loops 2-4 add without it (measured: Open3D all of
    # it, torch 71 %); a margin on the plain map's own growth, not on a block count.
    growth = after_loop["plain"][-1] - after_loop["plain"][0]
    assert after_loop["pruned"][-1] <= after_loop["pruned"][0] + 0.5 * growth, after_loop
    assert after_loop["pruned"][-1] < after_loop["plain"][-1] and pruned.blocks_pruned > 0
    # Real surfaces survive: nearly all of the outlier-free map is still there. (Isolated outliers
    # cost blocks, i.e. memory, but leave almost no surface points: weight-1 voxels rarely cross zero.)
    ref, got = clean.surface().points, pruned.surface().points
    d, _ = cKDTree(got).query(ref)
    assert (d < VOXEL).mean() > 0.97
    assert abs(len(got) - len(ref)) < 0.03 * len(ref)


def test_noise_pruning_is_off_by_default_and_clear_forgets_block_ages(frames):
    m = build(frames[:12])
    assert MapConfig().prune_after == 0 and m.blocks_pruned == 0
    p = build(frames[:12], prune_after=5)
    assert len(p._birth_keys) > 0
    p.clear()
    assert len(p._birth_keys) == 0 and p.num_blocks == 0


def test_budget_drops_the_blocks_farthest_from_the_camera():
    stream = small_corridor()
    m = VoxelMap(MapConfig(voxel_size=0.05, max_blocks=300, block_count=500))
    for f in stream.frames(120):
        m.integrate(f)
    pos = f.T_world_cam[:3, 3]
    kept = (m.grid.block_coords() + 0.5) * 0.4
    ref = VoxelMap(MapConfig(voxel_size=0.05, max_blocks=0, block_count=500))
    for g in stream.frames(120):
        ref.integrate(g)
    all_blocks = (ref.grid.block_coords() + 0.5) * 0.4
    d_kept = np.linalg.norm(kept - pos, axis=1).max()
    d_all = np.sort(np.linalg.norm(all_blocks - pos, axis=1))
    assert m.num_blocks <= 300 and d_kept < d_all[-1] - 1.0


def test_integration_rate_knobs(frames):
    every = VoxelMap(MapConfig(voxel_size=VOXEL, integrate_every=3))
    rate = VoxelMap(MapConfig(voxel_size=VOXEL, max_rate_hz=10.0))
    for f in frames[:10]:  # stamps i / 30 s
        every.offer(f)
        rate.offer(f)
    assert (every.frames_integrated, every.frames_skipped) == (4, 6)
    assert (rate.frames_integrated, rate.frames_skipped) == (4, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_arrays_round_trip_exactly(o3d_map, backend):
    arrays = o3d_map.to_arrays()
    m = VoxelMap(MapConfig(voxel_size=VOXEL, backend=backend, device="CPU:0"))
    m.from_arrays(arrays)
    back = m.to_arrays()
    order_a, order_b = np.lexsort(arrays["block_coords"].T), np.lexsort(back["block_coords"].T)
    np.testing.assert_array_equal(arrays["block_coords"][order_a], back["block_coords"][order_b])
    np.testing.assert_array_equal(arrays["observed_bits"][order_a], back["observed_bits"][order_b])
    assert np.isclose(arrays["tsdf"].sum(), back["tsdf"].sum()) and m.num_blocks == o3d_map.num_blocks


def test_inconsistent_map_arrays_are_refused(o3d_map):
    good = o3d_map.to_arrays()
    for name, bad in [
        ("tsdf", good["tsdf"][:-1]),
        ("block_coords", good["block_coords"].astype(np.int64)),
        ("color", np.full_like(good["color"], np.nan)),
        ("observed_bits", good["observed_bits"][:, :10]),
    ]:
        arrays = dict(good, **{name: bad})
        with pytest.raises(ValueError):
            VoxelMap.check_arrays(arrays)
    with pytest.raises(ValueError, match="missing"):
        VoxelMap.check_arrays({k: v for k, v in good.items() if k != "weight"})


def test_pipeline_remove_points_makes_the_spot_a_keyframe_again(scene, frames):
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": VOXEL, "keyframes.window_size": 4, "keyframes.min_translation": 0.1})
    p = ReasoningSegPipeline(cfg)
    for f in frames:
        p.add_frame(f)
    assert p.keyframes.full
    pts = p.surface().points
    tid, labels = largest_object(scene, pts)
    seer = next(f for f in frames if np.mean(scene.render(INTR, f.T_world_cam)[2] == tid) > 0.05)
    before = p.keyframes.novelty(seer)
    p.label_points(7, pts[labels == tid], 0.95)
    surf, prob = p.labelled_points(7, min_probability=0.9)
    assert len(surf) > 100 and prob.min() >= 0.9
    with pytest.raises(ValueError, match="mask"):
        p.remove_points(np.zeros(3, dtype=bool))
    assert p.remove_points(labels == tid) > 0  # a mask over the surface the labels came from
    assert len(p.labelled_points(7)[0]) == 0
    assert p.keyframes.novelty(seer) > before + 0.03  # the emptied spot is news to the window


# ---------------------------------------------------------------------------- save / load


@pytest.fixture(scope="module")
def pipe(scene, frames):
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": VOXEL, "keyframes.min_translation": 0.1})
    p = ReasoningSegPipeline(cfg)
    for f in frames:
        p.add_frame(f)
    pts = p.surface().points
    p.label_points(3, pts[:500], 0.8)
    return p


def state_of(p):
    s = p.surface()
    order = np.lexsort(s.points.T)
    return s.points[order], s.colors[order], [k.keyframe_id for k in p.keyframes], p.keyframes.next_id


def test_save_load_round_trip_restores_map_keyframes_poses_intrinsics_and_labels(pipe, tmp_path):
    pipe.save(tmp_path / "state")
    other = ReasoningSegPipeline(pipe.config)
    other.load(tmp_path / "state")
    pa, ca, ids_a, next_a = state_of(pipe)
    pb, cb, ids_b, next_b = state_of(other)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(ca, cb)
    assert ids_a == ids_b and next_a == next_b and len(ids_a) >= 5
    for ka, kb in zip(pipe.keyframes, other.keyframes, strict=True):
        fa, fb = ka.frame, kb.frame
        assert fa.intrinsics == fb.intrinsics and fa.stamp == fb.stamp and fa.frame_id == fb.frame_id
        np.testing.assert_array_equal(fa.T_world_cam, fb.T_world_cam)
        np.testing.assert_array_equal(fa.color, fb.color)
        np.testing.assert_array_equal(fa.depth, fb.depth)
    la, pa_ = pipe.labelled_points(3)
    lb, pb_ = other.labelled_points(3)
    assert len(la) > 0 and len(la) == len(lb) and np.allclose(np.sort(pa_), np.sort(pb_))
    # Saving over an existing state replaces it and leaves no temporary directories behind.
    other.save(tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    # New keyframes continue the id sequence instead of reusing saved ids.
    assert other.keyframes.add(pipe.keyframes.snapshot()[0].frame).keyframe_id == next_a


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def replace_with_foreign_npz(path):
    np.savez(path, ids=np.arange(3))


DAMAGE = {
    "truncated map": lambda d: truncate(d / "map.npz"),
    "truncated keyframes": lambda d: truncate(d / "keyframes.npz"),
    "foreign npz with the right name": lambda d: replace_with_foreign_npz(d / "keyframes.npz"),
    "missing map": lambda d: (d / "map.npz").unlink(),
    "garbage state.json": lambda d: (d / "state.json").write_bytes(b"\x00\xff not json"),
    "foreign state.json": lambda d: (d / "state.json").write_text('{"format": "other", "version": 2}'),
    "older format": lambda d: (d / "state.json").write_text('{"format": "reasoning_seg.state/1"}'),
    "no state.json": lambda d: (d / "state.json").unlink(),
    "a file instead of a directory": lambda d: (shutil.rmtree(d), d.write_text("hello")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_or_foreign_state_is_refused_and_nothing_changes(pipe, tmp_path, damage):
    d = tmp_path / "state"
    pipe.save(d)
    DAMAGE[damage](d)
    before = state_of(pipe)
    map_obj, kf_obj = pipe.map, pipe.keyframes
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        pipe.load(d)
    assert str(exc.value)
    assert pipe.map is map_obj and pipe.keyframes is kf_obj
    after = state_of(pipe)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[2:] == after[2:]


def test_truncated_file_is_named_in_the_error(pipe, tmp_path):
    pipe.save(tmp_path / "s")
    truncate(tmp_path / "s" / "map.npz")
    with pytest.raises(ValueError, match=r"map\.npz is corrupt or truncated"):
        pipe.load(tmp_path / "s")


def test_save_refuses_to_replace_a_directory_of_other_files(pipe, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        pipe.save(d)
    assert (d / "notes.txt").read_text() == "keep me" and sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_an_interrupted_save_keeps_the_previous_state(pipe, tmp_path, monkeypatch):
    d = tmp_path / "state"
    pipe.save(d)
    first = (d / "state.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(state_io.np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        pipe.save(d)
    monkeypatch.undo()
    assert (d / "state.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    other = ReasoningSegPipeline(pipe.config)
    other.load(d)
    assert len(other.surface()) == len(pipe.surface())


def test_a_state_saved_with_another_voxel_size_is_refused(pipe, tmp_path):
    pipe.save(tmp_path / "s")
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": 0.05})
    other = ReasoningSegPipeline(cfg)
    with pytest.raises(ValueError, match="voxel size"):
        other.load(tmp_path / "s")
    assert other.map.num_blocks == 0
