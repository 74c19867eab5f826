"""``reasoning_seg_player``: replay a recorded RGB-D sequence as live camera topics.

Two sources, chosen by parameter:

- ``folder``: a 3DMatch/Sun3D-style folder (:class:`reasoning_seg.io.sequence_io.FolderSequence`) or a
  ScanNet-style export (:class:`reasoning_seg.io.scannet_io.ScanNetSequence`), told apart by layout;
  each frame becomes an ``rgb8`` colour ``Image``, a ``16UC1`` (millimetre) or ``32FC1`` (metre)
  depth ``Image``, a ``CameraInfo`` and a ``PoseStamped`` (``T_map_camera`` in ``map_frame``), all
  with the same stamp; images and camera info carry ``camera_frame``. Like a robot, it also
  broadcasts the pose on ``/tf`` (``map_frame`` -> ``camera_frame``) where tf2_msgs is installed.
- ``bag``: a rosbag2 directory (sqlite3 or MCAP), a bare ``.db3`` / ``.mcap`` file or a ROS 1
  ``.bag``, read with ``rosbags``; every message of a selected topic is republished as its raw CDR
  bytes (no deserialisation, so it is cheap and byte-exact) by a publisher of the recorded type.
  ``/tf`` and ``/tf_static`` are replayed as recorded (``/tf_static`` latched, as tf2 publishes
  it). Where tf2_msgs is not installed, the camera pose is derived from the recorded TF tree
  (:class:`reasoning_seg.io.tf_tree.TfTree`, ``map_frame`` <- the images' frame) and published on
  ``pose_topic``, so a robot bag that carries TF and no pose topic still plays into a map.

Timing follows the recording (frame stamps, or the bag's receive times) divided by ``rate``; the
next message is prepared while waiting, so decoding PNGs does not delay publication. The node
exits after the last message unless ``loop`` is set, and logs a summary.

QoS: ``reliable`` (default) with depth ``qos_depth`` = 10. A recording is finite, so a frame
dropped on the way is lost for good (unlike a live camera, which sends another in 33 ms); a
reliable writer also matches both reliable and best-effort readers, whereas a best-effort writer
silently matches no reliable reader. Depth 10 absorbs scheduling jitter of a third of a second at
30 Hz while bounding memory (ten 640x480 frames) and latency; a subscriber that stays slower than
the recording will still lose the oldest frames rather than stall the player. ``qos:=sensor_data``
gives the usual best-effort profile to mimic a camera driver.

Topics are relative (``camera/color/image_raw`` ...) so ``--ros-args -r __ns:=/robot`` works; bag
topics are republished under their recorded name made relative, or as ``topic_remap`` says.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TransformStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform
from reasoning_seg.io.image_codec import depth_from_metres
from reasoning_seg.io.tf_tree import TfTree
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.ros.conversions import (
    intrinsics_to_camera_info,
    make_header,
    matrix_to_pose,
    matrix_to_transform,
    numpy_to_image_msg,
    sec_to_stamp,
    transform_to_matrix,
)
from reasoning_seg.ros.process import ignore_further_sigint

try:  # real ROS 2 installs; not available from PyPI wheels
    from tf2_msgs.msg import TFMessage  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    TFMessage = None

__all__ = ["PlaybackSummary", "PlayerNode", "main", "play"]

NODE_NAME = "reasoning_seg_player"
_PARTIAL_GRACE_S = 1.0  # see _on_start
_MATCH_SETTLE_S = 0.3  # s after our writers matched every reader before the first frame (see _on_start)
_TF_MSGTYPES = ("tf2_msgs/msg/TFMessage", "tf2_msgs/TFMessage")  # rosbag2 / ROS 1 names
# tf2's own publisher profiles: /tf keep-last 100; /tf_static latched so late subscribers get it.
_TF_QOS = QoSProfile(depth=100)
_TF_STATIC_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)

#: Messages of one playback step: (publisher, message object or serialized CDR bytes).
Outgoing = list[tuple[Publisher, Any]]


class FrameSequence(Protocol):
    """What the player needs of a sequence (``FolderSequence`` or a synthetic one in tests)."""

    intrinsics: CameraIntrinsics

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RGBDFrame: ...


@dataclass
class PlaybackSummary:
    """What was played; logged at the end and returned by :func:`play` for tests and demos."""

    source: str = ""
    steps: int = 0  # frames (folder) or messages (bag) published
    messages: int = 0  # individual messages published
    loops: int = 0  # completed passes over the recording
    skipped_frames: int = 0  # folder frames that could not be read (not published)
    skipped_poses: int = 0  # folder frames whose pose was not a rigid transform (pose not sent)
    wall_s: float = 0.0
    recorded_s: float = 0.0  # recording time covered (sum over loops)
    max_late_s: float = 0.0  # worst delay of a publication behind its schedule
    paced_s: float = 0.0  # time spent waiting for the consumer (pace_with)
    pace_timeouts: int = 0  # times the consumer made no progress for pace_timeout and we went on
    per_topic: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One-line human summary for the log."""
        rate = self.recorded_s / self.wall_s if self.wall_s > 0 else float("nan")
        return (
            f"played {self.steps} steps / {self.messages} messages from {self.source} in {self.wall_s:.2f} s "
            f"(recording {self.recorded_s:.2f} s, effective rate x{rate:.2f}, {self.loops} loop(s) done, "
            f"worst lateness {self.max_late_s * 1e3:.1f} ms, paced {self.paced_s:.2f} s "
            f"({self.pace_timeouts} pace timeout(s)), frames skipped {self.skipped_frames}, "
            f"poses skipped {self.skipped_poses}); "
            f"per topic {self.per_topic}"
        )


