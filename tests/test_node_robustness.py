"""Bad input through real topics and services (rclpy + DDS on loopback): the node stays up and says why.

Every test starts the node with a map (loaded through ``~/load_map``, then two good frames through
the camera topics), feeds one kind of bad input, and checks three things: the clear error (the
service's message, or the ``dropped.<reason>`` counter in /diagnostics), that a good query is still
answered afterwards, and that nothing already in the map was lost (points and version never shrink).

The 2D model is the simulation of LISA in its ``oracle`` profile (a SIMULATION driven by the scene's
ground truth) wrapped by :class:`FaultySegmenter`, which injects the failures under test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from reasoning_seg_msgs.srv import LoadMap, SaveMap, Segment
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from node_world import DT, INTR, T0, VOXEL, World, build_world
from reasoning_seg.io.image_codec import depth_from_metres
from reasoning_seg.ros.conversions import (
    intrinsics_to_camera_info,
    make_header,
    matrix_to_pose,
    numpy_to_image_msg,
)
from reasoning_seg.ros.node import ReasoningSegNode, executor_threads
from reasoning_seg.ros.query_client import call_segment, call_service
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter

pytestmark = pytest.mark.ros

N_MAP = 10  # frames in the saved map; the rest of the trajectory is streamed through the topics
N_FRAMES = 16


# --------------------------------------------------------------------------- the world, built once


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("robust"), N_FRAMES, N_MAP, n_queries=1)


# --------------------------------------------------------------------------- the injected 2D model


class FaultySegmenter:
    """Wraps the simulated LISA; ``fail(views) -> exception or None`` decides which calls fail.

    ``delay`` seconds per call make a query slow enough to be overtaken by others (flooding).
    """

    def __init__(self, inner: SimulatedSegmenter) -> None:
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.embedding_dim = inner.embedding_dim
        self.fail: Callable[[list], BaseException | None] = lambda views: None
        self.delay = 0.0
        self.calls: list[list[int]] = []

    def segment(self, views, query):
        self.calls.append([v.keyframe_id for v in views])
        if self.delay:
            time.sleep(self.delay)
        exc = self.fail(list(views))
        if exc is not None:
            raise exc
        return self.inner.segment(views, query)


def _oom() -> BaseException:
    text = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
    try:
        import torch

        return torch.cuda.OutOfMemoryError(text)
    except (ImportError, AttributeError):
        return RuntimeError(text)


# --------------------------------------------------------------------------- the running graph


@dataclass
class Env:
    """The node spinning in its own thread, a client node (publishers, service calls), diagnostics."""

    world: World
    node: ReasoningSegNode
    client: object
    seg: FaultySegmenter | None
    pubs: dict
    diag: list = field(default_factory=list)

    # ---- feeding
    def frame_msgs(self, i: int, stamp: float | None = None):
        f = self.world.frames[i]
        t = f.stamp if stamp is None else stamp
        h = make_header("camera_color_optical_frame", t)
        color = numpy_to_image_msg(f.color, "rgb8", h)
        depth = numpy_to_image_msg(depth_from_metres(f.depth, "16UC1", 1000.0), "16UC1", h)
        info = intrinsics_to_camera_info(f.intrinsics, h)
        pose = PoseStamped(header=make_header("map", t), pose=matrix_to_pose(f.T_world_cam))
        return color, depth, info, pose

    def publish(self, color=None, depth=None, info=None, pose=None) -> None:
        """Publish what is given: pose and info first, as a SLAM front-end and a driver would."""
        for key, msg in (("pose", pose), ("info", info), ("color", color), ("depth", depth)):
            if msg is not None:
                self.pubs[key].publish(msg)

    def feed(self, i: int, stamp: float | None = None, **replace) -> None:
        """Publish frame ``i`` (optionally restamped), with any of its four messages replaced/omitted."""
        color, depth, info, pose = self.frame_msgs(i, stamp)
        msgs = {"color": color, "depth": depth, "info": info, "pose": pose}
        msgs.update(replace)
        self.publish(**msgs)

    # ---- observing
    def received(self) -> int:
        return self.node.pipeline.stats.frames_received

    def integrated(self) -> int:
        return self.node.pipeline.stats.frames_integrated

    def dropped(self) -> dict[str, int]:
        """``dropped.<reason>`` counters of the latest /diagnostics message (what operators see)."""
        if not self.diag:
            return {}
        values = {kv.key: kv.value for kv in self.diag[-1].status[0].values}
        return {k.removeprefix("dropped."): int(v) for k, v in values.items() if k.startswith("dropped.")}

    def wait_dropped(self, reason: str, at_least: int, timeout: float = 20.0) -> dict[str, int]:
        """Wait until /diagnostics counts ``at_least`` drops for ``reason`` (fails the test if never)."""
        reached = wait_for(lambda: self.dropped().get(reason, 0) >= at_least, timeout)
        counts = self.dropped()
        n = self.node
        state = (
            f"node {dict(n.rejected)}, pending {len(n._pending)}, received {self.received()}, "
            f"infos {len(n._infos)} newest {n._infos.newest_stamp}, pose newest {n._pose.poses.newest_stamp}"
        )
        assert reached, f"dropped.{reason} never reached {at_least}: {counts} ({state})"
        return counts

    def map_state(self) -> tuple[int, int, int]:
        surf = self.node.pipeline.surface()
        return len(surf), surf.version, len(self.node.pipeline.keyframes)

    def query(self, text: str, timeout: float = 60.0) -> Segment.Response:
        return call_segment(self.client, text, timeout=timeout)

    def assert_still_serving(self, before: tuple[int, int, int]) -> None:
        """A good query is answered and the map has lost nothing since ``before``."""
        resp = self.query(self.world.query)
        assert resp.success and resp.result.found, resp.message
        points, version, keyframes = self.map_state()
        assert points >= before[0] and version >= before[1] and keyframes >= before[2]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def make_env(ros_context, world):
    """``make_env(params=(), segmenter=True, load=True, prime=True) -> Env``.

    ``prime`` streams frames N_MAP and N_MAP+1 through the topics (colour, depth, CameraInfo, pose)
    and waits for them to be integrated, so the node has seen a live camera before the bad input.
    """
    started: list = []

    def _make(params: tuple = (), segmenter: bool = True, load: bool = True, prime: bool = True) -> Env:
        seg = None
        if segmenter:
            seg = FaultySegmenter(SimulatedSegmenter(world.scene, profile="oracle"))
        node = ReasoningSegNode(
            segmenter=seg,
            context=ros_context,
            parameter_overrides=[
                Parameter("segmenter.scene", value=world.scene_dir),
                Parameter("segmenter.sim_profile", value="oracle"),
                Parameter("map.voxel_size", value=VOXEL),
                Parameter("fusion.visibility_tolerance", value=0.08),
                Parameter("pose_source", value="topic"),
                Parameter("map_directory", value=str(Path(world.map_dir).parent)),
                # Reliable, so that no test depends on the load of this shared machine; the default
                # (sensor_data, best effort) has its own test.
                Parameter("sensor_qos", value="reliable"),
                Parameter("diagnostics_period", value=0.1),
                Parameter("map_publish_period", value=0.0),
                *params,
            ],
        )
        listener = rclpy.create_node("robust_diag_listener", context=ros_context)
        diag: list = []
        listener.create_subscription(DiagnosticArray, "/diagnostics", diag.append, 10)
        # The node's own thread count (as its main() uses) plus one for the listener: the default,
        # one per CPU, gives a 2-core CI machine two threads, and a long save then starves queries.
        executor = MultiThreadedExecutor(num_threads=executor_threads(node.cfg) + 1, context=ros_context)
        executor.add_node(node)
        executor.add_node(listener)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        client = rclpy.create_node("robust_client", context=ros_context)
        started.append((node, listener, client, executor, thread))
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {
            "color": client.create_publisher(Image, "/camera/color/image_raw", qos),
            "depth": client.create_publisher(Image, "/camera/depth/image_raw", qos),
            "info": client.create_publisher(CameraInfo, "/camera/color/camera_info", qos),
            "pose": client.create_publisher(PoseStamped, "/camera/pose", qos),
        }
        env = Env(world, node, client, seg, pubs, diag)
        camera = [pubs["color"], pubs["depth"], pubs["info"]]
        if node._pose.listens_to_topics:
            camera.append(pubs["pose"])
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in camera), 10.0)
        assert wait_for(lambda: bool(diag), 10.0)
        if load:
            resp = call_service(
                client,
                LoadMap,
                "/reasoning_seg/load_map",
                LoadMap.Request(directory=Path(world.map_dir).name),
            )
            assert resp.success, resp.message
        if prime:
            for i in (N_MAP, N_MAP + 1):
                n = env.integrated()
                env.feed(i)
                assert wait_for(lambda n=n: env.integrated() > n), (env.node.rejected, env.dropped())
        return env

    yield _make
    for node, listener, client, executor, thread in started:
        client.destroy_node()
        executor.shutdown()
        thread.join(timeout=5)
        listener.destroy_node()
        node.destroy_node()


# --------------------------------------------------------------------------- sensor input


def test_camera_subscriptions_use_sensor_data_qos(make_env):
    # Best effort (what drivers publish); a reliable publisher is compatible with it, and frames fed
    # one at a time (as prime does) arrive and are integrated.
    env = make_env(params=(Parameter("sensor_qos", value="sensor_data"),))
    for topic in ("/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info"):
        infos = [
            i for i in env.client.get_subscriptions_info_by_topic(topic) if i.node_name == "reasoning_seg"
        ]
        assert infos and infos[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT, topic
    assert "ApproximatePairSync" in env.node.sync_backend or "message_filters" in env.node.sync_backend


def test_nan_and_zero_depth(make_env):
    env = make_env()
    before = env.map_state()
    i = N_MAP + 2
    color, depth, info, pose = env.frame_msgs(i)
    # All NaN (32FC1 float metres) and all zero (16UC1: no reading): nothing to integrate.
    nan = numpy_to_image_msg(np.full((INTR.height, INTR.width), np.nan, np.float32), "32FC1", depth.header)
    env.publish(color, nan, info, pose)
    assert env.wait_dropped("no_depth", 1)
    color, depth, info, pose = env.frame_msgs(i + 1)
    zero = numpy_to_image_msg(np.zeros((INTR.height, INTR.width), np.uint16), "16UC1", depth.header)
    env.publish(color, zero, info, pose)
    assert env.wait_dropped("no_depth", 2)
    # Scattered holes (60 % of the pixels NaN, inf or negative, as a real sensor's dropouts): those
    # become "no reading", the rest is integrated.
    color, depth, info, pose = env.frame_msgs(i + 2)
    d = env.world.frames[i + 2].depth.astype(np.float32).copy()
    pick = np.random.default_rng(0).integers(0, 5, size=d.shape)
    d[pick == 0], d[pick == 1], d[pick == 2] = np.nan, np.inf, -1.0
    n = env.integrated()
    env.publish(color, numpy_to_image_msg(d, "32FC1", depth.header), info, pose)
    assert wait_for(lambda: env.integrated() == n + 1)
    assert np.all(np.isfinite(env.node.pipeline.surface().points))
    assert env.dropped().get("no_depth") == 2
    env.assert_still_serving(before)


def test_depth_valid_only_between_open3d_sample_rows(make_env):
    env = make_env()
    i = N_MAP + 2
    color, depth, info, pose = env.frame_msgs(i)
    d = env.world.frames[i].depth.astype(np.float32).copy()
    d[np.arange(d.shape[0]) % 4 != 2] = np.nan  # every 4th row valid (interlaced depth), 25 % valid
    before = env.map_state()
    n = env.integrated()
    env.publish(color, numpy_to_image_msg(d, "32FC1", depth.header), info, pose)
    # Integrated (not only received: the counter rises before the map update that could crash).
    assert wait_for(lambda: env.integrated() == n + 1), env.dropped()
    assert env.node.rejected["internal_error"] == 0, env.dropped()
    assert np.all(np.isfinite(env.node.pipeline.surface().points))
    env.assert_still_serving(before)


def test_wrong_encodings(make_env):
    env = make_env()
    before = env.map_state()
    i = N_MAP + 2
    color, depth, info, pose = env.frame_msgs(i)
    as_rgb = Image(header=depth.header, height=depth.height, width=depth.width, encoding="rgb8")
    as_rgb.step, as_rgb.data = color.step, color.data  # depth topic carrying a colour image
    env.publish(color, as_rgb, info, pose)
    assert env.wait_dropped("bad_encoding", 1)

    color, depth, info, pose = env.frame_msgs(i + 1)
    color.encoding = "yuv422_yuy2"  # not supported: must be named in the reason, not crash the node
    env.publish(color, depth, info, pose)
    assert env.wait_dropped("bad_encoding", 2)

    color, depth, info, pose = env.frame_msgs(i + 2)
    color.data = color.data[: len(color.data) // 2]  # truncated buffer for the declared size
    env.publish(color, depth, info, pose)
    assert env.wait_dropped("bad_encoding", 3)

    # Float depth in millimetres (depth_scale mistakes): refused as such, not silently emptied.
    color, depth, info, pose = env.frame_msgs(i + 3)
    mm = numpy_to_image_msg(env.world.frames[i + 3].depth * 1000.0, "32FC1", depth.header)
    env.publish(color, mm, info, pose)
    assert env.wait_dropped("depth_units", 1)
    assert env.node.rejected["bad_encoding"] == 3
    env.assert_still_serving(before)


def test_size_mismatches_between_colour_depth_and_camera_info(make_env):
    env = make_env()
    before = env.map_state()
    i = N_MAP + 2
    # CameraInfo for another resolution, stamped like the frame: joined to it, refused.
    color, depth, info, pose = env.frame_msgs(i)
    env.publish(color, depth, intrinsics_to_camera_info(INTR.scaled(320, 240), info.header), pose)
    assert env.wait_dropped("size_mismatch", 1)
    # Colour with another aspect ratio than depth: cannot be registered, refused.
    color, depth, info, pose = env.frame_msgs(i + 1)
    wide = numpy_to_image_msg(np.zeros((100, 200, 3), np.uint8), "rgb8", color.header)
    env.publish(wide, depth, info, pose)
    assert env.wait_dropped("size_mismatch", 2)
    # Colour at twice the depth resolution (same aspect): resized to depth and integrated.
    color, depth, info, pose = env.frame_msgs(i + 2)
    big = np.repeat(np.repeat(env.world.frames[i + 2].color, 2, axis=0), 2, axis=1)
    n = env.integrated()
    env.publish(numpy_to_image_msg(big, "rgb8", color.header), depth, info, pose)
    assert wait_for(lambda: env.integrated() == n + 1), (env.node.rejected, env.dropped())
    # /diagnostics is periodic: wait for a message newer than the integration before reading it.
    assert env.wait_dropped("size_mismatch", 2)["size_mismatch"] == 2
    env.assert_still_serving(before)


def test_camera_info_is_joined_to_its_frame_by_stamp(make_env):
    env = make_env()
    i = N_MAP + 2
    # Frame i's CameraInfo is good, frame i+1's is for another resolution, and both arrive before
    # either image pair: frame i must still use its own (by stamp), not the latest.
    c0, d0, info0, p0 = env.frame_msgs(i)
    c1, d1, info1, p1 = env.frame_msgs(i + 1)
    env.publish(info=info0, pose=p0)
    env.publish(info=intrinsics_to_camera_info(INTR.scaled(320, 240), info1.header), pose=p1)
    time.sleep(0.2)
    n = env.integrated()
    env.publish(c0, d0)
    assert wait_for(lambda: env.integrated() == n + 1), (env.node.rejected, env.dropped())
    env.publish(c1, d1)
    assert env.wait_dropped("size_mismatch", 1)


def test_missing_camera_info(make_env):
    # Map loaded, but no CameraInfo ever received; pairs may wait long (the queue bound is tested).
    env = make_env(params=(Parameter("tf_timeout", value=5.0),), prime=False)
    before = env.map_state()
    for i in range(N_MAP, N_MAP + 4):
        env.feed(i, info=None)
        time.sleep(0.02)
    # Pairs wait (bounded) for a CameraInfo; none comes, so the oldest are dropped with a reason.
    for k in range(8):
        env.feed(N_MAP, stamp=T0 + (N_FRAMES + k) * DT, info=None)
        time.sleep(0.02)
    counts = env.wait_dropped("no_camera_info", 2)
    assert counts["no_camera_info"] >= 2 and env.integrated() == 0
    env.assert_still_serving(before)
    # A camera that publishes its CameraInfo once, latched with a zero stamp: used for every frame.
    _, _, info, _ = env.frame_msgs(0)
    info.header = make_header("camera_color_optical_frame", 0.0)
    env.publish(info=info)
    held = env.node._MAX_PENDING  # the pairs that waited for it are integrated now
    assert wait_for(lambda: env.integrated() == held), (env.node.rejected, env.dropped())
    n = env.integrated()
    env.feed(N_MAP + 4, stamp=T0 + (N_FRAMES + 20) * DT, info=None)
    assert wait_for(lambda: env.integrated() == n + 1), (env.node.rejected, env.dropped())


def test_missing_and_stale_pose(make_env):
    env = make_env(prime=False)
    before = env.map_state()
    # No pose source at all: pairs wait (bounded), then are dropped as no_pose.
    for k in range(13):
        env.feed(N_MAP + k % 4, stamp=T0 + (N_MAP + k) * DT, pose=None)
        time.sleep(0.02)
    assert env.wait_dropped("no_pose", 3)
    assert env.integrated() == 0
    # Poses arrive but lag the images by 3 s, longer than pairs are held (a stalled SLAM front-end):
    # dropped as stale_pose.
    for k in range(13):
        t = T0 + 10.0 + k * DT
        _, _, _, pose = env.frame_msgs(N_MAP + k % 4, stamp=t - 3.0)
        env.feed(N_MAP + k % 4, stamp=t, pose=pose)
        time.sleep(0.02)
    assert env.wait_dropped("stale_pose", 3)
    assert env.integrated() == 0
    # A pose with a NaN quaternion, one in the wrong frame: counted, never used.
    _, _, _, pose = env.frame_msgs(N_MAP, stamp=T0 + 50)
    pose.pose.orientation.w = float("nan")
    env.publish(pose=pose)
    assert env.wait_dropped("bad_pose", 1)
    _, _, _, pose = env.frame_msgs(N_MAP, stamp=T0 + 50)
    pose.header.frame_id = "odom"
    env.publish(pose=pose)
    assert env.wait_dropped("wrong_pose_frame", 1)
    # The pose source recovers: frames are integrated again.
    n = env.integrated()
    env.feed(N_MAP, stamp=T0 + 60)
    assert wait_for(lambda: env.integrated() > n), (env.node.rejected, env.dropped())
    env.assert_still_serving(before)


def test_frames_out_of_order(make_env):
    env = make_env()  # frames N_MAP and N_MAP + 1 integrated: the last stamp is T0 + (N_MAP + 1) * DT
    before = env.map_state()
    last = T0 + (N_MAP + 1) * DT
    received = env.received()
    env.feed(N_MAP + 2, stamp=last - 0.3)  # older than the last integrated frame
    assert env.wait_dropped("out_of_order", 1)
    env.feed(N_MAP + 1)  # the same stamp again (a duplicated message)
    assert env.wait_dropped("out_of_order", 2)
    assert env.received() == received  # never reached the map
    # Newer frames are integrated as usual.
    n = env.integrated()
    env.feed(N_MAP + 2)
    assert wait_for(lambda: env.integrated() == n + 1), (env.node.rejected, env.dropped())
    # A jump back of minutes is a restarted source (bag replayed): accepted again, not out of order.
    env.feed(N_MAP + 3, stamp=T0 - 60.0)
    assert wait_for(lambda: env.received() == received + 2), (env.node.rejected, env.dropped())
    assert env.dropped()["out_of_order"] == 2
    env.assert_still_serving(before)


# --------------------------------------------------------------------------- queries


def test_empty_whitespace_and_10kb_queries(make_env):
    env = make_env()
    before = env.map_state()
    for text, expected in (
        ("", "empty"),
        (" \t\n  ", "empty"),
        ("?!...", "no words"),
        ("where is " + "x" * 10240, "limit"),
    ):
        resp = env.query(text)
        assert not resp.success and expected in resp.message, (text[:20], resp.message)
        assert len(resp.result.query) <= 200  # the 10 kB text is not echoed back in full
    assert env.seg.calls == []  # refused before the 2D model was asked
    env.assert_still_serving(before)


def test_query_on_an_empty_map(make_env):
    env = make_env(load=False, prime=False)
    resp = env.query(env.world.query)
    assert not resp.success and "empty" in resp.message
    assert call_service(
        env.client,
        LoadMap,
        "/reasoning_seg/load_map",
        LoadMap.Request(directory=Path(env.world.map_dir).name),
    ).success
    env.assert_still_serving((0, 0, 0))


def test_queries_flooding_the_service(make_env):
    env = make_env()
    before = env.map_state()
    env.seg.delay = 0.2  # each 2D-model call takes 0.2 s: the first query holds the lock ~1 s
    # Four operators' nodes, three requests each, all at once (one client's own response queue
    # would overflow first: what is tested is the node). With the default service QoS (keep last
    # 10) the node's request reader lost 2 of the 12 and their callers waited forever.
    ex = SingleThreadedExecutor(context=env.node.context)
    nodes = [rclpy.create_node(f"flood_{k}", context=env.node.context) for k in range(4)]
    clients = [n.create_client(Segment, "/reasoning_seg/segment") for n in nodes]
    for n in nodes:
        ex.add_node(n)
    assert all(c.wait_for_service(timeout_sec=10) for c in clients)
    futures = [c.call_async(Segment.Request(query=env.world.query)) for c in clients for _ in range(3)]
    deadline = time.monotonic() + 30
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    ex.shutdown()
    for n in nodes:
        n.destroy_node()
    responses = [f.result() for f in futures]
    assert all(r is not None for r in responses), (
        f"{sum(r is None for r in responses)} of {len(responses)} requests were never answered",
        [r.message for r in responses if r is not None],
    )
    answered = [r for r in responses if r.success]
    refused = [r for r in responses if not r.success]
    assert answered and all(r.result.found for r in answered)
    assert refused and all("busy" in r.message for r in refused), [r.message for r in refused]
    env.seg.delay = 0.0
    env.assert_still_serving(before)


# --------------------------------------------------------------------------- the 2D model failing


@pytest.mark.parametrize("error", ["runtime_error", "cuda_oom"])
def test_segmenter_exception_in_one_view(make_env, error):
    env = make_env()
    before = env.map_state()
    bad: list[int] = []

    def fail(views):
        if not bad:
            bad.append(views[0].keyframe_id)  # the first view of the first batch is the bad one
        if bad[0] in [v.keyframe_id for v in views]:
            return RuntimeError("view decoder crashed") if error == "runtime_error" else _oom()
        return None

    env.seg.fail = fail
    resp = env.query(env.world.query)
    # The batch failed, every view was retried alone, and only the bad view was dropped.
    assert resp.success and resp.result.found, resp.message
    assert bad[0] not in list(resp.result.keyframe_ids) and len(resp.result.keyframe_ids) >= 3
    assert any(c == [bad[0]] for c in env.seg.calls)
    env.seg.fail = lambda views: None
    env.assert_still_serving(before)


def test_segmenter_exception_in_one_view_is_reported_in_the_message(make_env):
    env = make_env()
    bad: list[int] = []

    def fail(views):
        if not bad:
            bad.append(views[0].keyframe_id)
        return RuntimeError("view decoder crashed") if bad[0] in [v.keyframe_id for v in views] else None

    env.seg.fail = fail
    resp = env.query(env.world.query)
    assert resp.success
    assert "failed" in resp.message and f"keyframe {bad[0]}" in resp.message, resp.message


def test_segmenter_failing_on_every_view(make_env):
    env = make_env()
    before = env.map_state()
    env.seg.fail = lambda views: _oom()
    resp = env.query(env.world.query)
    assert not resp.success
    assert "failed on every view" in resp.message and "out of memory" in resp.message, resp.message
    env.seg.fail = lambda views: None  # the GPU has memory again
    env.assert_still_serving(before)


# --------------------------------------------------------------------------- corrupt checkpoints


def test_corrupt_net_checkpoint(make_env, tmp_path):
    bad = tmp_path / "net.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 64)
    env = make_env(params=(Parameter("net.checkpoint", value=str(bad)),))
    before = env.map_state()
    assert wait_for(lambda: env.node.net_status.startswith("failed"), 30.0), env.node.net_status

    def net3d() -> str:
        return {kv.key: kv.value for kv in env.diag[-1].status[0].values}.get("net3d", "")

    assert wait_for(lambda: net3d().startswith("failed"), 5.0), net3d()
    resp = env.query(env.world.query)
    assert resp.success and resp.result.found, resp.message
    assert "answered by fusion" in resp.message and "3D net failed" in resp.message, resp.message
    assert resp.result.method.startswith("fusion")
    env.assert_still_serving(before)


def test_corrupt_lisa_path(make_env, tmp_path):
    bad = tmp_path / "LISA-broken"
    bad.mkdir()
    (bad / "config.json").write_text("{ this is not json")
    env = make_env(
        params=(
            Parameter("segmenter.backend", value="lisa"),
            Parameter("segmenter.lisa_path", value=str(bad)),
            Parameter("segmenter.lisa_device", value="cpu"),
        ),
        segmenter=False,
    )
    assert wait_for(lambda: env.node.model_status != "loading", 60.0)
    assert env.node.model_status.startswith("failed")
    before = env.map_state()
    resp = env.query(env.world.query)
    assert not resp.success and "2D model not ready (failed" in resp.message, resp.message
    # Mapping goes on without a model: the next frames are still integrated.
    n = env.integrated()
    env.feed(N_MAP + 2)
    assert wait_for(lambda: env.integrated() == n + 1), (env.node.rejected, env.dropped())
    points, version, _ = env.map_state()
    assert points >= before[0] and version > before[1]


# --------------------------------------------------------------------------- pose from TF


class _Tf2Contract:
    """A CONTRACT stand-in for the tf2_ros module (tf2_ros cannot be installed from the wheels here).

    It checks our use of the tf2_ros API, not tf2 itself, and follows what the real library does
    (ros2/geometry2 tf2 BufferCore, checked against the real library built from source for issue 18):
    ``lookup_transform`` at time 0 returns the newest transform; no transform between the frames
    raises ``LookupException`` ("... passed to lookupTransform argument target_frame does not
    exist"); a stamp newer than the newest raises ``ExtrapolationException`` whose text depends on the
    buffer: "Lookup would require extrapolation at time X, but only time Y is in the buffer" with one
    sample, "... into the future. Requested time X but the latest data is at time Y" with more. The
    node must not depend on those texts. The real DDS topics still carry the images.
    """

    class TransformException(Exception):  # noqa: N818 - tf2's names
        pass

    class ExtrapolationException(TransformException):
        pass

    class LookupException(TransformException):
        pass

    class TransformListener:
        def __init__(self, buffer, node) -> None:
            self.buffer = buffer

    class Buffer:
        def __init__(self) -> None:
            self.poses: dict[float, np.ndarray] = {}
            self.frames = {"camera_color_optical_frame"}
            self.timeouts: list[float] = []

        def lookup_transform(self, target, source, stamp, timeout=None):
            from builtin_interfaces.msg import Time as TimeMsg
            from geometry_msgs.msg import TransformStamped

            from reasoning_seg.ros.conversions import matrix_to_transform, stamp_to_sec

            if timeout is not None:
                self.timeouts.append(timeout.nanoseconds * 1e-9)
            if source not in self.frames or not self.poses:
                raise _Tf2Contract.LookupException(
                    f'"{target}" passed to lookupTransform argument target_frame does not exist. '
                )
            t = stamp.nanoseconds * 1e-9 if hasattr(stamp, "nanoseconds") else stamp_to_sec(stamp)
            newest = max(self.poses)
            if t == 0.0:
                t = newest
            t = round(t, 6)
            where = f", when looking up transform from frame [{source}] to frame [{target}]"
            if t > newest and len(self.poses) == 1:
                raise _Tf2Contract.ExtrapolationException(
                    f"Lookup would require extrapolation at time {t:.9f}, but only time {newest:.9f} "
                    f"is in the buffer{where}"
                )
            if t > newest:
                raise _Tf2Contract.ExtrapolationException(
                    f"Lookup would require extrapolation into the future.  Requested time {t:.9f} but "
                    f"the latest data is at time {newest:.9f}{where}"
                )
            if t not in self.poses:
                raise _Tf2Contract.ExtrapolationException(
                    f"Lookup would require extrapolation into the past.  Requested time {t:.9f} but the "
                    f"earliest data is at time {min(self.poses):.9f}{where}"
                )
            sec = int(t)
            header_stamp = TimeMsg(sec=sec, nanosec=int(round((t - sec) * 1e9)))
            out = TransformStamped(transform=matrix_to_transform(self.poses[t]))
            out.header.stamp = header_stamp
            return out


def test_pose_from_tf_waits_for_tf_to_catch_up(make_env, monkeypatch):
    """Contract test of our tf2_ros use (see :class:`_Tf2Contract`)."""
    import reasoning_seg.ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_ros", _Tf2Contract)
    params = (Parameter("pose_source", value="tf"), Parameter("tf_timeout", value=5.0))
    env = make_env(params=params, load=True, prime=False)
    buf = env.node._pose.tf_buffer
    assert isinstance(buf, _Tf2Contract.Buffer)
    before = env.map_state()
    i = N_MAP
    # Before the first transform (LookupException): the pair waits instead of being dropped ...
    env.feed(i, pose=None)
    time.sleep(0.5)
    assert env.received() == 0 and not env.dropped().get("no_pose") and not env.dropped().get("tf_future")
    # ... and is integrated as soon as the transform for its stamp arrives (the node's retry timer).
    buf.poses[round(env.world.frames[i].stamp, 6)] = env.world.frames[i].T_world_cam
    assert wait_for(lambda: env.integrated() == 1), (env.node.rejected, env.dropped())
    assert max(buf.timeouts) == 0.0  # never blocks an executor thread: the pair waits in the queue
    # One sample in the buffer, a newer stamp (tf2's "only time Y is in the buffer"): TF lags, wait.
    env.feed(i + 1, pose=None)
    time.sleep(0.3)
    assert not env.dropped().get("tf_future") and not env.dropped().get("no_pose")
    buf.poses[round(env.world.frames[i + 1].stamp, 6)] = env.world.frames[i + 1].T_world_cam
    assert wait_for(lambda: env.integrated() == 2), (env.node.rejected, env.dropped())
    # A camera frame TF does not know (yet) waits like a missing first transform; TF that never
    # catches up: pairs are held at most _MAX_PENDING deep, then dropped with their reason.
    color, depth, info, _ = env.frame_msgs(i + 3)
    color.header.frame_id = depth.header.frame_id = "camera_nowhere"
    env.publish(color, depth, info)
    for k in range(env.node._MAX_PENDING + 2):
        env.feed(i + 3, stamp=T0 + 5.0 + k * DT, pose=None)
        time.sleep(0.02)
    assert env.wait_dropped("no_pose", 1)  # the unknown frame, dropped first (oldest)
    assert env.wait_dropped("tf_future", 2)
    assert len(env.node._pending) <= env.node._MAX_PENDING
    env.assert_still_serving(before)


def test_a_pair_waits_for_tf_at_most_tf_timeout(make_env, monkeypatch):
    """Waiting for TF is bounded in time, not only by the queue (issue 18).

    One lone pair whose TF never comes is dropped (counted) about ``tf_timeout`` after it arrived,
    while a pair whose TF comes within the bound is integrated. Pairs used to wait until 10 newer
    ones pushed them out.
    """
    import reasoning_seg.ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_ros", _Tf2Contract)
    params = (Parameter("pose_source", value="tf"), Parameter("tf_timeout", value=0.6))
    env = make_env(params=params, load=False, prime=False)
    buf = env.node._pose.tf_buffer
    i = N_MAP
    buf.poses[round(env.world.frames[i].stamp, 6)] = env.world.frames[i].T_world_cam
    env.feed(i, pose=None)
    assert wait_for(lambda: env.integrated() == 1), (env.node.rejected, env.dropped())
    env.feed(i + 1, pose=None)  # its TF lags by 0.2 s: within the bound
    time.sleep(0.2)
    buf.poses[round(env.world.frames[i + 1].stamp, 6)] = env.world.frames[i + 1].T_world_cam
    assert wait_for(lambda: env.integrated() == 2), (env.node.rejected, env.dropped())
    t0 = time.monotonic()
    env.feed(i + 2, pose=None)  # its TF never comes, and nothing pushes it out of the queue
    assert env.wait_dropped("tf_future", 1, timeout=10.0)
    waited = time.monotonic() - t0
    assert 0.5 <= waited <= 5.0, waited  # the bound (0.6 s), not the queue (it holds one pair)
    assert not env.node._pending and env.integrated() == 2


def test_zero_stamp_is_refused_under_tf(make_env, monkeypatch):
    """A pair stamped 0 is refused under TF and counted, the map untouched.

    tf2 answers a lookup at time 0 with its newest transform, so the pair would be placed with a
    later pose (found by the demo over the real tf2, issue 18).
    """
    import reasoning_seg.ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_ros", _Tf2Contract)
    env = make_env(params=(Parameter("pose_source", value="tf"),), load=True, prime=False)
    buf = env.node._pose.tf_buffer
    before = env.map_state()
    i = N_MAP
    buf.poses[round(env.world.frames[i].stamp, 6)] = env.world.frames[i].T_world_cam
    env.feed(i, stamp=0.0, pose=None)
    assert env.wait_dropped("zero_stamp", 1)
    assert env.integrated() == 0 and env.map_state() == before
    assert env.node.rejected["zero_stamp"] == 1
    env.feed(i, pose=None)  # the same frame, stamped: integrated
    assert wait_for(lambda: env.integrated() == 1), (env.node.rejected, env.dropped())
    assert env.map_state() != before


def test_auto_pose_source_uses_the_pose_topic_when_tf_has_no_camera(make_env, monkeypatch):
    """With tf2_ros importable, a robot that publishes only ``camera/pose`` still gets a map.

    Issue 18: ``auto`` used to mean TF only, and the player's ``camera/pose`` gave an empty map.
    Now the first source to deliver is used and kept.
    """
    import reasoning_seg.ros.node as node_module

    monkeypatch.setattr(node_module, "tf2_ros", _Tf2Contract)
    env = make_env(params=(Parameter("pose_source", value="auto"),), load=False, prime=False)
    assert isinstance(env.node._pose.tf_buffer, _Tf2Contract.Buffer)
    assert env.node.diagnostics_values()["pose_source"].startswith("auto (waiting for TF")
    for i in range(3):
        env.feed(N_MAP + i)  # colour, depth, info and camera/pose; TF stays empty
    assert wait_for(lambda: env.integrated() >= 1), (env.node.rejected, env.dropped())
    assert env.node.diagnostics_values()["pose_source"] == "auto -> camera/pose / camera/transform"
    # Kept: a transform appearing later does not switch sources mid-map.
    buf = env.node._pose.tf_buffer
    buf.poses[round(env.world.frames[N_MAP + 3].stamp, 6)] = np.eye(4)  # a wrong pose, if it were used
    env.feed(N_MAP + 3)
    assert wait_for(lambda: env.received() == 4), (env.node.rejected, env.dropped())
    assert env.node.diagnostics_values()["pose_source"] == "auto -> camera/pose / camera/transform"
    truth = {round(f.stamp, 6): f.T_world_cam for f in env.world.frames}
    for kf in env.node.pipeline.keyframes.snapshot():
        np.testing.assert_allclose(kf.T_world_cam, truth[round(kf.frame.stamp, 6)], atol=1e-6)
    assert not env.node.rejected


def test_auto_pose_source_prefers_tf_and_warns_when_nothing_delivers(make_env, monkeypatch):
    import reasoning_seg.ros.node as node_module
    import reasoning_seg.ros.pose_source as pose_module

    monkeypatch.setattr(node_module, "tf2_ros", _Tf2Contract)
    monkeypatch.setattr(pose_module, "WARN_AFTER", 0.5)
    env = make_env(params=(Parameter("pose_source", value="auto"),), load=False, prime=False)
    # Nothing delivers: pairs wait (bounded), then go as no_pose, and /diagnostics says what is missing.
    for k in range(env.node._MAX_PENDING + 3):
        env.feed(N_MAP, stamp=T0 + k * DT, pose=None)
        time.sleep(0.08)
    env.wait_dropped("no_pose", 3)
    assert len(env.node._pending) <= env.node._MAX_PENDING
    assert wait_for(lambda: env.diag and "no camera pose" in env.diag[-1].status[0].message)
    status = env.diag[-1].status[0]
    assert status.level == status.WARN
    assert "TF 'map' <- 'camera_color_optical_frame'" in status.message and "camera/pose" in status.message
    # TF delivers (and the topic too): TF is chosen, and the frames go in with TF's pose.
    buf = env.node._pose.tf_buffer
    for i in range(N_MAP, N_MAP + 3):
        f = env.world.frames[i]
        buf.poses[round(f.stamp, 6)] = f.T_world_cam
    for i in range(N_MAP, N_MAP + 3):
        env.feed(i)
    assert wait_for(lambda: env.integrated() >= 1), (env.node.rejected, env.dropped())
    assert env.node.diagnostics_values()["pose_source"] == "auto -> TF 'map' <- 'camera_color_optical_frame'"
    assert wait_for(lambda: "no camera pose" not in env.diag[-1].status[0].message)


# --------------------------------------------------------------------------- CameraInfo join (no ROS)


def test_stamp_join_prefers_the_stamp_then_waits_while_live_then_falls_back():
    from reasoning_seg.io.frame_sync import StampJoin

    j: StampJoin[str] = StampJoin(slop=0.02, live_window=0.5)
    assert j.match(1.0) == (None, "none")
    j.add(1.0, "a")
    j.add(1.1, "b")
    assert j.match(1.005) == ("a", "stamp")
    assert j.match(1.2) == (None, "wait")  # the stream is live: its info for 1.2 is on the way
    assert j.match(3.0) == ("b", "closest")  # nothing newer came for 1.9 s: static from here on
    assert j.match(0.5) == ("a", "closest")  # older than every info: the oldest is the closest
    j.add(1.05, "late")  # out of order: placed by stamp
    assert j.match(1.05) == ("late", "stamp")
    static: StampJoin[str] = StampJoin(slop=0.02)
    static.add(0.0, "latched")  # published once with a zero stamp
    assert static.match(1234.5) == ("latched", "closest")


def test_pose_buffer_uses_a_pose_after_a_stall_but_never_interpolates_across_it():
    from reasoning_seg.io.frame_sync import PoseBuffer

    buf = PoseBuffer(max_age=0.1)
    a, b = np.eye(4), np.eye(4)
    b[:3, 3] = (5.0, 0.0, 0.0)
    buf.add(1.0, a)
    buf.add(60.0, b)  # the SLAM front-end stalled for a minute, then resumed
    T, reason, _ = buf.lookup_reason(60.0)
    assert reason == "" and np.allclose(T, b)  # exactly at the resumed pose: usable
    assert buf.lookup_reason(1.05)[1] == ""  # near the last pose before the stall
    T, reason, why = buf.lookup_reason(30.0)
    assert T is None and reason == "stale_pose" and "gap" in why
    assert PoseBuffer(0.1).lookup_reason(1.0)[1] == "no_pose"


# --------------------------------------------------------------------------- message_filters wiring


class _MessageFiltersContract:
    """A CONTRACT stand-in for the message_filters API the node uses (not installable from the wheels).

    It checks our use of the API, not message_filters itself; kept in step with the real package.

    Subscriber wraps a real rclpy subscription exactly as message_filters does (extra keyword
    arguments go to ``create_subscription``); the synchroniser pairs the two inputs by nearest stamp.
    """

    class Subscriber:
        def __init__(self, node, msg_type, topic, **kwargs) -> None:
            self.callbacks: list = []
            self.sub = node.create_subscription(msg_type, topic, self._cb, **kwargs)

        def _cb(self, msg) -> None:
            for cb in self.callbacks:
                cb(msg)

        def registerCallback(self, cb) -> None:  # noqa: N802 - message_filters' name
            self.callbacks.append(cb)

    class ApproximateTimeSynchronizer:
        def __init__(self, fs, queue_size, slop) -> None:
            from reasoning_seg.ros.conversions import stamp_to_sec

            self.slop, self.queues, self.out, self.queue_size = slop, ([], []), [], queue_size
            for k, f in enumerate(fs):
                f.callbacks.append(lambda msg, k=k: self._add(k, stamp_to_sec(msg.header.stamp), msg))

        def registerCallback(self, cb) -> None:  # noqa: N802 - message_filters' name
            self.out.append(cb)

        def _add(self, k: int, t: float, msg) -> None:
            other = self.queues[1 - k]
            match = [m for m in other if abs(m[0] - t) < self.slop]
            if not match:
                self.queues[k].append((t, msg))
                del self.queues[k][: -self.queue_size]  # the oldest goes, as message_filters does
                return
            other.remove(match[0])
            pair = (msg, match[0][1]) if k == 0 else (match[0][1], msg)
            for cb in self.out:
                cb(*pair)

    TimeSynchronizer = None


@pytest.mark.parametrize("backend", ["own", "message_filters"])
def test_unpaired_images_are_counted_on_either_synchroniser(make_env, monkeypatch, backend):
    """``sync_dropped`` counts colour images that never get a depth partner, whichever pairs them.

    ``message_filters`` is the real package where it is importable (a full ROS 2 install), else
    the contract stand-in; ``own`` is the node's ApproximatePairSync.
    """
    import reasoning_seg.ros.node as node_module

    if backend == "own":
        monkeypatch.setattr(node_module, "message_filters", None)
    elif node_module.message_filters is None:
        monkeypatch.setattr(node_module, "message_filters", _MessageFiltersContract)
    env = make_env()
    assert env.node.sync_backend.startswith("message_filters") == (backend == "message_filters")
    assert env.node.diagnostics_values()["sync_dropped"] == "0"
    queue = 30  # node._CAMERA_QUEUE: unpaired images beyond it are let go
    for k in range(queue + 12):
        color, _, info, pose = env.frame_msgs(N_MAP + 2, stamp=T0 + 10.0 + k * DT)
        env.publish(color=color, info=info, pose=pose)
        time.sleep(0.03)  # paced: a burst beyond the reader's keep-last depth is lost in DDS, uncounted
    assert wait_for(lambda: int(env.node.diagnostics_values()["sync_dropped"]) >= 12), {
        k: v for k, v in env.node.diagnostics_values().items() if v != "0"
    }
    # Not more than were sent beyond the queue (nothing counted twice) ...
    assert int(env.node.diagnostics_values()["sync_dropped"]) <= 12
    # ... and a paired frame still goes through.
    before = env.received()
    env.feed(N_MAP + 3, stamp=T0 + 20.0)
    assert wait_for(lambda: env.received() == before + 1), (env.node.rejected, env.node.diagnostics_values())


def test_colour_and_depth_paired_by_message_filters_when_importable(make_env, monkeypatch):
    import reasoning_seg.ros.node as node_module

    monkeypatch.setattr(node_module, "message_filters", _MessageFiltersContract)
    env = make_env()  # prime: two frames through the topics, integrated
    assert env.node.sync_backend == "message_filters.ApproximateTimeSynchronizer"
    assert env.integrated() >= 2 and not env.node.rejected


# --------------------------------------------------------------------------- hostile clients (issue 17)


def test_absurd_poses_intrinsics_and_quaternions_are_counted_and_change_nothing(make_env):
    env = make_env()
    before = env.map_state()
    i = N_MAP + 2
    color, depth, info, pose = env.frame_msgs(i)
    pose.pose.position.x = 1e300  # finite, absurd: once accepted, every later query failed
    env.publish(color, depth, info, pose)
    env.wait_dropped("pose_out_of_bounds", 1)
    color, depth, info, pose = env.frame_msgs(i + 1)
    info.k = [1e-3, 0.0, info.k[2], 0.0, 1e-3, info.k[5], 0.0, 0.0, 1.0]  # one frame: 76,800 blocks
    env.publish(info=info)
    env.wait_dropped("bad_camera_info", 1)
    _, _, _, pose = env.frame_msgs(i + 2)
    pose.pose.orientation.x, pose.pose.orientation.w = 1e200, 0.0  # overflowed to identity before
    env.publish(pose=pose)
    env.wait_dropped("bad_pose", 1)
    _, _, _, pose = env.frame_msgs(i + 2)
    pose.header.frame_id = ""  # the README says poses are in map_frame: an empty frame is not
    env.publish(pose=pose)
    env.wait_dropped("wrong_pose_frame", 1)
    assert env.map_state() == before  # nothing of it reached the map or the keyframes
    assert env.node.pipeline.stats.rejected["pose_out_of_bounds"] == 1
    env.assert_still_serving(before)


def test_a_failing_tracked_query_does_not_take_the_node_down(make_env):
    """An internal error in a timer callback (here the tracked re-run) used to end the process."""
    from reasoning_seg.ros.node import _Tracked

    env = make_env()
    before = env.map_state()
    real_query = env.node.pipeline.query

    def broken(text, **kw):
        if kw.get("num_views") == 3:  # only the tracked query (the user's asks with the default)
            raise RuntimeError("planted failure in a tracked query")
        return real_query(text, **kw)

    env.node.pipeline.query = broken
    try:
        with env.node._state_lock:
            env.node._tracked["the sofa"] = _Tracked("the sofa", 3, 0.5, 0.1)
        assert wait_for(lambda: env.node.callback_errors["track_tick"] >= 1, 20.0)
        assert wait_for(
            lambda: any(
                kv.key == "callback_errors.track_tick"
                for kv in (env.diag[-1].status[0].values if env.diag else [])
            ),
            10.0,
        )
        with env.node._state_lock:
            env.node._tracked.clear()
    finally:
        env.node.pipeline.query = real_query
    env.assert_still_serving(before)


def test_save_and_load_stay_in_the_map_directory(make_env, tmp_path):
    from reasoning_seg_msgs.srv import RemoveTarget, SaveMap

    env = make_env()
    base = Path(env.node.cfg.map_directory)

    def save(name: str, **kw):
        return call_service(
            env.client, SaveMap, "/reasoning_seg/save_map", SaveMap.Request(directory=name, **kw)
        )

    outside = tmp_path / "outside"
    for bad in (str(outside), "../outside", "a/../../outside", ""):
        resp = save(bad)
        assert not resp.success and "refused" in resp.message, (bad, resp.message)
    assert not outside.exists()
    resp = call_service(env.client, LoadMap, "/reasoning_seg/load_map", LoadMap.Request(directory="/etc"))
    assert not resp.success and "refused" in resp.message
    ok = save("hostile/kept")
    assert ok.success, ok.message
    assert (base / "hostile" / "kept" / "state.json").is_file()
    # A removal margin beyond the parameter's range is refused (0.1 m took 109 s and 2 GB before).
    assert env.query(env.world.query).result.found
    resp = call_service(
        env.client,
        RemoveTarget,
        "/reasoning_seg/remove_target",
        RemoveTarget.Request(query=env.world.query, margin=5.0),
    )
    assert not resp.success and "limit" in resp.message, resp.message
    # After clear_map, the saved map is not silently replaced by an empty one.
    call_service(env.client, Trigger, "/reasoning_seg/clear_map", Trigger.Request())
    refused = save("hostile/kept")
    assert not refused.success and "empty" in refused.message
    assert save("hostile/kept", allow_empty_overwrite=True).success


# --------------------------------------------------------------------------- property-based fuzzing


def test_fuzzed_messages_and_queries_never_hurt_the_node(make_env):
    """Hypothesis over Image / CameraInfo / pose / query fields, through real DDS.

    Fixed budget (60 examples, derandomized: the same inputs every run). Asserts: no exception reaches
    a callback guard (callback_errors stays 0: every bad input is refused by validation, not by
    luck), the map changes only through frames the node integrated, every query call is answered,
    and the node still answers a good query afterwards.
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    env = make_env()
    before = env.map_state()
    integrated_before = env.integrated()
    answered = []
    floats = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -1.0, 1e-3, 1e300, -1e300, 131.25, 80.0, 60.0]),
    )
    encodings = st.sampled_from(["rgb8", "bgr8", "16UC1", "32FC1", "mono8", "rgba8", "", "jpeg", "8UC7"])

    @st.composite
    def image(draw, topic):
        h = Image()
        h.header = make_header("camera_color_optical_frame", T0 + 1000.0 + draw(st.integers(0, 50)) * DT)
        h.height, h.width = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        h.encoding = draw(encodings)
        h.step = draw(st.integers(0, 400))
        h.is_bigendian = draw(st.integers(0, 1))
        h.data = bytes(draw(st.binary(max_size=2000)))
        return topic, h

    @st.composite
    def info(draw):
        _, _, msg, _ = env.frame_msgs(N_MAP + 2)
        msg.width, msg.height = draw(st.integers(0, 5000)), draw(st.integers(0, 5000))
        msg.k = [draw(floats) for _ in range(9)]
        return "info", msg

    @st.composite
    def pose(draw):
        _, _, _, msg = env.frame_msgs(N_MAP + 2)
        p, q = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = draw(floats), draw(floats), draw(floats)
        q.x, q.y, q.z, q.w = draw(floats), draw(floats), draw(floats), draw(floats)
        msg.header.frame_id = draw(st.sampled_from(["map", "", "odom", "map\x00", "m" * 300]))
        return "pose", msg

    queries = st.text(alphabet=st.characters(codec="utf-8"), max_size=300).map(lambda t: ("query", t))
    inputs = st.one_of(image("color"), image("depth"), info(), pose(), queries)

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(item=inputs)
    def one(item):
        kind, msg = item
        if kind == "query":
            resp = call_segment(env.client, msg, timeout=60.0)
            assert resp is not None and isinstance(resp.success, bool)
            answered.append(resp.success)
        else:
            env.pubs[kind].publish(msg)

    one()
    time.sleep(1.0)  # let the last messages be processed
    assert sum(env.node.callback_errors.values()) == 0, dict(env.node.callback_errors)
    assert env.node.rejected["internal_error"] == 0, env.dropped()
    if env.integrated() == integrated_before:
        assert env.map_state() == before
    assert answered  # the budget reached the query service
    env.assert_still_serving(before)


