"""Issue 8 features of the node over real rclpy + DDS on loopback.

Persistent queries (``~/track_query``), target removal after a pick (``~/remove_target``), the
query queue and its flood limit, reject mode, action cancellation (running and queued), the
/diagnostics keys, the CLI's ``--track``/``--untrack``/``--remove``, and parameter validation.

Every node starts from a map saved by the pipeline (loaded through ``~/load_map``); where a test
needs the map to grow, frames are fed to ``node.pipeline.add_frame`` from the test thread, the same
call the camera callbacks make (ingestion through the topics is covered by test_node_robustness).
The 2D model is the SIMULATION of LISA in its ``oracle`` profile, wrapped to be slow on demand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from reasoning_seg_msgs.action import SegmentQuery
from reasoning_seg_msgs.msg import SegmentationResult
from reasoning_seg_msgs.srv import LoadMap, Segment
from scipy.spatial import cKDTree
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import MarkerArray

from node_world import DT, T0, VOXEL, World, build_world
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.ros import node as node_module
from reasoning_seg.ros import query_client
from reasoning_seg.ros.conversions import cloud_msg_to_numpy
from reasoning_seg.ros.node import ReasoningSegNode, executor_threads, gpu_memory_mb
from reasoning_seg.ros.query_client import call_remove, call_segment, call_service, call_track
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter

pytestmark = pytest.mark.ros

N_MAP = 10  # frames in the saved map; later ones grow it
N_FRAMES = 24
LATCHED = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("features"), N_FRAMES, N_MAP, n_queries=2, min_points=50)


class SlowSegmenter:
    """The simulated LISA, ``delay`` seconds slower per call: long enough for queries to overlap."""

    def __init__(self, inner: SimulatedSegmenter) -> None:
        self.inner = inner
        self.name = f"slow({inner.name})"
        self.embedding_dim = inner.embedding_dim
        self.delay = 0.0
        self.calls = 0

    def segment(self, views, query):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.inner.segment(views, query)


@dataclass
class Env:
    world: World
    node: ReasoningSegNode
    client: object  # a plain rclpy node for service calls and subscriptions
    seg: SlowSegmenter
    results: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    diag: list = field(default_factory=list)
    next_frame: int = N_MAP

    def grow(self, n: int = 1) -> None:
        """Integrate the next ``n`` frames of the trajectory, cycling and restamped (as the camera would)."""
        for _ in range(n):
            before = self.node.pipeline.stats.frames_integrated
            f = self.world.frames[self.next_frame % N_FRAMES]
            restamped = RGBDFrame(
                f.color, f.depth, f.intrinsics, f.T_world_cam, T0 + self.next_frame * DT, self.next_frame
            )
            self.node.pipeline.add_frame(restamped)
            assert self.node.pipeline.stats.frames_integrated == before + 1
            self.next_frame += 1

    def diag_values(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diag[-1].status[0].values} if self.diag else {}

    def spin_client(self, predicate: Callable[[], bool], timeout: float = 8.0) -> bool:
        """Spin the client node (its subscriptions) until ``predicate()`` or the timeout."""
        ex = SingleThreadedExecutor(context=self.node.context)
        ex.add_node(self.client)
        try:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    return False
                ex.spin_once(timeout_sec=0.02)
            return True
        finally:
            ex.remove_node(self.client)
            ex.shutdown()


@pytest.fixture
def make_env(ros_context, world):
    """``make_env(*params) -> Env``: the node spinning with ``executor_threads`` threads, map loaded."""
    started: list = []

    def _make(*params: Parameter) -> Env:
        seg = SlowSegmenter(SimulatedSegmenter(world.scene, profile="oracle"))
        node = ReasoningSegNode(
            segmenter=seg,
            context=ros_context,
            parameter_overrides=[
                Parameter("map.voxel_size", value=VOXEL),
                Parameter("fusion.visibility_tolerance", value=0.08),
                Parameter("pose_source", value="topic"),
                Parameter("map_directory", value=str(Path(world.map_dir).parent)),
                Parameter("diagnostics_period", value=0.1),
                Parameter("map_publish_period", value=0.0),
                *params,
            ],
        )
        executor = MultiThreadedExecutor(context=ros_context, num_threads=executor_threads(node.cfg))
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        client = rclpy.create_node("features_client", context=ros_context)
        started.append((node, client, executor, thread))
        env = Env(world, node, client, seg)
        client.create_subscription(SegmentationResult, "/reasoning_seg/result", env.results.append, LATCHED)
        client.create_subscription(MarkerArray, "/reasoning_seg/markers", env.markers.append, LATCHED)
        client.create_subscription(PointCloud2, "/reasoning_seg/map_cloud", env.maps.append, LATCHED)
        client.create_subscription(DiagnosticArray, "/diagnostics", env.diag.append, 10)
        resp = call_service(
            client, LoadMap, "/reasoning_seg/load_map", LoadMap.Request(directory=Path(world.map_dir).name)
        )
        assert resp.success, resp.message
        return env

    yield _make
    for node, client, executor, thread in started:
        client.destroy_node()
        executor.shutdown()
        thread.join(timeout=5)
        node.destroy_node()


def _concurrent_segment_calls(env: Env, n: int, timeout: float = 60.0) -> list[Segment.Response]:
    """Send ``n`` Segment requests at once and wait for every answer."""
    client = env.client.create_client(Segment, "/reasoning_seg/segment")
    assert client.wait_for_service(timeout_sec=10)
    futures = [client.call_async(Segment.Request(query=env.world.query)) for _ in range(n)]
    assert env.spin_client(lambda: all(f.done() for f in futures), timeout)
    env.client.destroy_client(client)
    return [f.result() for f in futures]


def _ns(markers: MarkerArray) -> set[str]:
    return {m.ns for m in markers.markers if m.action == m.ADD}


# --------------------------------------------------------------------------- persistent queries


def test_tracked_query_is_republished_as_the_map_grows_until_cleared(make_env):
    env = make_env()
    q = env.world.query
    resp = call_track(env.client, q, period=0.5)
    assert resp.success and list(resp.active) == [q], resp.message

    def tracked_results() -> list[SegmentationResult]:
        return [r for r in env.results if r.query == q]

    # First answer at once (the map is new to the tracker), found, with its own marker namespace.
    assert env.spin_client(lambda: len(tracked_results()) >= 1), env.diag_values()
    first = tracked_results()[0]
    assert first.found and first.num_points > 20 and first.cloud.width == first.num_points, first.message
    assert "confidence" in [f.name for f in first.cloud.fields]
    assert env.spin_client(lambda: f"tracked/{q}/target" in _ns(env.markers[-1]) if env.markers else False)
    label = next(m for m in env.markers[-1].markers if m.ns == f"tracked/{q}/target_label")
    assert label.text.startswith(q)

    # The map does not change: nothing is re-run, however long we wait.
    runs = env.node.diagnostics_values()["persistent_runs"]
    env.spin_client(lambda: False, 1.0)
    assert len(tracked_results()) == 1 and env.node.diagnostics_values()["persistent_runs"] == runs

    # The map grows for 2 s: re-run and re-published, but at most once per 0.5 s period.
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        env.grow()
        env.spin_client(lambda: False, 0.1)
    env.spin_client(lambda: False, 0.3)
    n = len(tracked_results())
    assert 2 <= n <= 1 + 5, n  # the first answer + between 1 and 2.0 / 0.5 + 1 re-runs
    assert all(r.found for r in tracked_results())
    stamps = [r.header.stamp.sec + r.header.stamp.nanosec * 1e-9 for r in tracked_results()]
    assert np.all(np.diff(stamps) >= 0.5 - 0.05), np.diff(stamps)

    # Cleared: no more re-runs while the map keeps growing, and its markers are deleted.
    resp = call_track(env.client, q, clear=True)
    assert resp.success and list(resp.active) == [], resp.message
    assert env.spin_client(lambda: not any(ns.startswith("tracked/") for ns in _ns(env.markers[-1])))
    n = len(tracked_results())
    env.grow(3)
    env.spin_client(lambda: False, 1.0)
    assert len(tracked_results()) == n
    assert env.node.diagnostics_values()["persistent_queries"] == "0"


def test_tracking_limit_update_and_clear(make_env):
    env = make_env(Parameter("max_persistent_queries", value=2), Parameter("persistent_period", value=30.0))
    w = env.world
    assert call_track(env.client, w.query).success
    assert call_track(env.client, w.other_query).success
    over = call_track(env.client, "something to sit on")
    assert not over.success and "max_persistent_queries=2" in over.message
    assert sorted(over.active) == sorted([w.query, w.other_query])
    # Updating a tracked query is not a new one; whitespace does not make it a different query.
    upd = call_track(env.client, "  " + w.query.replace(" ", "   ") + " ", period=5.0)
    assert upd.success and upd.message.startswith("updated") and len(upd.active) == 2
    assert not call_track(env.client, "   ").success  # empty query refused
    assert not call_track(env.client, w.query, score_threshold=1.5).success
    unknown = call_track(env.client, "a dragon made of cheese", clear=True)
    assert not unknown.success and "not tracked" in unknown.message
    everything = call_track(env.client, "", clear=True)
    assert everything.success and list(everything.active) == [] and "2 queries" in everything.message


# --------------------------------------------------------------------------- removal after a pick


def test_remove_target_clears_its_voxels_and_keeps_the_rest(make_env):
    env = make_env(Parameter("removal_margin", value=0.02))
    nothing = call_remove(env.client)
    assert not nothing.success and "no query has been answered" in nothing.message

    resp = call_segment(env.client, env.world.query)
    assert resp.success and resp.result.found, resp.message
    cloud = cloud_msg_to_numpy(resp.result.cloud)
    target = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1)
    before = env.node.pipeline.surface().points
    radius = env.node.pipeline.map.removal_radius() + 0.02
    far = cKDTree(target).query(before)[0] > radius + 2 * VOXEL
    assert far.sum() > len(before) // 2

    removed = call_remove(env.client)  # "" = the latest answer's target
    assert removed.success and removed.num_points_removed > len(target) // 2, removed.message
    after = env.node.pipeline.surface().points
    assert len(after) < len(before) - len(target) // 2
    assert cKDTree(after).query(target)[0].min() > 0.5 * VOXEL  # nothing left at the target
    kept = cKDTree(after).query(before[far])[0] < 0.5 * VOXEL
    assert kept.mean() > 0.99  # the rest of the map is untouched
    # The map cloud is re-published at once (map_publish_period is 0 here: only removal publishes).
    assert env.spin_client(lambda: bool(env.maps) and env.maps[-1].width == len(after))

    # Its answer is gone with it; another query's answer cannot be removed without asking it first.
    twice = call_remove(env.client, env.world.query)
    assert not twice.success and "no answer" in twice.message
    other = call_remove(env.client, env.world.other_query)
    assert not other.success and "no answer" in other.message
    # Asked again, the query no longer finds anything where the removed target was.
    again = call_segment(env.client, env.world.query)
    assert again.success, again.message
    if again.result.found:
        c = cloud_msg_to_numpy(again.result.cloud)
        pts = np.stack([c["x"], c["y"], c["z"]], axis=1)
        assert np.median(cKDTree(target).query(pts)[0]) > VOXEL
    else:
        gone = call_remove(env.client)
        assert not gone.success and "found no target" in gone.message


# --------------------------------------------------------------------------- concurrency


def test_queue_flood_refuses_beyond_max_queued_queries(make_env):
    env = make_env(Parameter("concurrent_queries", value="queue"), Parameter("max_queued_queries", value=1))
    env.seg.delay = 0.4  # the first query holds the lock >= 0.8 s (global + local views)
    responses = _concurrent_segment_calls(env, 4)
    answered = [r for r in responses if r.success]
    refused = [r for r in responses if not r.success]
    assert len(answered) == 2 and all(r.result.found for r in answered)  # the running one + 1 queued
    assert len(refused) == 2 and all("busy: 1 queries already waiting" in r.message for r in refused)
    v = env.node.diagnostics_values()
    assert v["queries_refused"] == "2" and v["queries_served"] == "2" and v["queries_waiting"] == "0"


def test_reject_mode_refuses_a_second_query(make_env):
    env = make_env(Parameter("concurrent_queries", value="reject"))
    env.seg.delay = 0.4
    responses = _concurrent_segment_calls(env, 2)
    assert sum(r.success for r in responses) == 1
    (refused,) = [r for r in responses if not r.success]
    assert refused.message == "busy: another query is running (concurrent_queries=reject)"


def test_action_cancel_while_running_and_while_queued(make_env):
    env = make_env(Parameter("concurrent_queries", value="queue"))
    env.seg.delay = 0.5
    action = ActionClient(env.client, SegmentQuery, "/reasoning_seg/segment_query")
    assert action.wait_for_server(timeout_sec=10)
    feedback: list = []

    def send() -> object:
        fut = action.send_goal_async(
            SegmentQuery.Goal(query=env.world.query), feedback_callback=feedback.append
        )
        assert env.spin_client(fut.done)
        handle = fut.result()
        assert handle.accepted
        return handle

    # 1. Cancelled while the 2D model runs: the next progress report raises, the goal ends CANCELED.
    running = send()
    assert env.spin_client(lambda: bool(feedback))
    t0 = time.monotonic()
    running.cancel_goal_async()
    res = running.get_result_async()
    assert env.spin_client(res.done, 10.0)
    assert res.result().status == GoalStatus.STATUS_CANCELED
    assert not res.result().result.success and res.result().result.message == "cancelled"
    assert time.monotonic() - t0 < 3.0

    # 2. Cancelled while waiting in the queue behind a slow Segment call.
    seg_client = env.client.create_client(Segment, "/reasoning_seg/segment")
    blocking = seg_client.call_async(Segment.Request(query=env.world.query))
    assert env.spin_client(lambda: env.node.diagnostics_values()["query_running"] == "true")
    queued = send()
    assert env.spin_client(lambda: env.node.diagnostics_values()["queries_waiting"] == "1")
    queued.cancel_goal_async()
    res = queued.get_result_async()
    assert env.spin_client(res.done, 5.0)
    assert res.result().status == GoalStatus.STATUS_CANCELED and res.result().result.message == "cancelled"
    assert not blocking.done()  # it left the queue before the running query finished
    assert env.spin_client(blocking.done, 30.0) and blocking.result().success
    assert env.node.diagnostics_values()["queries_waiting"] == "0"
    env.client.destroy_client(seg_client)
    action.destroy()


# --------------------------------------------------------------------------- diagnostics


DIAG_KEYS = {
    "frames_received",
    "frames_integrated",
    "rate.received_hz",
    "rate.integrated_hz",
    "keyframes",
    "map_blocks",
    "map_points",
    "model",
    "net3d",
    "queries_served",
    "queries_refused",
    "queries_waiting",
    "query_running",
    "pending_pairs",
    "pairs_in",
    "map_cloud_current",
    "pose_corrections",
    "pose_corrections_refused",
    "last_pose_correction",
    "sync_dropped",
    "persistent_queries",
    "persistent_skipped",
    "dropped.skipped",
    "dropped.not_novel",
    "dropped.blocks",
    "dropped.blocks_pruned",
}


def test_diagnostics_report_rates_queues_and_model(make_env):
    env = make_env()
    # Diagnostics run in their own callback group (a long save/load must not silence them), so a
    # message may predate the map load that make_env waited for: wait for one after it.
    assert env.spin_client(lambda: bool(env.diag) and int(env.diag_values()["map_points"]) > 0)
    v = env.diag_values()
    assert DIAG_KEYS <= set(v), DIAG_KEYS - set(v)
    assert v["model"] == "ready" and v["net3d"] == "not configured" and v["query_running"] == "false"
    assert int(v["map_points"]) == len(env.node.pipeline.surface()) > 0  # computed: map publishing is off
    if gpu_memory_mb() is None:
        assert "gpu_memory_mb" not in v
    # Frames at ~10 Hz for a second: the sliding-window rates see them.
    for _ in range(8):
        env.grow()
        env.spin_client(lambda: False, 0.1)
    assert env.spin_client(lambda: float(env.diag_values()["rate.integrated_hz"]) > 2.0)
    assert env.spin_client(lambda: env.diag_values()["frames_integrated"] == "8")
    v = env.diag_values()
    assert float(v["rate.received_hz"]) >= float(v["rate.integrated_hz"])
    assert call_segment(env.client, env.world.query).success
    assert call_track(env.client, env.world.query, period=60.0).success
    assert env.spin_client(
        lambda: env.diag_values()["queries_served"] == "1" and env.diag_values()["persistent_queries"] == "1"
    )


def test_gpu_memory_is_reported_only_when_torch_uses_cuda(monkeypatch):
    allocated = {0: 3 * 2**20, 1: 2**19}
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: allocated[i],
    )
    monkeypatch.setitem(node_module.sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert gpu_memory_mb() == pytest.approx(3.5)
    cuda.is_initialized = lambda: False  # imported, but CUDA never used: no key, no CUDA init
    assert gpu_memory_mb() is None
    monkeypatch.delitem(node_module.sys.modules, "torch")
    assert gpu_memory_mb() is None


# --------------------------------------------------------------------------- CLI and parameters


def test_query_client_track_untrack_remove(make_env, ros_domain_id, monkeypatch, capsys):
    env = make_env()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain_id))  # the CLI uses the default context
    q = env.world.query
    assert query_client.main(["reasoning_seg_query", q, "--track", "--period", "60", "--timeout", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == [q]
    assert env.node.diagnostics_values()["persistent_queries"] == "1"
    assert query_client.main(["reasoning_seg_query", "--untrack", "--timeout", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == []
    assert query_client.main(["reasoning_seg_query", "--remove", "--timeout", "20"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["success"] and out["num_points_removed"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("persistent_period", 0.0),
        ("max_persistent_queries", 65),
        ("removal_margin", 1.5),
        ("max_queued_queries", -1),
        ("concurrent_queries", "sometimes"),
        ("persistent_period", "often"),
    ],
)
def test_invalid_parameters_are_refused_at_start(ros_context, name, value):
    with pytest.raises(ValueError, match=name):
        ReasoningSegNode(context=ros_context, parameter_overrides=[Parameter(name, value=value)])


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    import platform

    from reasoning_seg.ros.node import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's explicit setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas() is True  # glibc: mallopt(M_ARENA_MAX) accepted


def test_pose_corrections_move_keyframes_and_rebuild_the_map(make_env):
    """A loop closure on ~/pose_corrections (nav_msgs/Path): keyframes follow, the map moves with them."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg

    from reasoning_seg.ros.conversions import make_header, matrix_to_pose

    env = make_env()
    pub = env.client.create_publisher(PathMsg, "/reasoning_seg/pose_corrections", 5)
    kfs = env.node.pipeline.keyframes.snapshot()
    centre = env.node.pipeline.surface().points.mean(0)
    assert call_segment(env.client, env.world.query).success  # an answer on the old map

    def path(frame: str, shift: float) -> PathMsg:
        msg = PathMsg(header=make_header(frame, 0.0))
        for kf in kfs:
            T = kf.T_world_cam.copy()
            T[0, 3] += shift
            msg.poses.append(PoseStamped(header=make_header(frame, kf.frame.stamp), pose=matrix_to_pose(T)))
        return msg

    assert env.spin_client(lambda: pub.get_subscription_count() > 0)
    pub.publish(path("odom", 0.2))  # another frame than the map's: refused, nothing moves
    assert env.spin_client(lambda: env.diag_values().get("pose_corrections_refused") == "1")
    assert env.node.pipeline.keyframes.snapshot()[0].T_world_cam[0, 3] == kfs[0].T_world_cam[0, 3]

    pub.publish(path("map", 0.2))  # SLAM says every keyframe was 20 cm further along x
    assert env.spin_client(lambda: env.diag_values().get("pose_corrections") == "1", timeout=20.0)
    moved = env.node.pipeline.keyframes.snapshot()
    assert [k.keyframe_id for k in moved] == [k.keyframe_id for k in kfs]
    for a, b in zip(moved, kfs, strict=True):
        assert a.T_world_cam[0, 3] == pytest.approx(b.T_world_cam[0, 3] + 0.2, abs=1e-9)
    shift = env.node.pipeline.surface().points.mean(0) - centre
    assert shift[0] == pytest.approx(0.2, abs=0.05) and abs(shift[1]) < 0.05  # the map moved along
    assert f"{len(kfs)} of {len(kfs)} keyframes moved" in env.diag_values()["last_pose_correction"]
    assert not env.node._last_results  # answers on the old geometry are forgotten