def _descriptor(text: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=text)


# name -> (default, description); declared in this order.
_PARAMS: dict[str, tuple[Any, str]] = {
    "folder": (
        "",
        "Recorded sequence folder (3DMatch/Sun3D or ScanNet-style export). Exactly one of folder / bag.",
    ),
    "bag": ("", "rosbag2 directory, .db3 / .mcap file or ROS 1 .bag to replay."),
    "rate": (1.0, "Playback speed multiplier (2.0 = twice as fast)."),
    "loop": (False, "Start again after the last frame instead of exiting."),
    "start_delay": (0.0, "Seconds to wait before the first frame (lets subscribers discover us)."),
    "wait_for_subscribers": (
        0,
        "Before starting, wait until every publisher has this many subscribers (or 1 s after the "
        "first topic has them, for consumers of only some topics).",
    ),
    "wait_timeout": (10.0, "Give up waiting for subscribers after this many seconds and start anyway."),
    "fps": (30.0, "Folder: frame rate used when the sequence has no timestamps."),
    "folder_time_origin": (
        1.0,
        "Folder: stamp (s) of frame number 0. Folder recordings only know relative times (frame "
        "number / fps) starting at 0, and ROS reads a zero stamp as 'unset' (tf2: 'the newest "
        "transform'), so a TF consumer would place the first frame with the last pose. Must be > 0.",
    ),
    "depth_scale": (1000.0, "Folder: depth PNG units per metre."),
    "depth_encoding": ("16UC1", "Folder: publish depth as 16UC1 (mm) or 32FC1 (m, NaN = none)."),
    "map_frame": ("map", "frame_id of the published pose (folder; bag: the root of the derived pose)."),
    "camera_frame": ("camera_color_optical_frame", "Folder: frame_id of images and camera info."),
    "color_topic": ("camera/color/image_raw", "Folder: colour image topic."),
    "depth_topic": ("camera/depth/image_raw", "Folder: depth image topic."),
    "camera_info_topic": ("camera/color/camera_info", "Folder: camera info topic."),
    "pose_topic": (
        "camera/pose",
        "Camera pose topic (geometry_msgs/PoseStamped): folder, and bags whose TF is derived.",
    ),
    "restamp": (
        False,
        "Stamp messages with the playback clock instead of the recorded time: start time + recorded "
        "offset / rate, so stamps keep the recording's spacing even when publication runs late.",
    ),
    "pace_with": (
        "",
        "Folder: hardware_id of a consumer's /diagnostics status with a 'pairs_in' counter (the "
        "reasoning_seg node: 'reasoning_seg'): publish at most max_lead steps ahead of what it has "
        "taken, so a busy machine slows playback instead of losing frames. Empty = off.",
    ),
    "max_lead": (15, "With pace_with: steps the player may run ahead of the consumer's pairs_in."),
    "pace_timeout": (10.0, "With pace_with: seconds without progress before playing on anyway (warned)."),
    "qos": ("reliable", "reliable (recording default) or sensor_data (best effort, like a driver)."),
    "qos_depth": (10, "Publisher history depth."),
    "bag_topics": ([], "Bag: recorded topics to play (empty = all with a known message type)."),
    "topic_remap": ([], "Bag: 'recorded:=published' pairs; others keep their name, made relative."),
}


