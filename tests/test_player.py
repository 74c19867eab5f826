"""End-to-end tests of ``reasoning_seg_player``: real rclpy publishers/subscribers over DDS loopback."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from PIL import Image as PILImage
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.io.sequence_io import FolderSequence
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.ros.conversions import (
    camera_info_to_intrinsics,
    depth_msg_to_metres,
    image_msg_to_rgb8,
    make_header,
    matrix_to_pose,
    numpy_to_image_msg,
    pose_to_matrix,
    stamp_to_sec,
    transform_to_matrix,
)
from reasoning_seg.ros.player import PlaybackSummary, PlayerNode, TFMessage, main, play

pytestmark = pytest.mark.ros

INTR = CameraIntrinsics(32, 24, 30.0, 30.0, 15.5, 11.5)
TOPICS = {
    "color": ("camera/color/image_raw", Image),
    "depth": ("camera/depth/image_raw", Image),
    "info": ("camera/color/camera_info", CameraInfo),
    "pose": ("camera/pose", PoseStamped),
}


@dataclass
class Recorder:
    """Test subscriber node that keeps every message per topic key."""

    node: Node
    got: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def create(cls, context: Any, topics: dict[str, tuple[str, type]]) -> Recorder:
        rec = cls(Node("test_recorder", context=context))
        for key, (topic, mtype) in topics.items():
            rec.node.create_subscription(
                mtype, topic, lambda m, k=key: rec.got[k].append(m), QoSProfile(depth=100)
            )
        return rec

    def count(self, key: str) -> int:
        return len(self.got[key])

    def play(
        self, context: Any, parameters: dict[str, Any], until: Any, sequence: Any = None
    ) -> PlaybackSummary:
        """``play`` with this recorder spun beside the player (20 s limit).

        The recorder's node is destroyed afterwards; what it received stays in :attr:`got`.
        """
        try:
            return play(
                parameters,
                context=context,
                sequence=sequence,
                extra_nodes=[self.node],
                until=until,
                timeout_sec=20.0,
            )
        finally:
            self.node.destroy_node()


def _frames(n: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(colour uint8 RGB, depth uint16 mm, T_world_cam) per frame, deterministic."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        color = rng.integers(0, 256, (INTR.height, INTR.width, 3), dtype=np.uint8)
        depth = rng.integers(400, 5000, (INTR.height, INTR.width)).astype(np.uint16)
        depth[0, :5] = 0  # holes stay holes
        T = look_at([0.1 * i, -1.0, 0.5], [0.0, 2.0, 0.4])
        out.append((color, depth, T))
    return out


def _write_folder(root: Path, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Same layout as /work/shared/data/sun3d-studyroom (see its README)."""
    np.savetxt(root / "camera-intrinsics.txt", INTR.K, fmt="%.8e", delimiter="\t")
    seq = root / "seq-01"
    seq.mkdir(parents=True)
    for i, (color, depth, T) in enumerate(frames):
        PILImage.fromarray(color).save(seq / f"frame-{i:06d}.color.png")
        PILImage.fromarray(depth).save(seq / f"frame-{i:06d}.depth.png")  # uint16 -> 16-bit PNG
        np.savetxt(seq / f"frame-{i:06d}.pose.txt", T, fmt="%.9e", delimiter="\t")


class ListSequence:
    """Minimal in-memory FrameSequence (what ``sequence=`` injection accepts)."""

    def __init__(self, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], fps: float) -> None:
        self.intrinsics = INTR
        self._frames = [
            RGBDFrame(c, d.astype(np.float32) / 1000.0, INTR, T, stamp=100.0 + i / fps, frame_id=i)
            for i, (c, d, T) in enumerate(frames)
        ]

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, i: int) -> RGBDFrame:
        return self._frames[i]


def _check_frames(rec: Recorder, frames: list, stamps: list[float], depth_encoding: str = "16UC1") -> None:
    n = len(frames)
    for key in TOPICS:
        assert rec.count(key) == n, (key, rec.count(key))
    for i, (color, depth_mm, T) in enumerate(frames):
        c, d, info, pose = (rec.got[k][i] for k in ("color", "depth", "info", "pose"))
        assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in (c, d, info, pose)}) == 1
        assert stamp_to_sec(c.header.stamp) == pytest.approx(stamps[i], abs=2e-9)
        assert c.encoding == "rgb8" and c.header.frame_id == "camera_color_optical_frame"
        assert d.encoding == depth_encoding and pose.header.frame_id == "map"
        np.testing.assert_array_equal(image_msg_to_rgb8(c), color)
        np.testing.assert_allclose(depth_msg_to_metres(d), depth_mm / 1000.0, rtol=1e-6, atol=0)
        assert camera_info_to_intrinsics(info) == INTR
        np.testing.assert_allclose(pose_to_matrix(pose.pose), T, atol=1e-7)