def test_a_tracked_rerun_makes_a_user_query_wait_not_fail(make_env):
    """A user query arriving during a tracked re-run waits for it instead of being refused.

    With concurrent_queries=reject it was refused "busy" (four tracked queries made the node refuse
    16 of 20 user queries).
    """
    env = make_env(params=(Parameter("concurrent_queries", value="reject"),))
    node = env.node
    assert node._query_lock.acquire(timeout=5)
    node._tracking_runs = True  # what _track_tick holds while it re-runs a tracked query

    def finish() -> None:
        time.sleep(1.0)
        node._tracking_runs = False
        node._query_lock.release()

    threading.Thread(target=finish, daemon=True).start()
    resp = env.query(env.world.query)
    assert resp.success and resp.result.found, resp.message
    # A user query running holds the lock the same way: then reject still means reject.
    assert node._query_lock.acquire(timeout=5)
    try:
        busy = env.query(env.world.query)
        assert not busy.success and "busy" in busy.message
    finally:
        node._query_lock.release()


def test_an_answer_in_flight_during_clear_is_not_kept(make_env):
    """A query running while clear_map replaces the map must not drive a later remove_target.

    Before: its answer was remembered, and remove_target "" removed 110,928 voxels of the new map.
    """
    from reasoning_seg_msgs.srv import RemoveTarget

    env = make_env()
    env.seg.delay = 1.0  # the query is still in the 2D model when the map is cleared
    out = {}
    other = rclpy.create_node("in_flight_client", context=env.client.context)  # one spinner per node

    def ask() -> None:
        out["r"] = call_segment(other, env.world.query, timeout=60.0)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    assert wait_for(lambda: env.node._running_query is not None, 10.0)
    cleared = call_service(env.client, Trigger, "/reasoning_seg/clear_map", Trigger.Request())
    assert cleared.success
    t.join(60.0)
    other.destroy_node()
    env.seg.delay = 0.0
    assert "answer not kept" in out["r"].message or not out["r"].success, out["r"].message
    resp = call_service(
        env.client, RemoveTarget, "/reasoning_seg/remove_target", RemoveTarget.Request(query="", margin=0.0)
    )
    assert not resp.success and resp.num_points_removed == 0, resp.message


