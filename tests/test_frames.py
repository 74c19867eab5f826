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


# ---------------------------------------------------------------- limits, exactly at and just past them
# (added after a mutation run over frames.py: these limits and messages had no test that pinned them)
def _intr(**kw):
    base = dict(width=64, height=48, fx=50.0, fy=47.0, cx=32.5, cy=22.0)
    base.update(kw)
    return CameraIntrinsics(**base)


@pytest.mark.parametrize(
    "changes,ok",
    [
        ({"cx": -32.0}, True),  # -0.5 w: the margin's edge is inside
        ({"cx": -35.0}, False),
        ({"cx": 96.0}, True),  # 1.5 w
        ({"cx": 99.0}, False),
        ({"cx": 20.0}, True),
        ({"cy": -24.0}, True),  # -0.5 h
        ({"cy": -27.0}, False),
        ({"cy": 72.0}, True),  # 1.5 h
        ({"cy": 75.0}, False),
        ({"fx": 0.05 * 64}, True),  # FOCAL_RANGE's ends are inside
        ({"fx": 0.04 * 64}, False),
        ({"fx": 20.0 * 64}, True),
        ({"fx": 21.0 * 64}, False),
        ({"fy": 0.05 * 48}, True),
        ({"fy": 0.04 * 48}, False),
        ({"fy": 20.0 * 48}, True),
        ({"fy": 21.0 * 48}, False),
    ],
)
def test_intrinsics_limits_are_inclusive_and_tight(changes, ok):
    frame = good_frame(intrinsics=_intr(**changes))
    if ok:
        sanitize(frame)
        return
    with pytest.raises(FrameRejected) as exc:
        sanitize(frame)
    assert exc.value.reason == "bad_intrinsics"
    assert "principal point" in exc.value.detail or "focal" in exc.value.detail


def test_every_rejection_says_what_was_wrong():
    """The counted reason comes with a detail a person can act on (numbers, the parameter to change)."""
    details = {}
    for reason, changes in BAD:
        with pytest.raises(FrameRejected) as exc:
            sanitize(good_frame(**changes))
        assert isinstance(exc.value.detail, str) and len(exc.value.detail) > 10, (reason, exc.value.detail)
        assert str(exc.value) == f"{reason}: {exc.value.detail}"
        details.setdefault(reason, exc.value.detail)
    assert "intrinsics" in details["no_intrinsics"]
    assert "millimetres" in details["depth_units"]
    assert "47" in details["size_mismatch"] or "100" in details["size_mismatch"]
    assert "rigid" in details["bad_pose"]
    assert "nan" in details["bad_stamp"].lower()
    assert "%" in details["no_depth"]
    with pytest.raises(FrameRejected) as exc:
        sanitize(good_frame(intrinsics="not a camera"))
    assert exc.value.reason == "no_intrinsics" and "str" in exc.value.detail


def test_image_size_and_map_extent_limits():
    big = good_frame()
    sanitize_frame(big, 0.2, 5.0, 0.05, max_image_pixels=64 * 48)  # exactly at the limit: kept
    with pytest.raises(FrameRejected) as exc:
        sanitize_frame(big, 0.2, 5.0, 0.05, max_image_pixels=64 * 48 - 1)
    assert exc.value.reason == "image_too_large" and "max_image_pixels" in exc.value.detail
    T = np.eye(4)
    T[:3, 3] = [1.2, 1.6, 0.0]  # 2 m from the origin
    sanitize_frame(good_frame(T_world_cam=T), 0.2, 5.0, 0.05, max_extent=2.0)  # at the limit: kept
    sanitize_frame(good_frame(T_world_cam=T), 0.2, 5.0, 0.05, max_extent=2.1)  # (|T[:4, 3]| would be 2.24)
    with pytest.raises(FrameRejected) as exc:
        sanitize_frame(good_frame(T_world_cam=T), 0.2, 5.0, 0.05, max_extent=1.9)
    assert exc.value.reason == "pose_out_of_bounds" and "max_extent" in exc.value.detail


def test_depth_limits_units_check_and_valid_fraction():
    depth = np.full((48, 64), 2.0, np.float32)
    depth[0, 0], depth[0, 1] = 0.2, 5.0  # exactly depth_min and depth_max: readings
    out = sanitize(good_frame(depth=depth))
    assert out.depth[0, 0] == np.float32(0.2) and out.depth[0, 1] == 5.0
    assert out.frame_id == 7 and out.T_world_cam.dtype == np.float64
    # the millimetre check: a median of 100 m is still metres, 101 m is not
    sanitize_frame(good_frame(depth=np.full((48, 64), 100.0, np.float32)), 0.2, 200.0, 0.05)
    with pytest.raises(FrameRejected) as exc:
        sanitize_frame(good_frame(depth=np.full((48, 64), 100.5, np.float32)), 0.2, 200.0, 0.05)
    assert exc.value.reason == "depth_units"
    # valid fraction: 1 % valid against a 5 % minimum is rejected, 6 % passes
    sparse = np.zeros((48, 64), np.float32)
    sparse.flat[:31] = 2.0  # 31 / 3072 = 1 %
    with pytest.raises(FrameRejected) as exc:
        sanitize(good_frame(depth=sparse))
    assert exc.value.reason == "no_depth" and "1.0%" in exc.value.detail
    sparse.flat[:185] = 2.0  # 6 %
    sanitize(good_frame(depth=sparse))
