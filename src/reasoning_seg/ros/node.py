"""The reasoning_seg node: camera stream in, voxel map kept, implicit queries answered.

This layer only converts messages, holds parameters and calls :class:`ReasoningSegPipeline`.
Threads: camera callbacks run in one mutually exclusive group (frames are integrated in arrival
order); queries (service and action) in a reentrant one, so a query never blocks ingestion and a
second query reaches the node at once to be queued or refused (one query lock runs them one at a
time); map save/load/clear, track/remove and the map and diagnostics timers in a third; the
re-segmentation of tracked (persistent) queries in a fourth. A MultiThreadedExecutor with
:func:`executor_threads` threads serves them all.

One class, four files: this one sets the node up (parameters, subscriptions, services, timers, the
model); its handlers are mixins in :mod:`.node_ingest` (camera input), :mod:`.node_queries`
(Segment, SegmentQuery, tracked queries) and :mod:`.node_map` (save/load/clear, pose corrections,
removal, the map cloud and /diagnostics); :mod:`.node_common` holds the limits and QoS they share.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Path as PathMsg
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from reasoning_seg_msgs.action import SegmentQuery
from reasoning_seg_msgs.msg import SegmentationResult
from reasoning_seg_msgs.srv import LoadMap, RemoveTarget, SaveMap, Segment, TrackQuery
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from reasoning_seg.backends import segmenter_from_config
from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.io.frame_sync import ApproximatePairSync, StampJoin
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.query.result import QueryResult
from reasoning_seg.ros.node_common import (  # noqa: F401 - re-exported: tests and tools use them from here
    _CAMERA_QUEUE,
    _INVALID_QUERY_PREFIXES,
    _LATCHED,
    _MARGIN_RANGE,
    _MAX_CORRECTION_POSES,
    _MAX_ECHO,
    _PERIOD_RANGE,
    _RATE_WINDOW,
    _REMEMBERED,
    _REQUESTS,
    _TIME_JUMP_BACK,
    _TRACK_TICK,
    _USER,
    _WAIT_SLICE,
    _abort_goal,
    _answer_service,
    _param_range,
    _Tracked,
    gpu_memory_mb,
    printable,
)
from reasoning_seg.ros.node_ingest import IngestMixin
from reasoning_seg.ros.node_map import MapMixin
from reasoning_seg.ros.node_queries import QueriesMixin
from reasoning_seg.ros.params import NodeConfig, declare_and_read
from reasoning_seg.ros.pose_source import PoseSource
from reasoning_seg.ros.process import ignore_further_sigint
from reasoning_seg.segmenter import Segmenter

try:  # real ROS 2 installs; not available from PyPI wheels
    import tf2_ros  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None
try:  # real ROS 2 installs; otherwise the node pairs colour and depth with its own ApproximatePairSync
    import message_filters  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    message_filters = None


class ReasoningSegNode(IngestMixin, QueriesMixin, MapMixin, Node):
    """ROS 2 front end of the pipeline (see module docstring for threading)."""

    def __init__(self, segmenter: Segmenter | None = None, **kwargs) -> None:
        super().__init__("reasoning_seg", **kwargs)
        self.cfg, pipe_cfg = declare_and_read(self)
        self.pipeline = ReasoningSegPipeline(pipe_cfg)
        self.rejected: Counter = Counter()
        self.callback_errors: Counter = Counter()  # by callback name: exceptions caught by _guard
        self._map_epoch = 0  # +1 on clear/load: answers computed on an older map are not remembered
        self._tracking_runs = False  # a tracked re-run holds the query lock (users wait for it)
        self._intrinsics = None  # the latest valid CameraInfo (for status); frames use _infos
        # CameraInfo joined to each pair by stamp; a static/latched one (old stamp) is used as is. A
        # pair waits for its own CameraInfo only if the newest one is at most a few frames older
        # (a per-frame stream, down to 4 Hz), so a slow (1 Hz) or one-off CameraInfo adds no latency.
        # (0.25 s, not one frame period: a 10 Hz stream is 0.1 s apart and must still count as live.)
        self._infos: StampJoin[CameraIntrinsics] = StampJoin(
            self.cfg.sync_slop, live_window=max(0.25, 5 * self.cfg.sync_slop)
        )
        self._last_stamp: float | None = None  # stamp of the last frame the pipeline accepted
        # The executor may drain one topic's queue in a burst before the other's, so the pairing queue
        # is as deep as the subscription queue to never drop a frame whose partner is queued.
        self._sync: ApproximatePairSync = ApproximatePairSync(self.cfg.sync_slop, queue_size=_CAMERA_QUEUE)
        # Image pairs that arrived before their pose or the first CameraInfo (a tf2 message filter
        # would hold them too); bounded, the oldest is decided when it overflows.
        self._pending: deque[tuple[float, Image, Image, float]] = deque()  # + arrival (monotonic)
        self._query_lock = threading.Lock()
        self._queries_served = 0
        self._last_map_version = -1
        self._last_warn: dict[str, float] = {}
        # --- queries, tracking and diagnostics state (counters read by /diagnostics), under _state_lock
        self._state_lock = threading.Lock()
        self._queries_refused = 0
        self._waiting = 0  # queries waiting for _query_lock (concurrent_queries=queue)
        self._pairs_in = 0  # colour+depth pairs taken off the wire (a pacing player reads it)
        self._corrections = 0  # ~/pose_corrections messages that moved keyframes
        self._corrections_refused = 0  # ... that were refused in whole or in part
        self._last_correction = "none"
        self._running_query: str | None = None
        self._tracked: dict[str, _Tracked] = {}  # persistent queries by normalised text
        self._persistent_runs = 0
        self._persistent_skipped = 0
        self._last_results: OrderedDict[str, QueryResult] = OrderedDict()  # for RemoveTarget
        self._last_answered: str | None = None  # the latest Segment/SegmentQuery answer's query
        self._markers: dict[str, list[Marker]] = {}  # by owner: _USER or a tracked query
        self._markers_lock = threading.Lock()
        self._rate_samples: deque[tuple[float, int, int]] = deque()
        self._map_points = 0

        # --- the 2D model: loaded in the background so the node is up (and mapping) at once
        self.model_status = "loading"
        if segmenter is not None:
            self._set_model(segmenter)
        else:
            threading.Thread(target=self._load_model, name="model_loader", daemon=True).start()
        # --- the label-free 3D network (MLLM-For3D §3.3), optional: also loaded in the background;
        #     until it is ready (or if it cannot be loaded) queries are answered by fusion.
        if pipe_cfg.net.checkpoint:
            threading.Thread(target=self._load_net, name="net_loader", daemon=True).start()

        # --- pose source: TF, the pose topics, or (auto) the first of them to deliver
        self._pose = PoseSource(self, self.cfg, tf2_ros)

        sensors = MutuallyExclusiveCallbackGroup()
        # Reentrant: a second query must reach _acquire_query_slot to be queued or refused at once,
        # not wait unseen in the executor; _query_lock still runs one query at a time.
        queries = ReentrantCallbackGroup()
        admin = MutuallyExclusiveCallbackGroup()
        tracking = MutuallyExclusiveCallbackGroup()  # its own group: a long re-run must not stall admin
        # Reliable (recordings): a deeper queue absorbs bursts while a query or GC stalls the executor;
        # keep-last history still bounds memory (_CAMERA_QUEUE colour + depth images).
        qos = (
            qos_profile_sensor_data
            if self.cfg.sensor_qos == "sensor_data"
            else QoSProfile(depth=_CAMERA_QUEUE)
        )
        self._mf_sync = None
        self._mf_counts: Counter = Counter()  # colour / depth in, pairs out (message_filters path)
        if message_filters is not None:
            subs = [
                message_filters.Subscriber(self, Image, t, qos_profile=qos, callback_group=sensors)
                for t in ("camera/color/image_raw", "camera/depth/image_raw")
            ]
            # Python's ApproximateTimeSynchronizer needs a stamp difference strictly below a positive
            # slop; exact pairing (sync_slop 0) is the TimeSynchronizer. CameraInfo is not a third input:
            # a camera that publishes it once (latched, old stamp) would never complete a triple.
            if self.cfg.sync_slop > 0:
                self._mf_sync = message_filters.ApproximateTimeSynchronizer(
                    subs, _CAMERA_QUEUE, self.cfg.sync_slop
                )
                self.sync_backend = "message_filters.ApproximateTimeSynchronizer"
            else:
                self._mf_sync = message_filters.TimeSynchronizer(subs, _CAMERA_QUEUE)
                self.sync_backend = "message_filters.TimeSynchronizer"
            self._mf_sync.registerCallback(self._guard("on_pair", self._on_pair))
            # message_filters counts nothing it drops: count what goes in and what comes out paired.
            for key, sub in zip(("color", "depth"), subs, strict=True):
                sub.registerCallback(lambda _msg, k=key: self._mf_counts.update((k,)))
        else:
            self.create_subscription(
                Image,
                "camera/color/image_raw",
                self._guard("on_color", self._on_color),
                qos,
                callback_group=sensors,
            )
            self.create_subscription(
                Image,
                "camera/depth/image_raw",
                self._guard("on_depth", self._on_depth),
                qos,
                callback_group=sensors,
            )
            self.sync_backend = "ApproximatePairSync (message_filters not importable)"
        # Pairs wait (at most tf_timeout, at most _MAX_PENDING of them) for their pose or CameraInfo;
        # retry, and let overdue pairs go, while no new image arrives.
        self.create_timer(0.05, self._guard("drain_pending", self._drain_pending), callback_group=sensors)
        self.get_logger().info(
            f"colour/depth paired by {self.sync_backend} (slop {self.cfg.sync_slop} s); CameraInfo joined "
            "by stamp, the latest one when it is static; camera QoS "
            f"{self.cfg.sensor_qos}"
        )
        self.create_subscription(
            CameraInfo,
            "camera/color/camera_info",
            self._guard("on_info", self._on_info),
            qos,
            callback_group=sensors,
        )
        if self._pose.listens_to_topics:
            self.create_subscription(
                PoseStamped, "camera/pose", self._guard("on_pose", self._on_pose), qos, callback_group=sensors
            )
            self.create_subscription(
                TransformStamped,
                "camera/transform",
                self._guard("on_transform", self._on_transform),
                qos,
                callback_group=sensors,
            )

        # Loop closures from a SLAM back-end: corrected camera poses; keyframes follow, map rebuilt.
        self.create_subscription(
            PathMsg,
            "~/pose_corrections",
            self._guard("pose_corrections", self._on_pose_corrections),
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
            callback_group=admin,
        )

        self.pub_map = self.create_publisher(PointCloud2, "~/map_cloud", _LATCHED)
        self.pub_target = self.create_publisher(PointCloud2, "~/target_cloud", _LATCHED)
        self.pub_result = self.create_publisher(SegmentationResult, "~/result", _LATCHED)
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", _LATCHED)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(
            Segment,
            "~/segment",
            self._guard("segment", self._on_segment),
            qos_profile=_REQUESTS,
            callback_group=queries,
        )
        self._action = ActionServer(
            self,
            SegmentQuery,
            "~/segment_query",
            execute_callback=self._guard("segment_query", self._on_action, _abort_goal),
            goal_callback=lambda _g: GoalResponse.ACCEPT,
            cancel_callback=lambda _g: CancelResponse.ACCEPT,
            callback_group=queries,
            goal_service_qos_profile=_REQUESTS,
            result_service_qos_profile=_REQUESTS,
            cancel_service_qos_profile=_REQUESTS,
        )
        for srv, name, handler in (
            (SaveMap, "save_map", self._on_save),
            (LoadMap, "load_map", self._on_load),
            (Trigger, "clear_map", self._on_clear),
            (TrackQuery, "track_query", self._on_track),
            (RemoveTarget, "remove_target", self._on_remove),
        ):
            self.create_service(
                srv,
                f"~/{name}",
                self._guard(name, handler),
                qos_profile=_REQUESTS,
                callback_group=admin,
            )
        self.create_timer(_TRACK_TICK, self._guard("track_tick", self._track_tick), callback_group=tracking)
        # Timers in their own group: a long admin call (a large save or load) must not silence them.
        timers = MutuallyExclusiveCallbackGroup()
        if self.cfg.map_publish_period > 0:
            self.create_timer(
                self.cfg.map_publish_period,
                self._guard("publish_map", self._publish_map),
                callback_group=timers,
            )
        if self.cfg.diagnostics_period > 0:
            self.create_timer(
                self.cfg.diagnostics_period,
                self._guard("publish_diagnostics", self._publish_diagnostics),
                callback_group=timers,
            )
        net = f"'{pipe_cfg.net.checkpoint}' (loading)" if pipe_cfg.net.checkpoint else "off (fusion answers)"
        self.get_logger().info(
            f"reasoning_seg up: map frame '{self.cfg.map_frame}', pose from "
            f"{self._pose.describe()}, voxel "
            f"{pipe_cfg.map.voxel_size} m, segmenter '{pipe_cfg.segmenter.backend}', 3D net {net}"
        )

    # ------------------------------------------------------------------ callback safety
    def _guard(self, name: str, fn: Callable, answer: Callable | None = None) -> Callable:
        """``fn`` wrapped so that no exception leaves it: the executor would re-raise it and stop.

        A caught exception is counted (``callback_errors.<name>`` in /diagnostics) and logged with
        its traceback (rate-limited); then ``answer(why, *args)`` gives the callback's return value
        (default :func:`_answer_service`: a service request still gets ``success`` false and the
        error in ``message``; nothing for a subscription or timer).
        """
        answer = answer or _answer_service

        def guarded(*args):
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - nothing may take the node down
                self.callback_errors[name] += 1
                self._warn(
                    f"callback:{name}",
                    f"{name} failed, the node keeps running: {exc!r}\n{traceback.format_exc()}",
                )
                return answer(f"internal error: {type(exc).__name__}: {exc}"[:500], *args)

        return guarded

    # ------------------------------------------------------------------ model
    def _load_model(self) -> None:
        s = self.pipeline.config.segmenter
        try:
            self._set_model(segmenter_from_config(s))
        except Exception as exc:  # noqa: BLE001 - any loader error must leave the node up and say why
            self.model_status = f"failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"2D model could not be loaded: {exc}")

    def _load_net(self) -> None:
        status = self.pipeline.load_net()  # never raises; the status says why it failed
        if status.startswith("ready"):
            self.get_logger().info(f"3D net {status}: queries are answered by it")
        else:
            self.get_logger().error(f"3D net could not be loaded ({status}): queries are answered by fusion")

    @property
    def net_status(self) -> str:
        """The 3D network's state ("not configured", "loading", "ready: ...", "failed: ...")."""
        return self.pipeline.net_status

    def _set_model(self, segmenter: Segmenter) -> None:
        self.pipeline.segmenter = segmenter
        self.model_status = "ready"
        self.get_logger().info(f"2D model ready: {segmenter.name}")