def test_folder_sequence_is_played_with_matching_stamps(ros_context: Any, tmp_path: Path) -> None:
    frames = _frames(4)
    _write_folder(tmp_path, frames)
    relative = [f.stamp for f in FolderSequence(tmp_path)]
    assert relative[0] == 0.0  # what a folder knows: frame number / fps
    rec = Recorder.create(ros_context, TOPICS)
    summary = rec.play(
        ros_context,
        {"folder": str(tmp_path), "wait_for_subscribers": 1, "folder_time_origin": 7.5},
        lambda: all(rec.count(k) == len(frames) for k in TOPICS),
    )
    per_frame = 4 if TFMessage is None else 5  # + /tf where tf2_msgs is installed
    assert summary.steps == len(frames) and summary.messages == per_frame * len(frames)
    # Shifted by the origin: never stamped 0, which tf2 reads as "the newest transform".
    _check_frames(rec, frames, [7.5 + t for t in relative])


def test_folder_time_origin_must_be_positive(ros_context: Any, tmp_path: Path) -> None:
    _write_folder(tmp_path, _frames(2))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="folder_time_origin must be positive"):
            PlayerNode(
                context=ros_context,
                parameter_overrides=[
                    Parameter("folder", value=str(tmp_path)),
                    Parameter("folder_time_origin", value=bad),
                ],
            )


def test_folder_playback_broadcasts_the_camera_pose_on_tf(ros_context: Any, tmp_path: Path) -> None:
    """Like a robot: ``map -> camera_color_optical_frame`` on /tf, equal to ``camera/pose``."""
    if TFMessage is None:
        pytest.skip("tf2_msgs is not installed (the PyPI wheels lack it; a full ROS 2 install has it)")
    frames = _frames(3)
    _write_folder(tmp_path, frames)
    topics = {"pose": TOPICS["pose"], "tf": ("/tf", TFMessage)}
    rec = Recorder.create(ros_context, topics)
    rec.play(
        ros_context,
        {"folder": str(tmp_path), "wait_for_subscribers": 1},
        lambda: rec.count("tf") == 3 and rec.count("pose") == 3,
    )
    for msg, pose in zip(rec.got["tf"], rec.got["pose"], strict=True):
        (tf,) = msg.transforms
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "camera_color_optical_frame")
        assert tf.header.stamp == pose.header.stamp
        np.testing.assert_allclose(transform_to_matrix(tf.transform), pose_to_matrix(pose.pose), atol=1e-12)


@pytest.mark.parametrize("depth_encoding", ["16UC1", "32FC1"])
def test_injected_sequence_timing_and_depth_encoding(ros_context: Any, depth_encoding: str) -> None:
    frames = _frames(5)
    fps = 20.0  # 4 gaps of 50 ms -> 200 ms of recording, 100 ms at rate 2
    rec = Recorder.create(ros_context, TOPICS)
    summary = rec.play(
        ros_context,
        {"rate": 2.0, "wait_for_subscribers": 1, "depth_encoding": depth_encoding},
        lambda: all(rec.count(k) == len(frames) for k in TOPICS),
        sequence=ListSequence(frames, fps),
    )
    _check_frames(rec, frames, [100.0 + i / fps for i in range(5)], depth_encoding)
    assert summary.recorded_s == pytest.approx(0.2)
    assert 0.095 <= summary.wall_s < 1.0  # paced by the recording, not as fast as possible


def test_loop_keeps_stamps_increasing(ros_context: Any) -> None:
    frames = _frames(3)
    rec = Recorder.create(ros_context, TOPICS)  # wait_for_subscribers counts every topic
    player = PlayerNode(
        sequence=ListSequence(frames, 100.0),
        context=ros_context,
        parameter_overrides=[Parameter("loop", value=True), Parameter("wait_for_subscribers", value=1)],
    )
    executor = SingleThreadedExecutor(context=ros_context)
    try:
        executor.add_node(player)
        executor.add_node(rec.node)
        deadline = time.monotonic() + 10.0
        while rec.count("color") < 8 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.02)
    finally:
        executor.shutdown()
        player.destroy_node()
        rec.node.destroy_node()
    stamps = [stamp_to_sec(m.header.stamp) for m in rec.got["color"]]
    assert len(stamps) >= 8 and not player.finished.done()
    np.testing.assert_allclose(np.diff(stamps), 0.01, atol=1e-6)  # 100.00 .. 100.02, 100.03 ...


