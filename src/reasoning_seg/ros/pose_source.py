"""Where the node's camera poses come from: TF, the pose topics, or (``auto``) whichever delivers.

A robot publishes its camera pose on TF (``map`` <- optical frame, REP-105); a recording or a
simple SLAM front end may publish ``camera/pose`` instead. With ``pose_source: auto`` the node
listens to both and takes the first that can place an image (TF when both can), logs the choice
and keeps it: mixing two pose sources would tear the map where they disagree. Until one delivers,
image pairs wait (bounded by the node's pending queue) and ``/diagnostics`` goes WARN after
:data:`WARN_AFTER` seconds, naming the sources it waits for, so a misconfigured robot never ends
up with a silently empty map.

TF questions are asked through the tf2 API (``lookup_transform`` at the image stamp, never blocking:
a pair whose TF has not arrived waits in the node's queue for at most ``tf_timeout``; at time 0 for
"is there any transform between the frames yet?"), never by reading tf2's exception texts, which
differ between cases and releases. A pair stamped 0 is refused under TF: tf2 reads time 0 as "the
newest transform" and would place it with a later pose.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import rclpy
import rclpy.duration
import rclpy.time
from rclpy.node import Node
from sensor_msgs.msg import Image

from reasoning_seg.io.frame_sync import PoseBuffer
from reasoning_seg.ros.conversions import stamp_to_sec, transform_to_matrix
from reasoning_seg.ros.params import NodeConfig

#: Outcomes of a pose lookup that make a pair wait (bounded) instead of being dropped at once:
#: TF has the frames but not yet the pair's stamp (the publisher lags the camera), or no pose
#: source has delivered anything yet (the first transform or pose may still be on its way).
WAIT_REASONS = ("tf_future", "tf_missing", "no_source_yet")
#: Seconds after the first image pair without any pose source delivering before /diagnostics warns.
WARN_AFTER = 3.0
#: Topics a ``topic`` (or ``auto``) pose source listens to.
POSE_TOPICS = ("camera/pose", "camera/transform")


class PoseSource:
    """The node's camera-pose provider; see the module docstring for the ``auto`` rule.

    ``tf2_ros`` is the module (or None where it is not importable): passed in so the node decides
    once what is installed. ``poses`` holds the poses that arrived on the topics.
    """

    def __init__(self, node: Node, cfg: NodeConfig, tf2_ros: Any | None) -> None:
        self.cfg = cfg
        self.mode = cfg.pose_source
        if self.mode == "tf" and tf2_ros is None:
            raise ValueError("pose_source is 'tf' but tf2_ros is not importable in this installation")
        self.poses = PoseBuffer(cfg.pose_max_age)
        self.tf_buffer = None
        if self.mode in ("tf", "auto") and tf2_ros is not None:
            self.tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self.tf_buffer, node)
        # The source in use: fixed by the mode, or chosen in auto mode when one first delivers.
        self.chosen: str | None = None
        if self.mode == "topic" or (self.mode == "auto" and self.tf_buffer is None):
            self.chosen = "topic"
        elif self.mode == "tf":
            self.chosen = "tf"
        self._first_pair: float | None = None  # monotonic time of the first image pair
        self._delivered = False  # a pose was found for at least one pair
        self._log = node.get_logger()
        self._last_frame = ""  # the camera frame of the latest pair (for messages)

    # ------------------------------------------------------------------ what the node asks
    @property
    def listens_to_topics(self) -> bool:
        """Whether the node subscribes to :data:`POSE_TOPICS`."""
        return self.mode in ("topic", "auto")

    def describe(self) -> str:
        """One line for logs and /diagnostics: the mode and the source in use."""
        tf = f"TF '{self.cfg.map_frame}' <- '{self.cfg.camera_frame or self._last_frame or 'image frame_id'}'"
        topics = " / ".join(POSE_TOPICS)
        if self.mode == "auto":
            if self.chosen is None:
                return f"auto (waiting for {tf} or {topics})"
            return f"auto -> {tf if self.chosen == 'tf' else topics}"
        return tf if self.chosen == "tf" else topics

    def waiting_problem(self) -> str | None:
        """Why /diagnostics should warn: images arrive but no pose source has delivered for a while."""
        if self._delivered or self._first_pair is None:
            return None
        waited = time.monotonic() - self._first_pair
        if waited < WARN_AFTER:
            return None
        frame = self._last_frame or "<the image frame_id>"
        wanted = []
        if self.tf_buffer is not None:
            wanted.append(f"TF '{self.cfg.map_frame}' <- '{frame}'")
        if self.listens_to_topics:
            wanted.append(f"a pose on {' or '.join(POSE_TOPICS)} with frame_id '{self.cfg.map_frame}'")
        return f"no camera pose for {waited:.0f} s since images arrived: waiting for {' or '.join(wanted)}"

    def saw_pair(self) -> None:
        """Note that an image pair arrived (starts the no-pose warning clock)."""
        if self._first_pair is None:
            self._first_pair = time.monotonic()

    def clear_topic_poses(self) -> None:
        """Forget the topic poses (their source restarted: a replayed bag, a reset simulation)."""
        self.poses.clear()

    # ------------------------------------------------------------------ lookups
    def lookup(self, stamp: float, color: Image) -> tuple[np.ndarray | None, str, str]:
        """``(T_map_camera, "", "")`` or ``(None, reason, detail)`` for the pair stamped ``stamp``.

        Reasons in :data:`WAIT_REASONS` mean the pair may wait; the node counts the others (and
        these, when the pair finally has to go) under ``dropped.<reason>``.
        """
        self._decide(color)
        if self.chosen is None:
            return None, "no_source_yet", f"no pose source has delivered yet ({self.describe()})"
        if self.chosen == "tf":
            out = self._tf_lookup(color)
        else:
            out = self.poses.lookup_reason(stamp)
        if out[0] is not None:
            self._delivered = True
        return out

    def _decide(self, color: Image) -> None:
        if self.chosen is not None:
            return
        if self.tf_buffer is not None and self._tf_has_frames(color):
            self.chosen = "tf"
        elif len(self.poses) > 0:
            self.chosen = "topic"
        else:
            return
        self._log.info(f"pose source: {self.describe()} (the first to deliver; kept from now on)")

    def _frame(self, color: Image) -> str:
        frame = self.cfg.camera_frame or color.header.frame_id
        self._last_frame = frame
        return frame

    def _tf_has_frames(self, color: Image) -> bool:
        frame = self._frame(color)
        if not frame:
            return False
        try:  # time 0 = the newest transform tf2 holds between the two frames
            self.tf_buffer.lookup_transform(self.cfg.map_frame, frame, rclpy.time.Time())
        except Exception:  # noqa: BLE001 - tf2 raises several unrelated exception types
            return False
        return True

    def _tf_lookup(self, color: Image) -> tuple[np.ndarray | None, str, str]:
        """TF at the image stamp, and if there is none, why.

        ``tf_future``: TF has the frames but has not reached the stamp yet; ``tf_missing``: no
        transform between the frames (yet); ``zero_stamp``: the image is stamped 0 (tf2 would answer
        with its newest transform); ``no_pose``: anything else (the stamp is older than the
        buffer, a frame is disconnected ...).
        """
        frame = self._frame(color)
        if not frame:
            return None, "no_pose", "the image has no frame_id and camera_frame is not set"
        if color.header.stamp.sec == 0 and color.header.stamp.nanosec == 0:
            # tf2 answers a lookup at time 0 with its newest transform: the frame would be placed
            # with some later pose, silently. Refuse instead (a driver or player that leaves the
            # stamp unset is the cause).
            return (
                None,
                "zero_stamp",
                (
                    "the image is stamped 0, which tf2 reads as 'the newest transform': "
                    "stamp images with their capture time"
                ),
            )
        try:
            # Never blocks (timeout 0): the pair waits in the node's queue instead, bounded by tf_timeout.
            tf = self.tf_buffer.lookup_transform(
                self.cfg.map_frame, frame, color.header.stamp, rclpy.duration.Duration(seconds=0.0)
            )
        except Exception as exc:  # noqa: BLE001 - tf2 raises several unrelated exception types
            text = f"TF {self.cfg.map_frame} <- {frame}: {type(exc).__name__}: {exc}"
            try:
                newest = self.tf_buffer.lookup_transform(self.cfg.map_frame, frame, rclpy.time.Time())
            except Exception:  # noqa: BLE001 - none at all between the frames (yet)
                return None, "tf_missing", text
            if stamp_to_sec(newest.header.stamp) < stamp_to_sec(color.header.stamp):
                return None, "tf_future", text
            return None, "no_pose", text
        try:
            return transform_to_matrix(tf.transform), "", ""
        except ValueError as exc:
            return None, "bad_pose", f"TF {self.cfg.map_frame} <- {frame}: {exc}"

    def ready(self, stamp: float, color: Image, time_jump_back: float) -> bool:
        """Whether the pair's pose can be decided now (else it waits in the pending queue).

        Topic poses: a pose at or after the stamp (interpolation, not extrapolation) on the same
        timeline; a pair far older than the newest pose is from a restarted source and waits for
        the new timeline. TF: anything but "not there yet".
        """
        self._decide(color)
        if self.chosen is None:
            return False
        if self.chosen == "tf":
            return self._tf_lookup(color)[1] not in WAIT_REASONS
        newest = self.poses.newest_stamp
        return newest is not None and stamp <= newest <= stamp + time_jump_back