def executor_threads(cfg: NodeConfig) -> int:
    """Executor threads the node needs so that waiting queries never starve ingestion.

    One each for the camera, admin and tracking groups, one for the running query, one for
    answering refusals and action bookkeeping, plus one per query allowed to wait
    (``max_queued_queries``). Python's thread pool starts threads only when they are needed.
    """
    return 5 + (cfg.max_queued_queries if cfg.concurrent_queries == "queue" else 0)


MALLOC_ARENAS = 2
"""glibc malloc arenas of the node process (:func:`limit_malloc_arenas`)."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas; returns whether it was applied (glibc only).

    Why: glibc gives each thread that allocates concurrently its own arena (up to 8 per core) and
    rarely returns their free pages. The node's executor threads allocate large, short-lived numpy
    arrays (images, map snapshots), so RSS kept creeping in the 10-minute soak after the map had hit
    its block budget (1419 -> 1434 MiB over 6 min, ~1.4 GiB in all); with two arenas the same soak
    stayed at 850-885 MiB (bench/results/soak.md). Python holds the GIL for most allocations, so
    fewer arenas cost no measurable contention. An explicit ``MALLOC_ARENA_MAX`` in the environment wins.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8 = M_ARENA_MAX (malloc.h)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to cap
        return False


def main(args: list[str] | None = None) -> None:
    """Entry point of ``reasoning_seg_node``."""
    limit_malloc_arenas()  # before the executor's threads exist
    rclpy.init(args=args)
    try:
        node = ReasoningSegNode()
    except ValueError as exc:
        print(f"reasoning_seg: invalid parameters: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    executor = MultiThreadedExecutor(num_threads=executor_threads(node.cfg))
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_further_sigint()  # a second Ctrl-C (terminal + launch) must not break the shutdown
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