def _write_bag(path: Path, storage: str, frames: list) -> list[tuple[str, Any]]:
    """A bag with colour images and poses 40 ms apart; returns (recorded topic, message) in order."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    written: list[tuple[str, Any]] = []
    msgs = []
    for i, (color, _depth, T) in enumerate(frames):
        t = 50.0 + 0.04 * i
        msgs.append(
            (
                "/camera/color/image_raw",
                "sensor_msgs/msg/Image",
                t,
                numpy_to_image_msg(color, "rgb8", make_header("cam", t)),
            )
        )
        msgs.append(
            (
                "/tracker/pose",
                "geometry_msgs/msg/PoseStamped",
                t,
                PoseStamped(header=make_header("map", t), pose=matrix_to_pose(T)),
            )
        )
    if storage == "ros1":
        from rosbags.rosbag1 import Writer as Writer1

        with Writer1(path) as writer:
            conns = {}
            for topic, mtype, t, msg in msgs:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, mtype, typestore=store)
                raw = store.cdr_to_ros1(serialize_message(msg), mtype)
                writer.write(conns[topic], int(t * 1e9), raw)
                written.append((topic, msg))
        return written

    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for topic, mtype, t, msg in msgs:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, mtype, typestore=store)
            writer.write(conns[topic], int(t * 1e9), serialize_message(msg))
            written.append((topic, msg))
    return written


@pytest.mark.parametrize("storage", ["sqlite3", "mcap", "ros1"])
def test_bag_is_replayed_byte_exact_with_remap(ros_context: Any, tmp_path: Path, storage: str) -> None:
    frames = _frames(4)
    bag = tmp_path / ("rec.bag" if storage == "ros1" else "rec")
    written = _write_bag(bag, storage, frames)
    rec = Recorder.create(ros_context, {"color": TOPICS["color"], "pose": ("camera/pose", PoseStamped)})
    summary = rec.play(
        ros_context,
        {"bag": str(bag), "wait_for_subscribers": 1, "topic_remap": ["/tracker/pose:=camera/pose"]},
        lambda: rec.count("color") == 4 and rec.count("pose") == 4,
    )
    assert summary.messages == 8 and summary.recorded_s == pytest.approx(0.12)
    assert summary.wall_s >= 0.11
    want_color = [m for t, m in written if t == "/camera/color/image_raw"]
    want_pose = [m for t, m in written if t == "/tracker/pose"]
    assert rec.got["color"] == want_color  # rclpy messages compare field by field
    assert rec.got["pose"] == want_pose


def test_main_plays_bag_and_exits(
    ros_domain_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console entry point returns after the last message (exit code 0), and 1 on bad params."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain_id))
    bag = tmp_path / "rec"
    _write_bag(bag, "sqlite3", _frames(2))
    t0 = time.monotonic()
    handler = signal.getsignal(signal.SIGINT)  # main() ignores SIGINT once it shuts down
    try:
        assert main(["--ros-args", "-p", f"bag:={bag}", "-p", "rate:=4.0"]) == 0
        assert time.monotonic() - t0 < 10.0
        assert main(["--ros-args", "-p", "rate:=2.0"]) == 1  # neither folder nor bag
    finally:
        signal.signal(signal.SIGINT, handler)


def test_consumer_of_some_topics_does_not_wait_for_the_timeout(ros_context: Any) -> None:
    """Only colour is subscribed: playback starts after the short grace period, not wait_timeout."""
    frames = _frames(3)
    rec = Recorder.create(ros_context, {"color": TOPICS["color"]})
    t0 = time.monotonic()
    rec.play(
        ros_context,
        {"wait_for_subscribers": 1, "wait_timeout": 30.0},
        lambda: rec.count("color") == 3,
        sequence=ListSequence(frames, 30.0),
    )
    assert rec.count("color") == 3
    assert time.monotonic() - t0 < 5.0


class _SequenceWithBadFrame(ListSequence):
    def __getitem__(self, i: int) -> RGBDFrame:
        if i == 1:
            raise ValueError("frame-000001.pose.txt: pose is not a finite rigid transform")
        return super().__getitem__(i)


def test_unreadable_frame_is_skipped_and_restamp_uses_one_stamp_per_frame(ros_context: Any) -> None:
    frames = _frames(3)
    rec = Recorder.create(ros_context, TOPICS)
    clock = rec.node.get_clock()
    t_start = stamp_to_sec(clock.now().to_msg())
    # rate 100: steps are due 0.67 ms apart, faster than one step publishes, so the player is
    # late; stamps must still keep the recording's spacing (scheduled time, not send time).
    summary = rec.play(
        ros_context,
        {"wait_for_subscribers": 1, "restamp": True, "rate": 100.0},
        lambda: all(rec.count(k) == 2 for k in TOPICS),
        sequence=_SequenceWithBadFrame(frames, 30.0),
    )
    assert summary.skipped_frames == 1 and summary.steps == 2
    for i in range(2):
        stamps = {(rec.got[k][i].header.stamp.sec, rec.got[k][i].header.stamp.nanosec) for k in TOPICS}
        assert len(stamps) == 1
        assert stamp_to_sec(rec.got["color"][i].header.stamp) >= t_start  # wall time, not 100.0 s
    gap = stamp_to_sec(rec.got["color"][1].header.stamp) - stamp_to_sec(rec.got["color"][0].header.stamp)
    assert gap == pytest.approx(2 / 30 / 100, abs=2e-6)  # frames 0 and 2 of a 30 fps recording
    np.testing.assert_array_equal(image_msg_to_rgb8(rec.got["color"][1]), frames[2][0])


@pytest.mark.parametrize("stalls", [False, True], ids=["catches-up", "never-progresses"])
def test_paced_playback_waits_for_the_consumer(ros_context: Any, stalls: bool) -> None:
    """``pace_with``: the player stays ``max_lead`` steps ahead of the consumer's ``pairs_in``.

    The consumer here is a real node reporting on /diagnostics like reasoning_seg does: it holds
    its count back for 1 s after the first frame (a busy machine), then reports what it received; or, when
    it ``stalls``, never moves, and the player must go on after ``pace_timeout`` (counted).
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    frames = _frames(8)
    rec = Recorder.create(ros_context, TOPICS)
    diag = rec.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    first_seen: list[float] = []
    seen_at_release: list[int] = []

    def report() -> None:
        # Hold for 1 s from the first frame received (not from the test's start: how long the player
        # waits for subscribers first depends on which topics it has, /tf with tf2_msgs installed).
        if rec.count("color") and not first_seen:
            first_seen.append(time.monotonic())
        held = stalls or not first_seen or time.monotonic() - first_seen[0] < 1.0
        if not held and not seen_at_release:
            seen_at_release.append(rec.count("color"))
        n = 0 if held else rec.count("color")
        status = DiagnosticStatus(
            name="consumer", hardware_id="consumer", values=[KeyValue(key="pairs_in", value=str(n))]
        )
        diag.publish(DiagnosticArray(status=[status]))

    rec.node.create_timer(0.05, report)
    summary = rec.play(
        ros_context,
        {
            "pace_with": "consumer",
            "max_lead": 3,
            "pace_timeout": 0.6 if stalls else 10.0,
            "wait_for_subscribers": 1,
        },
        lambda: rec.count("color") == len(frames),
        sequence=ListSequence(frames, 100.0),
    )
    assert rec.count("color") == len(frames) == summary.steps
    if stalls:
        # 8 steps, 3 at a time: two timed-out waits, then the last two steps are within the lead,
        # and one more timed-out wait at the end for the consumer to take them.
        assert summary.pace_timeouts == 3 and summary.paced_s >= 2 * 0.6 - 0.05
    else:
        assert seen_at_release == [3]  # held at max_lead while the consumer reported nothing
        assert summary.pace_timeouts == 0 and summary.paced_s > 0.8


