"""Tests of the recorded-sequence reader/writer on real Sun3D frames and on simulated recordings.

The reader is the boundary where unit and convention mistakes enter (mm vs m, pose direction,
frame spacing), so it is checked against a real Kinect recording and by exact round trips.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform
from reasoning_seg.io.sequence_io import (
    FolderSequence,
    read_intrinsics_txt,
    read_pose_txt,
    write_frame,
    write_intrinsics_txt,
)
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.sim.scene import SyntheticScene

SUN3D = Path(__file__).parents[2] / "shared/data/sun3d-studyroom"
SMALL = CameraIntrinsics(640, 480, 570.342205, 570.342205, 320.0, 240.0).scaled(128, 96)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticScene, list[np.ndarray]]:
    scene = SyntheticScene.generate(5)
    poses = scene.trajectory(4, seed=0)
    root = tmp_path_factory.mktemp("sim") / "rec"
    scene.record_sequence(root, SMALL, poses)
    return root, scene, poses


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.skipif(not SUN3D.is_dir(), reason=f"real sample data not found at {SUN3D}")
def test_reads_the_real_sun3d_folder() -> None:
    seq = FolderSequence(SUN3D)
    assert len(seq) == 5 and seq.frame_numbers == [0, 1, 2, 116, 422]
    k = seq.intrinsics
    assert (k.width, k.height) == (640, 480)
    assert (k.fx, k.fy, k.cx, k.cy) == pytest.approx((570.342205, 570.342205, 320.0, 240.0))
    frames = list(seq)
    assert [f.frame_id for f in frames] == [0, 1, 2, 116, 422]
    assert [f.stamp for f in frames] == pytest.approx([0.0, 1 / 30, 2 / 30, 116 / 30, 422 / 30])
    for i, f in enumerate(frames):
        assert f.color.shape == (480, 640, 3) and f.color.dtype == np.uint8
        assert f.depth.shape == (480, 640) and f.depth.dtype == np.float32
        assert f.intrinsics == k
        assert is_rigid_transform(f.T_world_cam)
        valid = f.depth[f.depth > 0]
        assert valid.size > 0.5 * f.depth.size
        assert 0.3 < valid.min() and valid.max() < 10.0  # metres, not millimetres
        assert 0.5 < np.median(valid) < 6.0
        assert seq.instance(i) is None  # real data has no ground truth
    np.testing.assert_array_equal(seq.pose(-1), frames[-1].T_world_cam)
    # the loop of a single Kinect sweep: consecutive frames are close, frame 422 is far away
    assert np.linalg.norm(frames[1].T_world_cam[:3, 3] - frames[0].T_world_cam[:3, 3]) < 0.05


# --- simulated recordings ----------------------------------------------------------------------


def test_record_then_read_round_trip(recorded: tuple[Path, SyntheticScene, list[np.ndarray]]) -> None:
    root, scene, poses = recorded
    assert (root / "camera-intrinsics.txt").is_file() and (root / "scene.json").is_file()
    assert SyntheticScene.load(root) == scene
    seq = FolderSequence(root)
    assert seq.directory == root / "seq-01" and len(seq) == len(poses)
    assert seq.intrinsics == SMALL  # K written with full precision
    for i, f in enumerate(seq):
        color, depth, inst = scene.render(SMALL, poses[i])
        assert f.frame_id == i and f.stamp == pytest.approx(i / 30)
        np.testing.assert_array_equal(f.color, color)
        np.testing.assert_allclose(f.depth, depth, atol=0.0005 + 1e-6)  # millimetre quantisation
        np.testing.assert_array_equal(f.T_world_cam, poses[i])  # exact
        got = seq.instance(i)
        assert got is not None and got.dtype == np.int32
        np.testing.assert_array_equal(got, inst)
    with pytest.raises(IndexError):
        seq[len(poses)]


def test_record_with_depth_noise(tmp_path: Path) -> None:
    scene = SyntheticScene.generate(6)
    poses = scene.trajectory(2, seed=3)
    scene.record_sequence(tmp_path, SMALL, poses, depth_noise=True, noise_seed=1)
    seq = FolderSequence(tmp_path)
    f = seq[0]
    _, depth, inst = scene.render(SMALL, poses[0])
    both = (f.depth > 0) & (depth > 0)
    assert 0.001 < np.mean(f.depth == 0) < 0.2  # some missing returns, not most
    err = np.abs(f.depth[both] - depth[both])
    assert 0.0005 < np.median(err) < 0.02 and err.max() < 0.2
    np.testing.assert_array_equal(seq.instance(0), inst)  # ground truth is noise-free
    with pytest.raises(FileExistsError):  # no silent mixing with an earlier recording
        scene.record_sequence(tmp_path, SMALL, poses)


def test_write_frame_handles_invalid_depth(tmp_path: Path) -> None:
    # 1.2346 m is 1234.6 mm: millimetre rounding gives 1235 (1.2345 sat on the rounding edge).
    depth = np.full((SMALL.height, SMALL.width), 1.2346, dtype=np.float32)
    depth[0, :3] = [np.nan, -1.0, 70.0]  # NaN, negative, beyond 16-bit millimetres
    frame = RGBDFrame(np.zeros((SMALL.height, SMALL.width, 3), np.uint8), depth, SMALL, np.eye(4), frame_id=7)
    stem = write_frame(tmp_path, frame)
    assert stem.name == "frame-000007"
    write_intrinsics_txt(tmp_path / "camera-intrinsics.txt", SMALL)
    back = FolderSequence(tmp_path, fps=10.0)  # frames directly in the root folder
    f = back[0]
    assert f.frame_id == 7 and f.stamp == pytest.approx(0.7)
    assert np.all(f.depth[0, :3] == 0)
    assert f.depth[1, 1] == pytest.approx(1.235, abs=1e-6)
    assert back.instance(0) is None
    with pytest.raises(ValueError):
        write_frame(tmp_path, RGBDFrame(frame.color, depth, SMALL, np.diag([1.0, 1, 2, 1])))
    with pytest.raises(ValueError):
        write_frame(tmp_path, frame, instance=np.full(depth.shape, 70000))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n",  # NaN
        "2 0 0 0\n0 2 0 0\n0 0 2 0\n0 0 0 1\n",  # scaled, not rigid
        "1 0 0 0\n0 1 0 0\n0 0 1 0\n",  # 3x4
        "this is not a pose",
    ],
)
def test_corrupt_pose_is_a_clear_error(recorded, tmp_path: Path, content: str) -> None:
    root = _copy(recorded[0], tmp_path / "rec")
    bad = root / "seq-01" / "frame-000002.pose.txt"
    bad.write_text(content)
    seq = FolderSequence(root)
    seq[1]  # other frames still read
    with pytest.raises(ValueError, match="frame-000002.pose.txt"):
        seq[2]
    with pytest.raises(ValueError, match="frame-000002.pose.txt"):
        read_pose_txt(bad)


def test_unreadable_images_are_clear_errors(recorded, tmp_path: Path) -> None:
    root = _copy(recorded[0], tmp_path / "rec")
    (root / "seq-01" / "frame-000001.color.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    eight_bit = Image.fromarray(np.zeros((SMALL.height, SMALL.width), np.uint8))
    eight_bit.save(root / "seq-01" / "frame-000003.depth.png")
    seq = FolderSequence(root)
    with pytest.raises(ValueError, match="frame-000001.color.png"):
        seq[1]
    with pytest.raises(ValueError, match="16-bit"):  # an 8-bit depth image would have the wrong unit
        seq[3]


def test_missing_files_are_clear_errors(recorded, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FolderSequence(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError):
        FolderSequence(tmp_path)  # no frames
    root = _copy(recorded[0], tmp_path / "rec")
    (root / "camera-intrinsics.txt").unlink()
    with pytest.raises(FileNotFoundError, match="camera-intrinsics.txt"):
        FolderSequence(root)
    root2 = _copy(recorded[0], tmp_path / "rec2")
    (root2 / "seq-01" / "frame-000000.depth.png").unlink()
    with pytest.raises(FileNotFoundError, match="depth"):
        FolderSequence(root2)


def test_several_sequences_need_a_choice(recorded, tmp_path: Path) -> None:
    root = _copy(recorded[0], tmp_path / "rec")
    shutil.copytree(root / "seq-01", root / "seq-02")
    with pytest.raises(ValueError, match="seq-01, seq-02"):
        FolderSequence(root)
    assert len(FolderSequence(root, sequence="seq-02")) == 4


def test_intrinsics_file_parsing(tmp_path: Path) -> None:
    p = tmp_path / "k.txt"
    write_intrinsics_txt(p, SMALL)
    assert read_intrinsics_txt(p, SMALL.width, SMALL.height) == SMALL
    for bad in ("1 2 3", "500 0 320 0 500 240 0 0 2", "a b c d e f g h i", "-5 0 1 0 5 1 0 0 1"):
        p.write_text(bad)
        with pytest.raises(ValueError, match="k.txt"):
            read_intrinsics_txt(p, 640, 480)
    with pytest.raises(FileNotFoundError):
        read_intrinsics_txt(tmp_path / "none.txt", 640, 480)
