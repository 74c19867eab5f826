"""Camera input of the node: colour/depth pairing, poses, CameraInfo, integration.

A mixin of :class:`~reasoning_seg.ros.node.ReasoningSegNode` (its state is set up there).
"""

from __future__ import annotations

import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from reasoning_seg.mapping.frames import FrameRejected, RGBDFrame
from reasoning_seg.ros.conversions import (
    camera_info_to_intrinsics,
    depth_msg_to_metres,
    image_msg_to_rgb8,
    pose_to_matrix,
    stamp_to_sec,
    transform_to_matrix,
)
from reasoning_seg.ros.node_common import (
    _TIME_JUMP_BACK,
)


class IngestMixin:
    """Sensor callbacks; they run in the mutually exclusive sensors group, in arrival order."""

    # ------------------------------------------------------------------ sensor input
    def _warn(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._warn(reason, f"frame dropped ({reason}): {detail}")

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            intr = camera_info_to_intrinsics(msg)
        except ValueError as exc:
            self._reject("bad_camera_info", str(exc))
            return
        stamp = stamp_to_sec(msg.header.stamp)
        newest = self._infos.newest_stamp
        if newest is not None and stamp < newest - _TIME_JUMP_BACK:
            self._infos.clear()  # the source restarted: its old infos would be joined by stamp
        self._intrinsics = intr
        self._infos.add(stamp, intr)
        self._drain_pending()

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            self._add_pose(msg.header, pose_to_matrix(msg.pose))
        except ValueError as exc:
            self._reject("bad_pose", str(exc))

    def _on_transform(self, msg: TransformStamped) -> None:
        try:
            self._add_pose(msg.header, transform_to_matrix(msg.transform))
        except ValueError as exc:
            self._reject("bad_pose", str(exc))

    def _add_pose(self, header: Header, T: np.ndarray) -> None:
        if self._pose.chosen == "tf":
            return  # auto chose TF: the topic poses are not used (nor buffered, nor drained for)
        if header.frame_id != self.cfg.map_frame:  # an empty frame_id says nothing: refused too
            self._reject(
                "wrong_pose_frame",
                f"pose is in '{header.frame_id[:64]}', expected '{self.cfg.map_frame}'",
            )
            return
        stamp = stamp_to_sec(header.stamp)
        newest = self._pose.poses.newest_stamp
        if newest is not None and stamp < newest - _TIME_JUMP_BACK:
            # A replayed bag or a reset simulation: poses from the old timeline would be interpolated
            # with the new ones.
            self._warn("time_jump", f"pose stamps jumped back {newest - stamp:.1f} s: pose buffer reset")
            self._pose.clear_topic_poses()
        self._pose.poses.add(stamp, T)
        self._drain_pending()

    def _on_color(self, msg: Image) -> None:
        pair = self._sync.add_a(stamp_to_sec(msg.header.stamp), msg)
        if pair:
            self._enqueue(*pair)

    def _on_depth(self, msg: Image) -> None:
        pair = self._sync.add_b(stamp_to_sec(msg.header.stamp), msg)
        if pair:
            self._enqueue(*pair)

    def _on_pair(self, color: Image, depth: Image) -> None:
        self._mf_counts["pairs"] += 1
        self._enqueue(stamp_to_sec(color.header.stamp), color, depth)

    def _sync_dropped(self) -> int:
        """Images the colour/depth pairing let go unpaired, on either synchroniser.

        message_filters keeps no such count: images in minus two per pair, minus those still
        waiting in the synchroniser's queues (one dict or list per input there).
        """
        if self._mf_sync is None:
            return self._sync.dropped
        c = self._mf_counts
        queued = sum(len(q) for q in getattr(self._mf_sync, "queues", ()))
        return max(0, c["color"] + c["depth"] - 2 * c["pairs"] - queued)

    _MAX_PENDING = 10

    def _enqueue(self, stamp: float, color: Image, depth: Image) -> None:
        """Hold the pair until it can be decided; decide it anyway when it is overdue or too many wait.

        Bounded twice: a pair waits at most ``tf_timeout`` seconds (node clock, from its arrival) for
        its pose (TF or the pose topic) and CameraInfo, and at most ``_MAX_PENDING`` pairs (a third
        of a second at 30 Hz) wait at once; a source that never catches up costs one counted drop
        per pair. Waiting never blocks an executor thread (lookups are non-blocking, the node's
        0.05 s retry timer and every new message re-check).
        """
        self._pose.saw_pair()
        with self._state_lock:
            self._pairs_in += 1
        problem = self._pose.waiting_problem()
        if problem:
            self._warn("no_pose_source", problem, period=10.0)
        self._pending.append((stamp, color, depth, time.monotonic()))
        self._drain_pending()
        while len(self._pending) > self._MAX_PENDING:
            self._process(*self._pending.popleft()[:3])

    def _ready(self, stamp: float, color: Image) -> bool:
        """Whether a pair can be decided now.

        A CameraInfo for the pair's stamp (or a static one) must be known, and the pose source must
        be able to answer for the stamp (:meth:`PoseSource.ready`): pairs wait while TF or the pose
        topic has not reached their stamp, or no pose source has delivered anything yet.
        """
        if self._infos.match(stamp)[1] in ("none", "wait"):
            return False
        return self._pose.ready(stamp, color, _TIME_JUMP_BACK)

    def _drain_pending(self) -> None:
        """Decide, in arrival order, every pair up to the newest one that is ready or overdue.

        Pairs before a ready one are decided too (counted if their pose never comes): once a newer
        pair can be integrated, waiting for older ones only delays the stream. A pair that has
        waited ``tf_timeout`` seconds is decided as it stands (integrated, or dropped with its reason).
        """
        last = -1
        deadline = time.monotonic() - self.cfg.tf_timeout
        for k, (stamp, color, _, arrived) in enumerate(self._pending):
            if arrived <= deadline or self._ready(stamp, color):
                last = k
        for _ in range(last + 1):
            self._process(*self._pending.popleft()[:3])

    def _lookup_pose(self, stamp: float, color: Image) -> np.ndarray | None:
        T, reason, why = self._pose.lookup(stamp, color)
        if T is None:
            # A pair that waited and had to go: no transform or pose ever came for it (tf_future:
            # TF came but lagged too far behind the camera, counted under its own name).
            self._reject("no_pose" if reason in ("tf_missing", "no_source_yet") else reason, why)
        return T

    def _process(self, stamp: float, color: Image, depth: Image) -> None:
        """Decide one pair: integrate it or count why not. Never raises (it would stop the executor)."""
        try:
            self._process_pair(stamp, color, depth)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not take the node down
            self.rejected["internal_error"] += 1
            self.get_logger().error(f"frame at {stamp:.3f} dropped by an internal error: {exc!r}")

    def _process_pair(self, stamp: float, color: Image, depth: Image) -> None:
        intr, _ = self._infos.match(stamp)
        if intr is None:  # no CameraInfo at all, or the live one for this stamp never came
            closest = self._infos.closest(stamp)
            if closest is None:
                self._reject("no_camera_info", "no valid CameraInfo received yet")
                return
            intr = closest.item
        last = self._last_stamp
        if last is not None and stamp <= last:
            if stamp >= last - _TIME_JUMP_BACK:
                self._reject(
                    "out_of_order",
                    f"stamp {stamp:.3f} s is not after the last integrated frame ({last:.3f} s)",
                )
                return
            self._warn("time_jump", f"image stamps jumped back {last - stamp:.1f} s: restarted source?")
        T = self._lookup_pose(stamp, color)
        if T is None:
            return
        try:
            rgb = image_msg_to_rgb8(color)
            d = depth_msg_to_metres(depth, self.cfg.depth_scale)
        except ValueError as exc:
            self._reject("bad_encoding", str(exc))
            return
        frame = RGBDFrame(rgb, d, intr, T, stamp, int(self.pipeline.stats.frames_received))
        try:
            self.pipeline.add_frame(frame)
        except FrameRejected as exc:  # counted by the pipeline
            self._warn(exc.reason, f"frame dropped ({exc.reason}): {exc.detail}")
            return
        self._last_stamp = stamp