def test_paced_playback_ends_only_when_the_consumer_took_every_step(ros_context: Any) -> None:
    """Playback finishes only once the consumer's ``pairs_in`` has reached the steps played.

    The last ``max_lead`` steps are in flight when playback ends, and a reliable writer destroyed
    before its reader took them loses them (the demo lost 1-2 of 90 frames on a busy machine,
    uncounted).

    The consumer reports what it received one second late.
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    frames = _frames(6)
    rec = Recorder.create(ros_context, TOPICS)
    diag = rec.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    history: list[tuple[float, int]] = []
    reported_all: list[float] = []

    def report() -> None:
        now = time.monotonic()
        history.append((now, rec.count("color")))
        n = max([c for t, c in history if t <= now - 1.0], default=0)
        if n == len(frames) and not reported_all:
            reported_all.append(now)
        status = DiagnosticStatus(
            name="consumer", hardware_id="consumer", values=[KeyValue(key="pairs_in", value=str(n))]
        )
        diag.publish(DiagnosticArray(status=[status]))

    rec.node.create_timer(0.05, report)
    summary = rec.play(
        ros_context,
        {"pace_with": "consumer", "max_lead": 10, "pace_timeout": 10.0, "wait_for_subscribers": 1},
        None,
        sequence=ListSequence(frames, 100.0),
    )
    finished = time.monotonic()
    assert summary.steps == len(frames) and summary.pace_timeouts == 0
    assert reported_all and finished >= reported_all[0]  # not before the consumer had them all
