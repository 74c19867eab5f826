"""Hostile or absurd input at the core (issue 17).

Rejected with a named reason, map and keyframes untouched, saved maps never replaced by what is not
ours, requests bounded.

The ROS side of the same rules (real rclpy over DDS) is in test_node_hostile.py.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.frames import (
    REJECT_REASONS,
    FrameRejected,
    PoseJumpGate,
    RGBDFrame,
    sanitize_frame,
)
from reasoning_seg.mapping.state_io import resolve_map_dir
from reasoning_seg.mapping.voxel_map import VoxelMap
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.sim.scene import SyntheticScene
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter

INTR = CameraIntrinsics(80, 60, 66.0, 63.0, 40.5, 28.0)


SCENE = SyntheticScene.generate(3)


@pytest.fixture(scope="module")
def room():
    scene = SCENE
    frames = []
    for i, T in enumerate(scene.trajectory(12, seed=3)):
        color, depth, _ = scene.render(INTR, T)
        frames.append(RGBDFrame(color, depth, INTR, T, stamp=i / 10.0, frame_id=i))
    return scene, frames


def pipeline(frames, **map_params) -> ReasoningSegPipeline:
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": 0.05, **{f"map.{k}": v for k, v in map_params.items()}})
    pipe = ReasoningSegPipeline(cfg, SimulatedSegmenter(SCENE, "oracle"))
    for f in frames:
        pipe.add_frame(f)
    return pipe


def state(pipe: ReasoningSegPipeline) -> tuple[int, int, int]:
    return pipe.map.num_blocks, pipe.map.version, len(pipe.keyframes)


def moved(frame: RGBDFrame, T: np.ndarray, stamp: float) -> RGBDFrame:
    return RGBDFrame(frame.color, frame.depth, frame.intrinsics, T, stamp, frame.frame_id)


def shifted(T: np.ndarray, offset) -> np.ndarray:
    out = T.copy()
    out[:3, 3] += np.asarray(offset, dtype=np.float64)
    return out


@pytest.mark.parametrize(
    "position, reason",
    [
        ((1e300, 0, 0), "pose_out_of_bounds"),
        ((60_000.0, 0, 0), "pose_out_of_bounds"),
        ((0, 30.0, 0), "pose_jump"),
    ],
)
def test_absurd_poses_are_refused_and_leave_the_map_alone(room, position, reason):
    _, frames = room
    pipe = pipeline(frames)
    before = state(pipe)
    T = frames[-1].T_world_cam.copy()
    T[:3, 3] = position
    with pytest.raises(FrameRejected) as exc:
        pipe.add_frame(moved(frames[-1], T, frames[-1].stamp + 0.1))
    assert exc.value.reason == reason and reason in REJECT_REASONS
    assert state(pipe) == before and pipe.stats.rejected[reason] == 1
    assert pipe.query("the sofa").success  # queries still run (a 1e300 pose made them all NaN)


def test_garbage_frames_far_away_cannot_evict_the_room(room):
    """Frames of random depth from 40-118 m away, with a small block budget: the room stays."""
    scene, frames = room
    pipe = pipeline(frames, max_blocks=3000)
    points_before = len(pipe.surface())
    rng = np.random.default_rng(0)
    for k in range(40):  # 4 s of garbage at 10 Hz: refusals do not widen the allowance
        T = look_at(rng.uniform(40, 118, 3) * rng.choice([-1, 1], 3), [0, 0, 0])
        depth = rng.uniform(0.3, 4.9, (60, 80)).astype(np.float32)
        with pytest.raises(FrameRejected, match="pose_jump"):
            pipe.add_frame(RGBDFrame(frames[0].color, depth, INTR, T, 2.0 + 0.1 * k, 100 + k))
    assert len(pipe.surface()) == points_before


def test_a_relocalisation_is_accepted_once_frames_agree():
    gate = PoseJumpGate(max_speed=10.0, confirm=3)
    gate.check(np.zeros(3), 0.0)
    gate.check(np.array([0.1, 0, 0]), 0.1)
    jumped = [np.array([5.0 + 0.05 * k, 0, 0]) for k in range(3)]  # loop closure: 5 m at once
    for k in range(2):
        with pytest.raises(FrameRejected, match="pose_jump"):
            gate.check(jumped[k], 0.2 + 0.1 * k)
    gate.check(jumped[2], 0.4)  # the third consistent frame confirms the new place
    gate.check(np.array([5.2, 0, 0]), 0.5)
    # Garbage never agrees with itself: rejected forever.
    rng = np.random.default_rng(1)
    for k in range(10):
        with pytest.raises(FrameRejected):
            gate.check(rng.uniform(-100, 100, 3), 0.6 + 0.1 * k)
    # A replayed recording (stamps back) starts a new trajectory.
    gate.check(np.array([50.0, 0, 0]), 0.0)


@pytest.mark.parametrize(
    "intr, reason",
    [
        (CameraIntrinsics(80, 60, 1e-3, 1e-3, 40.0, 30.0), "bad_intrinsics"),  # 76,800 blocks a frame
        (CameraIntrinsics(80, 60, 5000.0, 63.0, 40.0, 30.0), "bad_intrinsics"),
        (CameraIntrinsics(2560, 1920, 2000.0, 2000.0, 1280.0, 960.0), "image_too_large"),
    ],
)
def test_intrinsics_and_image_size_have_physical_bounds(intr, reason):
    f = RGBDFrame(
        np.zeros((intr.height, intr.width, 3), np.uint8),
        np.full((intr.height, intr.width), 2.0, np.float32),
        intr,
        np.eye(4),
        1.0,
        1,
    )
    with pytest.raises(FrameRejected) as exc:
        sanitize_frame(f, 0.2, 5.0, 0.05, max_image_pixels=PipelineConfig().map.max_image_pixels)
    assert exc.value.reason == reason


def test_removal_with_a_wide_margin_is_exact_and_bounded(room):
    """Removal searches a box around the target, and still finds exactly the voxels in reach.

    No points x ball blow-up; checked against a brute-force distance test.
    """
    _, frames = room
    m = VoxelMap(PipelineConfig().map.__class__(voxel_size=0.05))
    for f in frames:
        m.integrate(f)
    pts = m.surface().points
    target = pts[np.linalg.norm(pts - pts.mean(0), axis=1) < 0.4]
    from reasoning_seg.mapping.voxel_map import _voxels_near

    base = np.unique(np.floor(target / 0.05).astype(np.int64), axis=0)
    near = _voxels_near(base, 0.3 / 0.05)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(target).query(near * 0.05)
    found = {tuple(v) for v in near[d <= 0.3]}
    lo, hi = base.min(0) - 9, base.max(0) + 9
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    grid = grid.reshape(-1, 3)
    d_all, _ = cKDTree(target).query(grid * 0.05)
    assert found == {tuple(v) for v in grid[d_all <= 0.3]}
    with pytest.raises(ValueError, match="removal would search"):
        _voxels_near(np.array([[0, 0, 0], [400, 400, 400]]), 2.0)


# ------------------------------------------------------------------------------- saving and loading
@pytest.fixture
def small_pipe(room):
    return pipeline(room[1][:6])


def test_map_names_stay_inside_the_map_directory(tmp_path):
    base = tmp_path / "maps"
    base.mkdir()
    assert resolve_map_dir(base, "lab/monday") == (base / "lab" / "monday").resolve()
    for bad in ("", "  ", "/etc/x", "../x", "a/../../x", "/dev/shm/x"):
        with pytest.raises(PermissionError):
            resolve_map_dir(base, bad)
    (base / "out").symlink_to(tmp_path)  # a link leading out of the map directory
    with pytest.raises(PermissionError, match="leaves the map directory"):
        resolve_map_dir(base, "out/x")
    assert resolve_map_dir(base, str(tmp_path / "abs"), allow_absolute=True) == (tmp_path / "abs").resolve()


def test_save_never_deletes_or_replaces_what_is_not_ours(small_pipe, tmp_path):
    # A folder holding only a sub-folder named map.npz (with files in it): refused, files kept.
    d = tmp_path / "a"
    (d / "map.npz").mkdir(parents=True)
    for i in range(3):
        (d / "map.npz" / f"f{i}").write_text("theirs")
    with pytest.raises(FileExistsError):
        small_pipe.save(d)
    assert sorted(p.name for p in (d / "map.npz").iterdir()) == ["f0", "f1", "f2"]
    # Another program's state.json: refused, untouched.
    other = tmp_path / "b"
    other.mkdir()
    (other / "state.json").write_text('{"their": "settings"}')
    with pytest.raises(FileExistsError):
        small_pipe.save(other)
    assert (other / "state.json").read_text() == '{"their": "settings"}'
    # An existing empty folder keeps its mode; a linked target is written through the link and no
    # link is left behind.
    empty = tmp_path / "c"
    empty.mkdir(mode=0o755)
    os.chmod(empty, 0o755)
    small_pipe.save(empty)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o755
    link = tmp_path / "link"
    link.symlink_to(empty)
    small_pipe.save(link)
    assert link.is_symlink() and (empty / "state.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "link"]


def test_an_empty_state_does_not_replace_a_saved_map_unless_asked(small_pipe, tmp_path):
    d = tmp_path / "m"
    small_pipe.save(d)
    saved = (d / "state.json").read_text()
    small_pipe.clear()
    with pytest.raises(FileExistsError, match="empty"):
        small_pipe.save(d)
    assert (d / "state.json").read_text() == saved
    small_pipe.save(d, allow_empty_overwrite=True)
    assert '"keyframes": 0' in (d / "state.json").read_text()


def test_absurd_next_keyframe_id_is_refused_at_load(small_pipe, tmp_path):
    import json

    d = tmp_path / "m"
    small_pipe.save(d)
    doc = json.loads((d / "state.json").read_text())
    doc["next_keyframe_id"] = 2**63 + 5
    (d / "state.json").write_text(json.dumps(doc))
    before = state(small_pipe)
    with pytest.raises(ValueError, match="next_keyframe_id"):
        small_pipe.load(d)
    assert state(small_pipe) == before


def test_files_over_the_size_limit_are_refused_before_reading(small_pipe, tmp_path):
    d = tmp_path / "m"
    small_pipe.save(d)
    with pytest.raises(ValueError, match="larger than"):
        small_pipe.load(d, max_bytes=1000)


def test_quaternions_with_absurd_norms_are_refused():
    from reasoning_seg.ros.conversions import quaternion_to_matrix

    for q in [(1e200, 0, 0, 0), (1e-5, 0, 0, 0), (0, 0, 0, 1e3)]:
        with pytest.raises(ValueError, match="norm"):
            quaternion_to_matrix(*q)
    np.testing.assert_allclose(quaternion_to_matrix(0, 0, 0, 3.0), np.eye(3))