def test_client_text_is_escaped_truncated_and_invalid_queries_counted_as_refused(make_env):
    """Issue 17 leftovers: what a client sends comes back escaped and bounded; refusals are counted."""
    from reasoning_seg.ros.node import _MAX_ECHO, printable

    assert printable("bin\x1b[2J\r\nX\u202e") == "bin\\x1b[2J\\r\\nX\\u202e"  # no terminal control
    assert printable("Öffner für Dosen") == "Öffner für Dosen"  # printable text unchanged
    env = make_env()

    def counts() -> tuple[int, int]:
        v = env.node.diagnostics_values()
        return int(v["queries_served"]), int(v["queries_refused"])

    served, refused = counts()
    frame = "\x1b[31m" + "f" * 5000
    resp = call_segment(env.client, env.world.query, target_frame=frame)
    assert not resp.success and "is not supported" in resp.message
    echoed = resp.message.split("'")[1]
    assert echoed.startswith("\\x1b[31m") and "\x1b" not in resp.message
    assert echoed.count("f") == _MAX_ECHO - len("\x1b[31m") and len(resp.message) < 300
    for bad in ("", "   ", "x" * 20000):
        r = env.query(bad)
        assert not r.success and "query" in r.message
    assert counts() == (served, refused + 4)  # all refused, none served
    assert env.query(env.world.query).success
    assert counts() == (served + 1, refused + 4)


