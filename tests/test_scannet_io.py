"""ScanNet-style export reader: layout, the resolution rule, skipped frames, errors that name files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasoning_seg.camera import CameraIntrinsics, invert_transform, look_at, transform_points
from reasoning_seg.io.scannet_io import ScanNetSequence, is_scannet_layout, open_sequence
from reasoning_seg.io.sequence_io import FolderSequence, write_frame, write_intrinsics_txt

DEPTH_K = CameraIntrinsics(80, 60, 70.0, 70.0, 39.5, 29.5)


def _write_export(
    root: Path, n: int = 4, bad_pose: int | None = None, color_scale: int = 2
) -> list[np.ndarray]:
    """A tiny ScanNet-style export: colour at ``color_scale`` x the depth resolution, as JPEG."""
    for d in ("color", "depth", "pose", "intrinsic", "instance-filt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    K4 = np.eye(4)
    K4[:3, :3] = DEPTH_K.K
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K4)
    poses = []
    for i in range(n):
        pose = look_at(np.array([0.1 * i, -1.0, 1.2]), np.array([0.0, 1.0, 0.8]))
        poses.append(pose)
        h, w = DEPTH_K.height, DEPTH_K.width
        color = np.zeros((h * color_scale, w * color_scale, 3), np.uint8)
        color[:, : w * color_scale // 2] = (200, 30, 30)  # left half red, right half blue
        color[:, w * color_scale // 2 :] = (30, 30, 200)
        Image.fromarray(color).save(root / "color" / f"{i}.jpg", quality=95)
        depth_mm = np.full((h, w), 1500 + 10 * i, np.uint16)
        depth_mm[0, 0] = 0  # one missing reading
        Image.fromarray(depth_mm).save(root / "depth" / f"{i}.png")
        inst = np.zeros((h * color_scale, w * color_scale), np.uint8)
        inst[:, w * color_scale // 2 :] = 7
        Image.fromarray(inst).save(root / "instance-filt" / f"{i}.png")
        text = "\n".join(" ".join(f"{v:.9f}" for v in row) for row in pose)
        if i == bad_pose:
            text = "\n".join(["-inf -inf -inf -inf"] * 4)  # how ScanNet marks a tracking failure
        (root / "pose" / f"{i}.txt").write_text(text)
    return poses


def test_reads_frames_at_depth_resolution_with_depth_intrinsics(tmp_path):
    poses = _write_export(tmp_path)
    assert is_scannet_layout(tmp_path)
    seq = ScanNetSequence(tmp_path)
    assert len(seq) == 4
    assert seq.intrinsics == DEPTH_K
    f = seq[2]
    assert f.color.shape == (60, 80, 3) and f.depth.shape == (60, 80)
    assert f.depth[5, 5] == pytest.approx(1.52)
    assert f.depth[0, 0] == 0.0  # 0 stays "no reading"
    np.testing.assert_allclose(f.T_world_cam, poses[2], atol=1e-8)
    assert f.color[30, 10, 0] > 150 and f.color[30, 70, 2] > 150  # colour resized, not cropped
    inst = seq.instance(2)
    assert inst.shape == (60, 80) and set(np.unique(inst)) == {0, 7}
    assert f.frame_id == 2 and f.stamp == pytest.approx(2 / 30)
    # A point straight ahead in the world projects to the image centre of the depth intrinsics.
    ahead = transform_points(f.T_world_cam, np.array([[0.0, 0.0, 1.5]]))
    uv, _ = seq.intrinsics.project(transform_points(invert_transform(f.T_world_cam), ahead))
    np.testing.assert_allclose(uv[0], [39.5, 29.5], atol=1e-6)


def test_frames_with_invalid_pose_are_skipped_and_counted(tmp_path):
    _write_export(tmp_path, n=5, bad_pose=3)
    seq = ScanNetSequence(tmp_path)
    assert seq.frame_numbers == [0, 1, 2, 4]
    assert seq.skipped["invalid or missing pose"] == 1


def test_stride_keeps_every_nth_frame(tmp_path):
    _write_export(tmp_path, n=5)
    assert ScanNetSequence(tmp_path, stride=2).frame_numbers == [0, 2, 4]


def test_open_sequence_picks_the_layout(tmp_path):
    _write_export(tmp_path / "scannet")
    assert isinstance(open_sequence(tmp_path / "scannet"), ScanNetSequence)
    with pytest.raises(FileNotFoundError):
        open_sequence(tmp_path)  # neither layout
    frame = ScanNetSequence(tmp_path / "scannet")[0]
    (tmp_path / "folder").mkdir()
    write_intrinsics_txt(tmp_path / "folder" / "camera-intrinsics.txt", frame.intrinsics)
    write_frame(tmp_path / "folder", frame)
    assert isinstance(open_sequence(tmp_path / "folder"), FolderSequence)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a ScanNet-style"):
        ScanNetSequence(tmp_path)
    _write_export(tmp_path)
    (tmp_path / "intrinsic" / "intrinsic_depth.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="intrinsic_depth.txt"):
        ScanNetSequence(tmp_path)


def test_all_poses_invalid_is_a_clear_error(tmp_path):
    _write_export(tmp_path, n=1, bad_pose=0)
    with pytest.raises(ValueError, match="no frame has a depth image and a valid pose"):
        ScanNetSequence(tmp_path)
