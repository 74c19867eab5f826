"""Loop closure in the core: keyframes take corrected poses and the map is rebuilt from them (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.sim.scene import SyntheticScene, simulate_pose_drift
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter

INTR = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5).scaled(160, 120)
VOXEL = 0.05


@pytest.fixture(scope="module")
def world():
    scene = SyntheticScene.generate(2)
    true = scene.trajectory(40, seed=2)
    drifted = simulate_pose_drift(true, 0.01, seed=5)  # ~6 cm per axis after 40 frames
    images = [scene.render(INTR, T)[:2] for T in true]
    return scene, true, drifted, images


def _pipeline(scene, images, poses) -> ReasoningSegPipeline:
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": VOXEL, "keyframes.min_translation": 0.1, "keyframes.window_size": 64})
    pipe = ReasoningSegPipeline(cfg, SimulatedSegmenter(scene, "oracle"))
    for i, ((color, depth), T) in enumerate(zip(images, poses, strict=True)):
        pipe.add_frame(RGBDFrame(color, depth, INTR, T, stamp=i / 30.0, frame_id=i))
    return pipe


def _on_mesh(scene, pipe) -> float:
    """Fraction of map surface points within one voxel of the true mesh: how well the map sits."""
    pts = pipe.surface().points
    return float(np.mean(scene.label_points(pts, max_distance=VOXEL) > 0))


def test_a_loop_closure_puts_keyframes_and_map_back_on_the_true_poses(world) -> None:
    scene, true, drifted, images = world
    pipe = _pipeline(scene, images, drifted)
    before = _on_mesh(scene, pipe)
    stamps = [i / 30.0 for i in range(len(true))]
    report = pipe.correct_poses(list(zip(stamps, true, strict=True)))
    # Every keyframe but the first (drift starts at zero there) moved.
    assert report.keyframes_moved == report.keyframes - 1 and report.keyframes == len(pipe.keyframes) > 5
    assert report.rejected == 0 and report.max_shift_m > 0.02
    for kf in pipe.keyframes.snapshot():
        np.testing.assert_array_equal(kf.T_world_cam, true[round(kf.frame.stamp * 30)])
    after = _on_mesh(scene, pipe)
    still = _on_mesh(scene, _pipeline(scene, images, true))
    assert before < still - 0.05  # the drift is visible in the map...
    assert after > still - 0.03, (before, after, still)  # ...and the corrected map sits like a still one


def test_bad_or_unmatched_corrections_change_nothing(world) -> None:
    scene, true, drifted, images = world
    pipe = _pipeline(scene, images[:12], drifted[:12])
    version, poses = pipe.map.version, [k.T_world_cam.copy() for k in pipe.keyframes.snapshot()]
    scaled = true[0].copy()
    scaled[:3, :3] *= 1.5
    far = true[0].copy()
    far[0, 3] = 1e6
    nan = np.full((4, 4), np.nan)
    report = pipe.correct_poses([(0.0, scaled), (0.0, far), (0.0, nan), (float("nan"), true[0])])
    assert report.rejected == 4 and report.keyframes_moved == 0
    report = pipe.correct_poses([(100.0, true[0])])  # no keyframe near that stamp
    assert report.keyframes_moved == 0 and report.rejected == 0
    assert pipe.map.version == version
    for kf, T in zip(pipe.keyframes.snapshot(), poses, strict=True):
        np.testing.assert_array_equal(kf.T_world_cam, T)
