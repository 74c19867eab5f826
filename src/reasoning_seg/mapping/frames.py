"""The posed RGB-D frame that flows from the sensor boundary into the map and keyframe window.

:func:`sanitize_frame` is the single gate every frame passes before it can touch the map: a frame is
either made safe (bad pixels become "no reading") or rejected with a short, stable reason that the
pipeline counts and the node reports in /diagnostics (see :data:`REJECT_REASONS`).
"""

from __future__ import annotations

import math
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


REJECT_REASONS: dict[str, str] = {
    "no_intrinsics": "the frame has no camera intrinsics (no CameraInfo yet)",
    "bad_intrinsics": "intrinsics are not a usable pinhole model (principal point far outside the image)",
    "bad_depth": "depth is not an (H, W) floating-point image in metres",
    "depth_units": "valid depth readings look like millimetres, not metres (wrong depth_scale?)",
    "size_mismatch": "depth does not match the intrinsics, or colour has another aspect ratio",
    "bad_color": "colour is not an (H, W, 3) or (H, W, 4) uint8 image",
    "bad_pose": "the camera pose is not a finite rigid transform",
    "pose_out_of_bounds": "the camera is farther from the map origin than map.max_extent",
    "pose_jump": "the camera moved faster than map.max_speed since the last accepted frame, and too "
    "few following frames confirmed the new place",
    "image_too_large": "the image has more pixels than map.max_image_pixels",
    "bad_stamp": "the time stamp is not a finite number",
    "no_depth": "too few valid depth readings after range filtering",
}
"""Every reason :func:`sanitize_frame` can give, with what it means (for counters and docs)."""


