"""Input hygiene: every rejection reason of sanitize_frame, the pixel rules, and the pipeline's counters."""

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.frames import REJECT_REASONS, FrameRejected, RGBDFrame, sanitize_frame
from reasoning_seg.pipeline import ReasoningSegPipeline

INTR = CameraIntrinsics(64, 48, 50.0, 47.0, 32.5, 22.0)  # fx != fy, off-centre: a swap shows


def good_frame(**changes):
    rng = np.random.default_rng(0)
    f = RGBDFrame(
        rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
        np.full((48, 64), 2.0, np.float32),
        INTR,
        np.eye(4),
        stamp=1.0,
        frame_id=7,
    )
    for k, v in changes.items():
        setattr(f, k, v)
    return f


def sanitize(frame):
    return sanitize_frame(frame, depth_min=0.2, depth_max=5.0, min_valid_fraction=0.05)


SHEARED = np.eye(4)
SHEARED[0, 1] = 0.3
SCALED = np.diag([2.0, 2.0, 2.0, 1.0])
NAN_POSE = np.eye(4)
NAN_POSE[0, 3] = np.nan

BAD = [
    ("no_intrinsics", {"intrinsics": None}),
    ("bad_intrinsics", {"intrinsics": CameraIntrinsics(64, 48, 50.0, 50.0, 640.0, 23.5)}),
    ("bad_depth", {"depth": np.full((48, 64), 2000, np.uint16)}),
    ("bad_depth", {"depth": np.full((48, 64, 1), 2.0, np.float32)}),
    ("depth_units", {"depth": np.full((48, 64), 2000.0, np.float32)}),
    ("size_mismatch", {"depth": np.full((47, 64), 2.0, np.float32)}),
    ("size_mismatch", {"color": np.zeros((48, 100, 3), np.uint8)}),  # other aspect ratio
    ("bad_color", {"color": np.zeros((48, 64), np.uint8)}),
    ("bad_color", {"color": np.zeros((48, 64, 3), np.float32)}),
    ("bad_pose", {"T_world_cam": NAN_POSE}),
    ("bad_pose", {"T_world_cam": SHEARED}),
    ("bad_pose", {"T_world_cam": SCALED}),
    ("bad_pose", {"T_world_cam": np.eye(3)}),
    ("bad_stamp", {"stamp": float("nan")}),
    ("no_depth", {"depth": np.zeros((48, 64), np.float32)}),
    ("no_depth", {"depth": np.full((48, 64), np.nan, np.float32)}),
    ("no_depth", {"depth": np.full((48, 64), 9.0, np.float32)}),  # all beyond depth_max
]


@pytest.mark.parametrize("reason,changes", BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_each_bad_input_is_rejected_with_its_reason(reason, changes):
    with pytest.raises(FrameRejected) as exc:
        sanitize(good_frame(**changes))
    assert exc.value.reason == reason
    assert reason in REJECT_REASONS


def test_bad_pixels_become_no_reading_and_the_input_is_not_modified():
    depth = np.full((48, 64), 2.0, np.float32)
    depth[0, :4] = [np.nan, np.inf, -1.0, 0.1]  # NaN, inf, negative, nearer than depth_min
    depth[1, :2] = [6.0, 5.0]  # beyond depth_max, exactly depth_max (kept)
    before = depth.copy()
    out = sanitize(good_frame(depth=depth))
    assert out.depth.dtype == np.float32
    np.testing.assert_array_equal(out.depth[0, :4], 0.0)
    assert out.depth[1, 0] == 0.0 and out.depth[1, 1] == 5.0
    np.testing.assert_array_equal(depth, before)  # NaNs compare equal here


def test_colour_of_another_resolution_is_resampled_at_depth_pixel_centres():
    # Colour at 3x the depth resolution, each 3x3 block painted with its depth pixel's index: the
    # centre rule must pick the middle of each block (and thus the value of that depth pixel).
    ids = np.arange(48 * 64).reshape(48, 64)
    big = np.repeat(np.repeat(ids, 3, axis=0), 3, axis=1)
    big[1::3, 1::3] += 10_000  # mark the centre pixel of every block
    color = np.stack([big % 256, (big // 256) % 256, big // 65536], axis=-1).astype(np.uint8)
    out = sanitize(good_frame(color=color))
    c = out.color.astype(np.int64)
    got = c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]
    np.testing.assert_array_equal(got, ids + 10_000)


def test_rgba_drops_alpha_and_half_resolution_colour_is_upsampled():
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    assert sanitize(good_frame(color=rgba)).color.shape == (48, 64, 3)
    small = np.zeros((24, 32, 3), np.uint8)
    small[:, 16:] = 255
    out = sanitize(good_frame(color=small))
    assert out.color.shape == (48, 64, 3)
    assert (out.color[:, :32] == 0).all() and (out.color[:, 32:] == 255).all()


def test_pipeline_counts_every_reason_and_leaves_the_map_untouched():
    pipe = ReasoningSegPipeline(PipelineConfig())
    for _reason, changes in BAD:
        with pytest.raises(FrameRejected):
            pipe.add_frame(good_frame(**changes))
    expected = {}
    for reason, _ in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(pipe.stats.rejected) == expected
    assert pipe.stats.frames_received == len(BAD)
    assert pipe.map.frames_integrated == 0 and pipe.map.num_blocks == 0 and len(pipe.keyframes) == 0
    pipe.add_frame(good_frame())
    assert pipe.map.frames_integrated == 1 and pipe.stats.frames_integrated == 1
