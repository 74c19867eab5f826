"""The posed RGB-D frame that flows from the sensor boundary into the map and keyframe window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reasoning_seg.camera import CameraIntrinsics


@dataclass
class RGBDFrame:
    """One registered colour + depth pair with its camera pose.

    ``color`` is (H, W, 3) uint8 RGB; ``depth`` is (H, W) float32 metres (0/NaN = no reading), both
    at ``intrinsics`` resolution; ``T_world_cam`` maps the optical frame into the map frame;
    ``stamp`` is seconds; ``frame_id`` is the sensor's sequence number (or any increasing id).
    """

    color: np.ndarray
    depth: np.ndarray
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray
    stamp: float = 0.0
    frame_id: int = 0


class FrameRejected(ValueError):  # noqa: N818 - reads as the event it reports
    """A frame that cannot be integrated; ``reason`` is a short stable key for counters/diagnostics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sanitize_frame(
    frame: RGBDFrame, depth_min: float, depth_max: float, min_valid_fraction: float
) -> RGBDFrame:
    """Return a frame safe to integrate, or raise :class:`FrameRejected` with a counted reason.

    Rules (why: a single bad frame must never corrupt a map that took minutes to build):
    - depth must match the intrinsics' size; NaN/inf/negative and out-of-range depth become 0
      (no reading) rather than rejecting the whole frame;
    - colour of a different size is resized to the depth image (nearest neighbour) when the aspect
      ratios agree - drivers often stream colour at a higher resolution than registered depth; a
      different aspect ratio cannot be registered without extrinsics and is rejected;
    - the pose must be a finite rigid transform;
    - frames with almost no valid depth are rejected (nothing to integrate, and usually a
      covered or saturated sensor).
    """
    from reasoning_seg.camera import is_rigid_transform

    intr = frame.intrinsics
    depth = np.asarray(frame.depth)
    if depth.ndim != 2 or depth.shape != (intr.height, intr.width):
        raise FrameRejected("size_mismatch", f"depth {depth.shape} vs camera info {intr.width}x{intr.height}")
    color = np.asarray(frame.color)
    if color.ndim != 3 or color.shape[2] != 3 or color.dtype != np.uint8:
        raise FrameRejected("bad_color", f"expected HxWx3 uint8 RGB, got {color.shape} {color.dtype}")
    if color.shape[:2] != depth.shape:
        ch, cw = color.shape[:2]
        if abs(cw / ch - intr.width / intr.height) > 0.01:
            raise FrameRejected(
                "size_mismatch",
                f"colour {cw}x{ch} and depth {intr.width}x{intr.height} have different aspect ratios",
            )
        rows = (np.arange(intr.height) * ch // intr.height).astype(np.int64)
        cols = (np.arange(intr.width) * cw // intr.width).astype(np.int64)
        color = color[rows][:, cols]
    if not is_rigid_transform(frame.T_world_cam):
        raise FrameRejected("bad_pose", "camera pose is not a finite rigid transform")
    d = depth.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        d[~np.isfinite(d) | (d < depth_min) | (d > depth_max)] = 0.0
    valid = float(np.count_nonzero(d)) / d.size
    if valid < min_valid_fraction:
        raise FrameRejected("no_depth", f"only {valid:.1%} of depth pixels are valid")
    return RGBDFrame(
        np.ascontiguousarray(color),
        d,
        intr,
        np.asarray(frame.T_world_cam, dtype=np.float64),
        frame.stamp,
        frame.frame_id,
    )