class PlayerNode(Node):
    """Publishes a recording on a steady-clock timer and resolves :attr:`finished` at the end.

    ``sequence`` injects any :class:`FrameSequence` (e.g. a simulated one) instead of the
    ``folder`` parameter; everything else is configured with ROS parameters (see ``_PARAMS``).
    """

    def __init__(
        self,
        *,
        sequence: FrameSequence | None = None,
        node_name: str = NODE_NAME,
        **node_kwargs: Any,
    ) -> None:
        super().__init__(node_name, **node_kwargs)
        p: dict[str, Any] = {}
        for name, (default, text) in _PARAMS.items():
            if isinstance(default, list):
                # rclpy infers BYTE_ARRAY from an empty list default and then rejects string
                # overrides; declaring by type leaves it uninitialised instead, meaning "empty".
                self.declare_parameter(name, Parameter.Type.STRING_ARRAY, _descriptor(text))
                try:
                    p[name] = list(self.get_parameter(name).value)
                except ParameterUninitializedException:
                    p[name] = []
            else:
                self.declare_parameter(name, default, _descriptor(text))
                p[name] = self.get_parameter(name).value
        self._p = p
        self.finished: Future = Future()
        self.summary = PlaybackSummary()
        self._pubs: dict[str, Publisher] = {}
        self._reader: Any = None
        self._tf_conns: list[Any] = []  # bag TF connections read to derive the pose (no tf2_msgs)
        self._time_origin = 0.0  # added to folder stamps (folder_time_origin); in-memory sequences: 0
        try:
            self._check_params(p, sequence)
            depth = int(p["qos_depth"])
            if p["pace_with"]:
                # Every step the consumer has not taken yet may still be unacknowledged: the history
                # must hold them all, or a reliable keep-last writer drops the oldest unseen.
                depth = max(depth, int(p["max_lead"]) + 1)
            self._qos = self._make_qos(p["qos"], depth)
            if sequence is not None or p["folder"]:
                self._setup_folder(sequence)
            else:
                self._setup_bag(Path(p["bag"]))
        except BaseException:
            self.destroy_node()  # close the bag and free rcl handles before reporting the error
            raise

        self._rate = float(p["rate"])
        self._loop_index = 0
        # Recorded span of one pass plus one mean step gap, so looped times and stamps keep
        # increasing; measured during the first pass (no frame is decoded twice for it).
        self._loop_period = 0.0
        self._pass_steps = 0  # steps published in the first pass
        self._items: Iterator[tuple[float, Outgoing]] = self._make_items(0)
        self._next: tuple[float, Outgoing] | None = None
        self._t_first: float | None = None  # recorded time of the first item of the first pass
        self._last_t = 0.0
        self._wall_start = 0.0
        self._ros_start_ns = 0
        self._wait_deadline = 0.0
        self._partial_since = 0.0
        self._matched_since = 0.0
        # A steady clock keeps playback running with use_sim_time:=true (nobody publishes /clock for
        # us) and immune to system clock jumps.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        delay = max(float(p["start_delay"]), 0.0)
        self._timer = self.create_timer(max(delay, 1e-3), self._on_start, clock=self._steady)
        # Pacing: the consumer's count of pairs taken (None until its first status), and since when
        # we wait for it.
        self._taken: int | None = None
        self._taken_base = 0  # the consumer's count when we first saw it, less our steps then
        self._pace_since = 0.0
        self._end_wait_since = 0.0
        if p["pace_with"]:
            from diagnostic_msgs.msg import DiagnosticArray

            self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _check_params(p: dict[str, Any], sequence: FrameSequence | None) -> None:
        if sequence is None and bool(p["folder"]) == bool(p["bag"]):
            raise ValueError("set exactly one of the parameters 'folder' and 'bag'")
        if not (math.isfinite(p["rate"]) and p["rate"] > 0):
            raise ValueError(f"rate must be positive, got {p['rate']}")
        if not (math.isfinite(p["fps"]) and p["fps"] > 0):
            raise ValueError(f"fps must be positive, got {p['fps']}")
        if not (math.isfinite(p["folder_time_origin"]) and p["folder_time_origin"] > 0):
            raise ValueError(f"folder_time_origin must be positive, got {p['folder_time_origin']}")
        if p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ValueError(f"depth_encoding must be 16UC1 or 32FC1, got {p['depth_encoding']!r}")
        if p["qos"] not in ("reliable", "sensor_data"):
            raise ValueError(f"qos must be 'reliable' or 'sensor_data', got {p['qos']!r}")
        if int(p["qos_depth"]) < 1:
            raise ValueError(f"qos_depth must be >= 1, got {p['qos_depth']}")
        for pair in p["topic_remap"]:
            if ":=" not in pair:
                raise ValueError(f"topic_remap entry {pair!r} is not 'recorded:=published'")

    @staticmethod
    def _make_qos(kind: str, depth: int) -> QoSProfile:
        if kind == "sensor_data":
            qos = QoSProfile(depth=depth)
            qos.reliability = qos_profile_sensor_data.reliability
            qos.durability = qos_profile_sensor_data.durability
            return qos
        return QoSProfile(depth=depth)  # reliable + volatile + keep-last

    def _setup_folder(self, sequence: FrameSequence | None) -> None:
        p = self._p
        if sequence is None:
            from reasoning_seg.io.scannet_io import open_sequence  # lazy: another module's I/O deps

            sequence = open_sequence(p["folder"], depth_scale=float(p["depth_scale"]), fps=float(p["fps"]))
            self.summary.source = f"folder {p['folder']}"
            self._time_origin = float(p["folder_time_origin"])
        else:
            self.summary.source = f"sequence {type(sequence).__name__}"
        if len(sequence) == 0:
            raise ValueError(f"{self.summary.source} has no frames")
        self._seq = sequence
        self._pubs = {
            "color": self.create_publisher(Image, p["color_topic"], self._qos),
            "depth": self.create_publisher(Image, p["depth_topic"], self._qos),
            "info": self.create_publisher(CameraInfo, p["camera_info_topic"], self._qos),
            "pose": self.create_publisher(PoseStamped, p["pose_topic"], self._qos),
        }
        if TFMessage is not None:
            self._pubs["tf"] = self.create_publisher(TFMessage, "/tf", _TF_QOS)
        self._make_items = self._folder_items

    def _setup_bag(self, path: Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        if not path.exists():
            raise FileNotFoundError(f"bag {path} does not exist")
        # The default typestore is only used for old bags that carry no message definitions.
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
        self._reader = reader
        self.summary.source = f"bag {path}"
        wanted = set(self._p["bag_topics"])
        remap = dict(pair.split(":=", 1) for pair in self._p["topic_remap"])
        self._conns = []
        self._bag_pub: dict[int, Publisher] = {}
        by_topic: dict[str, Publisher] = {}
        for conn in reader.connections:
            if wanted and conn.topic not in wanted:
                continue
            cls = _message_class(conn.msgtype)
            if cls is None and conn.msgtype in _TF_MSGTYPES:
                self._tf_conns.append(conn)  # tf2_msgs is not installed: the pose is derived from it
                continue
            if cls is None:
                self.get_logger().warning(f"skipping {conn.topic}: type {conn.msgtype} is not installed")
                continue
            out = remap.get(conn.topic, conn.topic.lstrip("/"))
            if out not in by_topic:
                qos = self._qos
                if conn.msgtype in _TF_MSGTYPES:
                    qos = _TF_STATIC_QOS if conn.topic.endswith("tf_static") else _TF_QOS
                by_topic[out] = self.create_publisher(cls, out, qos)
            self._conns.append(conn)
            self._bag_pub[id(conn)] = by_topic[out]
        missing = wanted - {c.topic for c in self._conns + self._tf_conns}
        if missing:
            raise ValueError(f"bag_topics not found in {path}: {sorted(missing)}")
        if not self._conns:
            raise ValueError(f"{path} has no playable topics")
        self._pubs = {topic: pub for topic, pub in by_topic.items()}
        self._tf_tree = TfTree()
        self._cam_frame = ""  # the images' frame_id (derived pose only)
        self._last_pose_stamp: float | None = None
        if self._tf_conns:
            images = [c for c in self._conns if c.msgtype.endswith("/Image")]
            for conn, _, raw in reader.messages(connections=images[:1]):
                self._cam_frame = reader.deserialize(raw, conn.msgtype).header.frame_id
                break
            if not self._cam_frame:
                raise ValueError(f"{path}: no image with a frame_id to derive the camera pose for from TF")
            pose_topic = self._p["pose_topic"]
            self._pubs[pose_topic] = self.create_publisher(PoseStamped, pose_topic, self._qos)
            self._pose_pub = self._pubs[pose_topic]
            self.get_logger().info(
                f"tf2_msgs is not installed: the camera pose ({self._p['map_frame']} <- the images' frame) "
                f"is derived from the recorded {sorted({c.topic for c in self._tf_conns})} and published "
                f"on {pose_topic}"
            )
        self._bag_is2 = bool(reader.is2)
        if self._p["loop"] and not self._p["restamp"]:
            self.get_logger().warning("looping a bag without restamp: recorded stamps will repeat")
        self._make_items = self._bag_items

    # ------------------------------------------------------------------ sources

    def _stamp(self, recorded: float, loop_index: int) -> Any:
        # With restamp the stamp is overwritten at publication time (see _publish).
        return sec_to_stamp(recorded + loop_index * self._loop_period)

    def _folder_items(self, loop_index: int) -> Iterator[tuple[float, Outgoing]]:
        p, pubs = self._p, self._pubs
        for i in range(len(self._seq)):
            try:
                frame = self._seq[i]
            except (ValueError, OSError) as exc:
                # One unreadable frame (corrupt PNG, -inf pose as in some 3DMatch recordings) must
                # not end a long replay: skip it, count it, say why.
                self.summary.skipped_frames += 1
                self.get_logger().warning(f"skipping frame {i}: {exc}")
                continue
            t = float(frame.stamp) + self._time_origin
            stamp = self._stamp(t, loop_index)
            cam_header = make_header(p["camera_frame"], stamp)
            color = np.asarray(frame.color, dtype=np.uint8)
            depth = depth_from_metres(frame.depth, p["depth_encoding"], 1000.0)
            out: Outgoing = [
                (pubs["color"], numpy_to_image_msg(color, "rgb8", cam_header)),
                (pubs["depth"], numpy_to_image_msg(depth, p["depth_encoding"], cam_header)),
                (pubs["info"], intrinsics_to_camera_info(frame.intrinsics, cam_header)),
            ]
            if is_rigid_transform(frame.T_world_cam):
                pose = matrix_to_pose(frame.T_world_cam)
                out.append((pubs["pose"], PoseStamped(header=make_header(p["map_frame"], stamp), pose=pose)))
                if "tf" in pubs:
                    tf = TransformStamped(header=make_header(p["map_frame"], stamp))
                    tf.child_frame_id = p["camera_frame"]
                    tf.transform = matrix_to_transform(frame.T_world_cam)
                    out.append((pubs["tf"], TFMessage(transforms=[tf])))
            else:
                self.summary.skipped_poses += 1
                self.get_logger().warning(f"frame {frame.frame_id}: pose is not a rigid transform, not sent")
            yield t + loop_index * self._loop_period, out

    def _bag_items(self, loop_index: int) -> Iterator[tuple[float, Outgoing]]:
        tf_ids = {id(c) for c in self._tf_conns}
        for conn, t_ns, raw in self._reader.messages(connections=self._conns + self._tf_conns):
            t = t_ns * 1e-9 + loop_index * self._loop_period
            if id(conn) in tf_ids:
                pose = self._derive_pose(conn, raw)
                if pose is not None:
                    yield t, [(self._pose_pub, pose)]
                continue
            data: Any = bytes(raw)
            if not self._bag_is2:
                data = bytes(self._reader.typestore.ros1_to_cdr(data, conn.msgtype))
            yield t, [(self._bag_pub[id(conn)], data)]

    def _derive_pose(self, conn: Any, raw: Any) -> PoseStamped | None:
        """Feed one recorded TFMessage to the tree; the camera pose when it moved, else None."""
        static = conn.topic.endswith("tf_static")
        try:
            msg = self._reader.deserialize(raw, conn.msgtype)
            for tf in msg.transforms:
                T = transform_to_matrix(tf.transform)
                stamp = tf.header.stamp.sec + tf.header.stamp.nanosec * 1e-9
                self._tf_tree.add(tf.header.frame_id, tf.child_frame_id, T, stamp, static)
        except (ValueError, AttributeError) as exc:
            self.summary.skipped_poses += 1
            self.get_logger().warning(f"skipping a {conn.topic} message: {exc}")
            return None
        if static:
            return None
        found = self._tf_tree.lookup(self._p["map_frame"], self._cam_frame)
        if found is None or found[1] is None or found[1] == self._last_pose_stamp:
            return None
        T, stamp = found
        self._last_pose_stamp = stamp
        return PoseStamped(header=make_header(self._p["map_frame"], stamp), pose=matrix_to_pose(T))

    # ------------------------------------------------------------------ scheduling

    def _on_start(self) -> None:
        want = int(self._p["wait_for_subscribers"])
        now = time.monotonic()
        if want > 0:
            if self._wait_deadline == 0.0:
                self._wait_deadline = now + float(self._p["wait_timeout"])
            counts = {pub.topic_name: pub.get_subscription_count() for pub in self._pubs.values()}
            if any(c >= want for c in counts.values()) and self._partial_since == 0.0:
                self._partial_since = now
            # A consumer of only some topics (e.g. no pose subscriber) should not cost the whole
            # wait_timeout: once one topic is matched, the others get a short grace period, as
            # one participant's endpoints are discovered within milliseconds of each other.
            partial_ok = self._partial_since > 0.0 and now - self._partial_since >= _PARTIAL_GRACE_S
            if not all(c >= want for c in counts.values()):
                if now < self._wait_deadline and not partial_ok:
                    self._reschedule(0.02)
                    return
                lacking = sorted(t for t, c in counts.items() if c < want)
                self.get_logger().warning(f"starting with fewer than {want} subscriber(s) on {lacking}")
            elif self._matched_since == 0.0:
                # Our writers see the readers; the readers may not see us yet, and a volatile
                # reader drops what comes before it does (the first frame, lost without a trace).
                self._matched_since = now
            if self._matched_since > 0.0 and now - self._matched_since < _MATCH_SETTLE_S:
                self._reschedule(0.02)
                return
        if self._p["pace_with"] and self._taken is None:
            # Pacing needs the consumer's count: wait for its first status like for subscribers.
            if self._wait_deadline == 0.0:
                self._wait_deadline = now + float(self._p["wait_timeout"])
            if now < self._wait_deadline:
                self._reschedule(0.02)
                return
            self.get_logger().warning(f"no /diagnostics from '{self._p['pace_with']}': playing unpaced")
        self._next = next(self._items, None)
        if self._next is None:
            self._finish()
            return
        self._t_first = self._next[0]
        self._wall_start = time.monotonic()
        self._ros_start_ns = self.get_clock().now().nanoseconds
        self._timer.callback = self._on_tick
        self._on_tick()

    def _due(self, t_recorded: float) -> float:
        assert self._t_first is not None
        return self._wall_start + (t_recorded - self._t_first) / self._rate

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id != self._p["pace_with"]:
                continue
            value = next((kv.value for kv in status.values if kv.key == "pairs_in"), None)
            if value is not None and value.isdigit():
                if self._taken is None:  # a consumer that ran before us: count from here
                    self._taken_base = int(value) - self.summary.steps
                self._taken = int(value) - self._taken_base

    def _must_wait(self, now: float) -> bool:
        """Pacing: whether the consumer is ``max_lead`` steps behind (a bounded wait, then warned)."""
        if not self._p["pace_with"] or self._taken is None:
            return False
        if self.summary.steps - self._taken < int(self._p["max_lead"]):
            self._resume(now)
            return False
        if self._pace_since == 0.0:
            self._pace_since = now
        if now - self._pace_since < float(self._p["pace_timeout"]):
            return True
        self._resume(now)
        self.summary.pace_timeouts += 1
        self.get_logger().warning(
            f"'{self._p['pace_with']}' took {self._taken} of {self.summary.steps} steps and made no progress "
            f"for {self._p['pace_timeout']} s: playing on"
        )
        # One more lead's worth (kept when the next status repeats the same count), then wait again.
        self._taken_base -= int(self._p["max_lead"])
        self._taken += int(self._p["max_lead"])
        return False

    def _resume(self, now: float) -> None:
        """End a pacing wait: shift the schedule by it, so the steps after it keep their spacing."""
        if self._pace_since > 0.0:
            self._wall_start += now - self._pace_since
            self.summary.paced_s += now - self._pace_since
            self._pace_since = 0.0

    def _on_tick(self) -> None:
        if self.finished.done():
            return
        while self._next is not None:
            t, outgoing = self._next
            now = time.monotonic()
            if self._must_wait(now):
                self._reschedule(0.02)
                return
            due = self._due(t)
            if due > now + 5e-4:
                self._reschedule(due - now)
                return
            self.summary.max_late_s = max(self.summary.max_late_s, now - due)
            # One stamp per step, so restamped colour, depth, info and pose still match exactly; it is
            # the step's scheduled time, not the publication time, so a player that falls behind
            # (a loaded machine) still stamps consecutive steps 1/fps apart rather than ~0 apart.
            stamp = self._scheduled_stamp(t) if self._p["restamp"] else None
            for pub, msg in outgoing:
                self._publish(pub, msg, stamp)
                self.summary.per_topic[pub.topic_name] = self.summary.per_topic.get(pub.topic_name, 0) + 1
            self.summary.steps += 1
            self.summary.messages += len(outgoing)
            self._last_t = t
            if self._loop_index == 0:
                self._pass_steps += 1
            self._next = next(self._items, None)  # prepare the next step while we wait for it
            if self._next is None:
                self.summary.loops += 1
                if not self._p["loop"]:
                    break
                if self._loop_index == 0:
                    self._loop_period = self._measure_loop_period()
                self._loop_index += 1
                self._items = self._make_items(self._loop_index)
                self._next = next(self._items, None)
        if self._consumer_behind(time.monotonic()):
            self._reschedule(0.05)
            return
        self._finish()

    def _consumer_behind(self, now: float) -> bool:
        """Pacing, at the end: whether the consumer has not yet taken every step (bounded wait).

        Why: the last ``max_lead`` steps are still in flight when playback ends; a reliable writer
        destroyed before its reader took them loses them without a trace (the demo lost 1-2 of 90
        frames on a busy machine). Waits at most ``pace_timeout`` seconds for ``pairs_in`` to reach
        the steps played.
        """
        if not self._p["pace_with"] or self._taken is None or self._taken >= self.summary.steps:
            return False
        if self._end_wait_since == 0.0:
            self._end_wait_since = now
        if now - self._end_wait_since < float(self._p["pace_timeout"]):
            return True
        self.summary.pace_timeouts += 1
        self.get_logger().warning(
            f"'{self._p['pace_with']}' took {self._taken} of {self.summary.steps} steps by the end of "
            f"playback and did not catch up within {self._p['pace_timeout']} s: finishing anyway"
        )
        return False

    def _scheduled_stamp(self, t_recorded: float) -> Any:
        assert self._t_first is not None
        offset_ns = int(round((t_recorded - self._t_first) / self._rate * 1e9))
        return Time(nanoseconds=self._ros_start_ns + offset_ns).to_msg()

    def _measure_loop_period(self) -> float:
        assert self._t_first is not None
        span = self._last_t - self._t_first
        n = self._pass_steps
        gap = span / (n - 1) if n > 1 and span > 0 else 1.0 / float(self._p["fps"])
        return span + gap

    @staticmethod
    def _publish(pub: Publisher, msg: Any, stamp: Any) -> None:
        if stamp is not None:
            # Restamp at publication, not at preparation (which happens one step earlier).
            if isinstance(msg, bytes):
                msg = deserialize_message(msg, pub.msg_type)
            if hasattr(msg, "header"):
                msg.header.stamp = stamp
            for tf in getattr(msg, "transforms", ()):  # TFMessage
                tf.header.stamp = stamp
        pub.publish(msg)

    def _reschedule(self, delay_s: float) -> None:
        # rcl timers keep their next call time when the period changes; reset() restarts from now.
        self._timer.timer_period_ns = max(int(delay_s * 1e9), 100_000)
        self._timer.reset()

    def _finish(self) -> None:
        self._timer.cancel()
        s = self.summary
        s.wall_s = time.monotonic() - self._wall_start if self._wall_start else 0.0
        if self._t_first is not None and s.steps:
            s.recorded_s = self._last_t - self._t_first
        if self._p["qos"] == "reliable":
            # Give reliable readers the chance to acknowledge the tail before the node is destroyed;
            # otherwise the last frames can be lost when the process exits right after.
            deadline = time.monotonic() + 1.0
            for pub in self._pubs.values():
                pub.wait_for_all_acked(Duration(seconds=max(deadline - time.monotonic(), 0.0)))
        self.get_logger().info(s.line())
        if not self.finished.done():
            self.finished.set_result(s)

    def destroy_node(self) -> None:
        """Close the bag reader (if any) before the node goes."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().destroy_node()


def _message_class(msgtype: str) -> type | None:
    """``pkg/msg/Name`` (or ROS 1 ``pkg/Name``) -> the installed rclpy message class, else None."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        return None
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        return None


def play(
    parameters: dict[str, Any],
    *,
    context: Context | None = None,
    sequence: FrameSequence | None = None,
    extra_nodes: Sequence[Node] = (),
    until: Callable[[], bool] | None = None,
    timeout_sec: float = 60.0,
) -> PlaybackSummary:
    """Run a player to completion in this process (tests, notebooks, demos) and return its summary.

    ``parameters`` are the node's ROS parameters (e.g. ``{"folder": "/data/seq", "rate": 4.0}``);
    ``extra_nodes`` (e.g. a test subscriber) are spun by the same executor, which keeps spinning
    after the player finished until ``until()`` holds or ``timeout_sec`` runs out. ``context``
    must already be initialised (``rclpy.init(context=...)``).
    """
    overrides = [Parameter(k, value=v) for k, v in parameters.items()]
    node = PlayerNode(sequence=sequence, context=context, parameter_overrides=overrides)
    executor = SingleThreadedExecutor(context=context)
    try:
        executor.add_node(node)
        for extra in extra_nodes:
            executor.add_node(extra)
        deadline = time.monotonic() + timeout_sec
        executor.spin_until_future_complete(node.finished, timeout_sec=timeout_sec)
        if not node.finished.done():
            raise TimeoutError(f"playback did not finish within {timeout_sec} s")
        while until is not None and not until() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return node.summary
    finally:
        for extra in extra_nodes:
            executor.remove_node(extra)
        executor.shutdown()
        node.destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console entry point: ``reasoning_seg_player --ros-args -p folder:=/data/seq -p rate:=2.0``."""
    rclpy.init(args=args)
    node: PlayerNode | None = None
    executor = SingleThreadedExecutor()
    code = 0
    try:
        node = PlayerNode()
        executor.add_node(node)
        executor.spin_until_future_complete(node.finished)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError) as exc:
        rclpy.logging.get_logger(NODE_NAME).error(str(exc))
        code = 1
    finally:
        ignore_further_sigint()  # a second Ctrl-C (terminal + launch) must not break the shutdown
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