def test_a_long_save_does_not_silence_diagnostics_or_queries(make_env, monkeypatch):
    """A slow admin call (a big map on a slow disk) leaves /diagnostics and queries running.

    Timers and queries have their own callback groups, apart from the admin services.
    """
    import reasoning_seg.pipeline as pipeline_module

    real_save = pipeline_module.save_state

    def slow_save(*args, **kwargs):
        time.sleep(8.0)  # far longer than a query on a loaded 2-core machine (up to ~4 s seen)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "save_state", slow_save)
    env = make_env()
    done: list = []
    caller = rclpy.create_node("slow_save_client", context=env.client.context)
    thread = threading.Thread(
        target=lambda: done.append(
            call_service(caller, SaveMap, "/reasoning_seg/save_map", SaveMap.Request(directory="slow"))
        )
    )
    time.sleep(0.3)
    n0 = len(env.diag)
    thread.start()
    try:
        time.sleep(0.3)  # the save is now sleeping inside the admin callback group
        assert not done
        t0 = time.monotonic()
        assert env.query(env.world.query).success  # queries are another group: answered meanwhile
        answered_in = time.monotonic() - t0
        time.sleep(0.5)
        during = len(env.diag) - n0  # diagnostics_period 0.1 s
        assert not done, "the save finished too early for this test to mean anything"
        assert during >= 5, during
        assert answered_in < 4.0
    finally:
        thread.join(timeout=30)
        caller.destroy_node()
    assert done and done[0].success, done