class FrameRejected(ValueError):  # noqa: N818 - reads as the event it reports
    """A frame that cannot be integrated; ``reason`` is a key of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Focal length in units of the image side: 0.05 is a 169 degree field of view, 20 one of 2.9 degrees.
# Beyond either no pinhole camera a robot carries produces the number, and a tiny focal length
# spreads one frame over the whole map (fx = 1e-3 at 320x240 allocated 76,800 blocks).
FOCAL_RANGE = (0.05, 20.0)


def focal_length_problem(intr: CameraIntrinsics) -> str:
    """Why ``intr``'s focal lengths are not a real camera's (:data:`FOCAL_RANGE`), or "" if they are.

    Shared by :func:`sanitize_frame` and the CameraInfo conversion of the ROS layer.
    """
    lo, hi = FOCAL_RANGE
    if lo <= intr.fx / intr.width <= hi and lo <= intr.fy / intr.height <= hi:
        return ""
    return (
        f"focal lengths fx={intr.fx:g}, fy={intr.fy:g} px do not fit a {intr.width}x{intr.height} "
        f"camera (allowed {lo:g}-{hi:g} image sides)"
    )


def sanitize_frame(
    frame: RGBDFrame,
    depth_min: float,
    depth_max: float,
    min_valid_fraction: float,
    max_extent: float = math.inf,
    max_image_pixels: int = 0,
) -> RGBDFrame:
    """Return a frame safe to integrate, or raise :class:`FrameRejected` with a counted reason.

    Rules (why: a single bad frame must never corrupt a map that took minutes to build):

    - intrinsics must be present, and the principal point within the image (with a margin of half
      the image): a CameraInfo for another resolution would otherwise fuse everything misplaced;
    - depth must be a floating-point image of exactly the intrinsics' size; integer depth is refused
      because its unit is ambiguous (convert millimetres at the boundary with ``depth_scale``);
    - NaN/inf/negative and out-of-range depth become 0 (no reading) rather than rejecting the frame;
    - if the median valid reading exceeds 100 (no indoor depth sensor reads 100 m) the image is in
      millimetres: rejected as ``depth_units`` rather than silently emptied by the range filter;
    - colour of a different size is resized to the depth image by nearest neighbour, sampling each
      depth pixel's centre, when the aspect ratios agree within 1 % (drivers often stream colour at
      a higher resolution than registered depth); a different aspect ratio cannot be registered
      without the colour camera's own intrinsics and extrinsics and is rejected. RGBA drops alpha;
    - the pose must be a finite rigid transform (no NaN, scale or shear), the camera at most
      ``max_extent`` metres from the map origin (``pose_out_of_bounds``: a pose of 1e300 m would
      poison every later query), and the stamp finite;
    - the focal lengths must give a field of view a real camera has (:data:`FOCAL_RANGE`) and the
      image at most ``max_image_pixels`` pixels (0 = no limit): keyframes keep full images;
    - frames with almost no valid depth are rejected (nothing to integrate, and usually a covered
      or saturated sensor).
    """
    from reasoning_seg.camera import is_rigid_transform

    intr = frame.intrinsics
    if intr is None:
        raise FrameRejected("no_intrinsics", "frame has no camera intrinsics")
    if not isinstance(intr, CameraIntrinsics):
        raise FrameRejected(
            "no_intrinsics", f"intrinsics must be CameraIntrinsics, got {type(intr).__name__}"
        )
    if not (
        -0.5 * intr.width <= intr.cx <= 1.5 * intr.width
        and -0.5 * intr.height <= intr.cy <= 1.5 * intr.height
    ):
        raise FrameRejected(
            "bad_intrinsics",
            f"principal point ({intr.cx:.1f}, {intr.cy:.1f}) is far outside the "
            f"{intr.width}x{intr.height} image",
        )
    why = focal_length_problem(intr)
    if why:
        raise FrameRejected("bad_intrinsics", why)
    if max_image_pixels and intr.width * intr.height > max_image_pixels:
        raise FrameRejected(
            "image_too_large",
            f"{intr.width}x{intr.height} is more than map.max_image_pixels={max_image_pixels} pixels",
        )
    depth = np.asarray(frame.depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise FrameRejected(
            "bad_depth", f"expected an (H, W) float image in metres, got {depth.shape} {depth.dtype}"
        )
    if depth.shape != (intr.height, intr.width):
        raise FrameRejected("size_mismatch", f"depth {depth.shape} vs camera info {intr.width}x{intr.height}")
    color = _sanitize_color(np.asarray(frame.color), intr)
    T = np.asarray(frame.T_world_cam)
    if T.shape != (4, 4) or not is_rigid_transform(T):
        raise FrameRejected("bad_pose", "camera pose is not a finite rigid transform")
    distance = float(np.linalg.norm(T[:3, 3]))
    if distance > max_extent:
        raise FrameRejected(
            "pose_out_of_bounds",
            f"camera is {distance:.4g} m from the map origin (map.max_extent {max_extent:g} m)",
        )
    try:
        stamp = float(frame.stamp)
    except (TypeError, ValueError):
        stamp = math.nan
    if not math.isfinite(stamp):
        raise FrameRejected("bad_stamp", f"stamp {frame.stamp!r} is not a finite number")
    d = depth.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        sample = d[::7, ::7]
        sample = sample[np.isfinite(sample) & (sample > 0)]
        if sample.size and float(np.median(sample)) > 100.0:
            raise FrameRejected(
                "depth_units",
                f"median valid depth is {float(np.median(sample)):.0f}: millimetres passed as metres?",
            )
        d[~(np.isfinite(d) & (d >= depth_min) & (d <= depth_max))] = 0.0
    valid = float(np.count_nonzero(d)) / d.size
    if valid < min_valid_fraction:
        raise FrameRejected("no_depth", f"only {valid:.1%} of depth pixels are valid")
    return RGBDFrame(color, d, intr, T.astype(np.float64), stamp, frame.frame_id)


class PoseJumpGate:
    """Refuses camera positions that jump faster than ``max_speed`` (pose_jump), unless confirmed.

    A SLAM relocalisation or loop closure can move the reported pose by metres at once; a corrupt
    or hostile pose does too, and one such frame fuses a copy of the room somewhere else (14
    garbage frames 40-118 m away made the block budget evict the whole real room). A jump is
    accepted once ``confirm`` frames in a row agree with each other (each within the speed bound
    of the previous refused one): a real relocalisation keeps reporting the new place, garbage does
    not. Stamps going back (a replayed bag) or a sensor silent for more than 2 s make the next frame
    a new start; a stream of refused frames does not (garbage cannot wait its way in).
    """

    MIN_STEP = 0.5  # metres always allowed between two frames (stamp jitter, small corrections)
    NEW_START_S = 2.0

    def __init__(self, max_speed: float, confirm: int) -> None:
        self.max_speed = float(max_speed)
        self.confirm = max(1, int(confirm))
        self.reset()

    def reset(self) -> None:
        """Forget the trajectory (the next frame starts a new one)."""
        self._last: tuple[np.ndarray, float] | None = None
        self._candidates: list[tuple[np.ndarray, float]] = []
        self._seen: float | None = None  # stamp of the last frame checked, accepted or not

    def _close(self, a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> bool:
        # A long run of refused frames does not widen the allowance past NEW_START_S of motion.
        dt = min(b[1] - a[1], self.NEW_START_S)
        return float(np.linalg.norm(b[0] - a[0])) <= max(self.MIN_STEP, self.max_speed * max(dt, 0.0))

    def check(self, position: np.ndarray, stamp: float) -> None:
        """Accept (and remember) the frame's camera position or raise ``FrameRejected("pose_jump")``."""
        here = (np.asarray(position, dtype=np.float64).copy(), float(stamp))
        seen, self._seen = self._seen, here[1]
        # A new start: the first frame, stamps going back (a replayed recording), or a silent sensor.
        new_start = seen is None or here[1] < seen or here[1] - seen > self.NEW_START_S
        if self._last is None or new_start or self._close(self._last, here):
            self._last, self._candidates = here, []
            return
        if self._candidates and self._close(self._candidates[-1], here):
            self._candidates.append(here)
        else:
            self._candidates = [here]
        if len(self._candidates) >= self.confirm:
            self._last, self._candidates = here, []
            return
        jump = float(np.linalg.norm(here[0] - self._last[0]))
        raise FrameRejected(
            "pose_jump",
            f"camera moved {jump:.3g} m in {here[1] - self._last[1]:.3g} s (map.max_speed "
            f"{self.max_speed:g} m/s); {len(self._candidates)} of {self.confirm} frames confirm "
            "the new place",
        )


def _sanitize_color(color: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    if color.ndim != 3 or color.shape[2] not in (3, 4) or color.dtype != np.uint8:
        raise FrameRejected("bad_color", f"expected HxWx3 uint8 RGB, got {color.shape} {color.dtype}")
    if color.shape[2] == 4:
        color = color[..., :3]
    ch, cw = color.shape[:2]
    if (ch, cw) != (intr.height, intr.width):
        if abs(cw / ch - intr.width / intr.height) > 0.01 * intr.width / intr.height:
            raise FrameRejected(
                "size_mismatch",
                f"colour {cw}x{ch} and depth {intr.width}x{intr.height} have different aspect ratios",
            )
        # Nearest neighbour at each depth pixel's centre: row r of the depth image covers colour rows
        # [r * ch / h, (r + 1) * ch / h); its centre is (r + 0.5) * ch / h.
        rows = np.minimum(((np.arange(intr.height) + 0.5) * ch / intr.height).astype(np.int64), ch - 1)
        cols = np.minimum(((np.arange(intr.width) + 0.5) * cw / intr.width).astype(np.int64), cw - 1)
        color = color[rows][:, cols]
    return np.ascontiguousarray(color)
