"""The reasoning_seg node: camera stream in, voxel map kept, implicit queries answered.

This layer only converts messages, holds parameters and calls :class:`ReasoningSegPipeline`.
Threads: camera callbacks run in one mutually exclusive group (frames are integrated in arrival
order); queries (service and action) in a reentrant one, so a query never blocks ingestion and a
second query reaches the node at once to be queued or refused (one query lock runs them one at a
time); map save/load/clear, track/remove and the map and diagnostics timers in a third; the
re-segmentation of tracked (persistent) queries in a fourth. A MultiThreadedExecutor with
:func:`executor_threads` threads serves them all.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped, Vector3
from nav_msgs.msg import Path as PathMsg
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from reasoning_seg.action import SegmentQuery
from reasoning_seg.backends import segmenter_from_config
from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.frame_sync import ApproximatePairSync, StampJoin
from reasoning_seg.frames import FrameRejected, RGBDFrame
from reasoning_seg.msg import SegmentationResult, StageTiming
from reasoning_seg.pipeline import QueryCancelled, QueryError, ReasoningSegPipeline, normalise_query
from reasoning_seg.result import QueryResult
from reasoning_seg.ros.conversions import box_marker as make_box_marker
from reasoning_seg.ros.conversions import (
    camera_info_to_intrinsics,
    delete_all_marker,
    depth_msg_to_metres,
    frustum_marker,
    image_msg_to_rgb8,
    make_header,
    matrix_to_pose,
    points_to_cloud_msg,
    pose_to_matrix,
    stamp_to_sec,
    transform_to_matrix,
    view_report_msgs,
)
from reasoning_seg.ros.conversions import text_marker as make_text_marker
from reasoning_seg.ros.params import NodeConfig, declare_and_read
from reasoning_seg.ros.pose_source import PoseSource
from reasoning_seg.segmenter import Segmenter
from reasoning_seg.srv import LoadMap, RemoveTarget, SaveMap, Segment, TrackQuery
from reasoning_seg.state_io import resolve_map_dir

try:  # real ROS 2 installs; not available from PyPI wheels
    import tf2_ros  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None
try:  # real ROS 2 installs; otherwise the node pairs colour and depth with its own ApproximatePairSync
    import message_filters  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    message_filters = None

_CAMERA_QUEUE = 30  # reliable camera subscription depth, and the colour/depth pairing queue depth
# Sensor stamps going back by more than this many seconds are a restarted source (a replayed bag, a
# reset simulation), not an out-of-order frame: buffers are reset and the stream is accepted again.
_TIME_JUMP_BACK = 2.0
_LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# Requests every service and the action keep while all their handlers are busy. A DDS service drops
# what overflows its history without an answer, so the depth is the documented flood limit (README):
# beyond this many requests in flight at once, the oldest unserved ones are lost.
_REQUESTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
_INVALID_QUERY_PREFIXES = ("query must be", "query is ", "query contains no words")
_MAX_ECHO = 64  # characters of a client's target_frame / frame_id echoed back in messages
_WAIT_SLICE = 0.1  # s: a queued query re-checks for cancellation this often
_TRACK_TICK = 0.1  # s: how often tracked queries are checked for being due
_RATE_WINDOW = 10.0  # s: frame rates in /diagnostics are averaged over this sliding window
_MAX_CORRECTION_POSES = 1_000_000  # a Path longer than this is refused (a day of 10 Hz poses is 864k)
_REMEMBERED = 16  # latest answers kept for RemoveTarget (plus one per tracked query)
_USER = ""  # marker owner of the user's latest query; tracked queries own markers under their text


def _param_range(name: str) -> tuple[float, float]:
    """The declared (lo, hi) range of a node parameter (one source for the checks of requests)."""
    return next(f.metadata["range"] for f in fields(NodeConfig) if f.name == name)


_MARGIN_RANGE = _param_range("removal_margin")
_PERIOD_RANGE = _param_range("persistent_period")


class ReasoningSegNode(Node):
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
        self._pending: deque[tuple[float, Image, Image]] = deque()
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
        if self._pose.tf_buffer is not None:
            # Pairs wait (bounded) for TF to catch up with their stamp; retry while no image arrives.
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
        """Hold the pair until it can be decided; the oldest is decided anyway when too many wait.

        Bounded: at most ``_MAX_PENDING`` pairs (a third of a second at 30 Hz) wait for their pose,
        CameraInfo or TF; a source that never catches up costs one counted drop per new pair.
        """
        self._pose.saw_pair()
        with self._state_lock:
            self._pairs_in += 1
        problem = self._pose.waiting_problem()
        if problem:
            self._warn("no_pose_source", problem, period=10.0)
        self._pending.append((stamp, color, depth))
        self._drain_pending()
        while len(self._pending) > self._MAX_PENDING:
            self._process(*self._pending.popleft())

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
        """Decide, in arrival order, every pair up to the newest one that is ready.

        Pairs before a ready one are decided too (counted if their pose never comes): once a newer
        pair can be integrated, waiting for older ones only delays the stream.
        """
        last = -1
        for k, (stamp, color, _) in enumerate(self._pending):
            if self._ready(stamp, color):
                last = k
        for _ in range(last + 1):
            self._process(*self._pending.popleft())

    def _lookup_pose(self, stamp: float, color: Image) -> np.ndarray | None:
        T, reason, why = self._pose.lookup(stamp, color, self.cfg.tf_timeout)
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

    # ------------------------------------------------------------------ queries
    def _on_segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        result, msg = self._run_query(
            req.query, req.num_views, req.score_threshold, req.target_frame, images=req.include_view_images
        )
        resp.success, resp.message, resp.result = result.success, result.message, msg
        return resp

    def _on_action(self, goal_handle) -> SegmentQuery.Result:
        g = goal_handle.request

        def progress(stage: str, done: int, total: int) -> None:
            if goal_handle.is_cancel_requested:
                raise QueryCancelled()
            goal_handle.publish_feedback(
                SegmentQuery.Feedback(stage=stage, views_done=done, views_total=total)
            )

        out = SegmentQuery.Result()
        try:
            result, out.result = self._run_query(
                g.query,
                g.num_views,
                g.score_threshold,
                g.target_frame,
                progress,
                images=g.include_view_images,
                cancelled=lambda: goal_handle.is_cancel_requested,
            )
        except QueryCancelled:
            goal_handle.canceled()
            out.success, out.message = False, "cancelled"
            return out
        out.success, out.message = result.success, result.message
        if result.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return out

    def _acquire_query_slot(self, cancelled: Callable[[], bool] | None = None) -> str:
        """Take the query lock; returns "" once it is held, else why the query is refused.

        Only one query runs at a time (the 2D model and its GPU memory are shared). With
        ``concurrent_queries=queue`` a query waits, but at most ``max_queued_queries`` of them: each
        waiting one holds an executor thread, and a flood must not take the threads that ingestion
        and the admin services need. Raises :class:`QueryCancelled` when ``cancelled()`` turns true
        while waiting (an action goal cancelled in the queue).
        """
        if self._query_lock.acquire(blocking=False):
            return ""
        # A tracked re-run is background work: a user query waits for it (one re-run, bounded by
        # query_wait_timeout) even with concurrent_queries=reject, and the tracker yields to waiters.
        if self.cfg.concurrent_queries == "reject" and not self._tracking_runs:
            return "busy: another query is running (concurrent_queries=reject)"
        with self._state_lock:
            if self._waiting >= self.cfg.max_queued_queries:
                return (
                    f"busy: {self._waiting} queries already waiting "
                    f"(max_queued_queries={self.cfg.max_queued_queries})"
                )
            self._waiting += 1
        try:
            timeout = self.cfg.query_wait_timeout
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"busy: waited {timeout:g} s for the running query (query_wait_timeout)"
                # Short slices so a cancelled goal leaves the queue promptly.
                if self._query_lock.acquire(timeout=min(left, _WAIT_SLICE)):
                    return ""
                if cancelled is not None and cancelled():
                    raise QueryCancelled()
        finally:
            with self._state_lock:
                self._waiting -= 1

    def _run_query(
        self,
        text: str,
        num_views: int,
        threshold: float,
        target_frame: str,
        progress=None,
        cancelled: Callable[[], bool] | None = None,
        images: bool = False,
    ) -> tuple[QueryResult, SegmentationResult]:
        def refuse(why: str) -> tuple[QueryResult, SegmentationResult]:
            with self._state_lock:
                self._queries_refused += 1
            r = QueryResult(text[:200], False, False, why)
            return r, self._result_msg(r, make_header(self.cfg.map_frame, self.get_clock().now().to_msg()))

        if target_frame and target_frame != self.cfg.map_frame:
            return refuse(
                f"target_frame '{printable(target_frame[:_MAX_ECHO])}' is not supported: results "
                f"are reported in the map frame '{self.cfg.map_frame}' (transform them with TF)"
            )
        if self.model_status != "ready":
            return refuse(f"2D model not ready ({self.model_status})")
        why = self._acquire_query_slot(cancelled)
        if why:
            return refuse(why)
        try:
            self._running_query = text[:80]
            epoch = self._map_epoch  # a clear/load while this runs makes its answer stale
            # Stamped once the query runs (not when it was queued): the map state it is computed on.
            header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())
            try:
                result = self.pipeline.query(
                    text, num_views=num_views, score_threshold=threshold, progress=progress
                )
                t0 = time.perf_counter()
                msg = self._result_msg(result, header)
            except QueryCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in one query must not take the node down
                self.get_logger().error(f"query '{printable(text[:80])}' failed:\n{traceback.format_exc()}")
                why = f"internal error: {type(exc).__name__}: {exc}"
                result = QueryResult(str(text)[:200], False, False, why)
                t0 = time.perf_counter()
                msg = self._result_msg(result, header)
            if result.success:
                with self._state_lock:
                    current = epoch == self._map_epoch
                if current:
                    self._remember(result, user=True)
                    self._publish_result(result, msg, header)
                else:
                    result.message += " (the map was cleared or replaced meanwhile: answer not kept)"
                    msg.message = result.message
            result.timings["publishing"] = time.perf_counter() - t0
            msg.timings.append(StageTiming(stage="publishing", seconds=result.timings["publishing"]))
            with self._state_lock:
                # A query the pipeline refused as invalid (empty, too long) was not served.
                if result.success or not result.message.startswith(_INVALID_QUERY_PREFIXES):
                    self._queries_served += 1
                else:
                    self._queries_refused += 1
            # rclpy fixes a call site's severity on first use, hence two calls rather than one.
            text = f"query '{printable(result.query[:80])}': {printable(result.message)}"
            if result.success:
                self.get_logger().info(text)
            else:
                self.get_logger().warning(text)
            if images and result.view_images:  # in the reply only: ~/result was published without them
                msg.views = view_report_msgs(result, header, include_images=True)
            return result, msg
        finally:
            self._running_query = None
            self._query_lock.release()

    def _remember(self, result: QueryResult, user: bool) -> None:
        """Keep a query's latest answer for RemoveTarget (bounded; the oldest answers go first)."""
        # Without its view images: a remembered answer must not keep old keyframes' pixels alive.
        result = replace(result, view_images=[])
        with self._state_lock:
            self._last_results[result.query] = result
            self._last_results.move_to_end(result.query)
            while len(self._last_results) > _REMEMBERED + self.cfg.max_persistent_queries:
                self._last_results.popitem(last=False)
            if user:
                self._last_answered = result.query

    def _result_msg(self, r: QueryResult, header: Header) -> SegmentationResult:
        m = SegmentationResult()
        m.header = header
        m.query, m.found, m.message, m.answer = r.query, r.found, r.message, r.answer
        m.method, m.segmenter = r.method, r.segmenter
        colors = (np.clip(r.colors, 0, 1) * 255).astype(np.uint8) if len(r.points) else None
        m.cloud = points_to_cloud_msg(
            r.points, header, colors=colors, fields={"confidence": r.point_confidence.astype(np.float32)}
        )
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = r.box.rotation, r.box.center
        m.box.center = matrix_to_pose(T)
        m.box.size = Vector3(x=float(r.box.size[0]), y=float(r.box.size[1]), z=float(r.box.size[2]))
        m.confidence, m.num_points = float(r.confidence), len(r.points)
        m.keyframe_ids = [int(k) for k in r.keyframe_ids]
        m.timings = [StageTiming(stage=k, seconds=float(v)) for k, v in r.timings.items()]
        m.views = view_report_msgs(r, header, include_images=False)
        return m

    def _publish_result(
        self, r: QueryResult, msg: SegmentationResult, header: Header, tracked: bool = False
    ) -> None:
        """Publish an answer on ~/result, ~/target_cloud and ~/markers.

        Markers are owned by the user's latest query (namespaces ``target``, ``target_label``,
        ``views``) or by one tracked query (``tracked/<query>/...``), so re-publishing one tracked
        query never erases the markers of another.
        """
        self.pub_result.publish(msg)
        self.pub_target.publish(msg.cloud)
        prefix = f"tracked/{r.query[:60]}/" if tracked else ""
        markers: list[Marker] = []
        if r.found:
            markers.append(
                make_box_marker(r.box.center, r.box.rotation, r.box.size, header, ns=f"{prefix}target")
            )
            top = r.box.center + np.array([0.0, 0.0, r.box.size[2] / 2 + 0.1])
            markers.append(
                make_text_marker(
                    top, f"{r.query[:60]} ({r.confidence:.2f})", header, ns=f"{prefix}target_label"
                )
            )
        if self.cfg.publish_frustums:
            used = set(r.keyframe_ids)
            for i, kf in enumerate(k for k in self.pipeline.keyframes.snapshot() if k.keyframe_id in used):
                markers.append(
                    frustum_marker(
                        kf.T_world_cam, kf.frame.intrinsics, 0.3, header, ns=f"{prefix}views", id=i
                    )
                )
        self._set_markers({(r.query if tracked else _USER): markers})

    def _set_markers(self, owners: dict[str, list[Marker] | None]) -> None:
        """Replace (or with None drop) the markers of some owners, then publish every owner's markers.

        ~/markers is latched with depth 1, so each message is the whole picture: DELETEALL first,
        then the markers of the user's query and of every tracked query. A viewer that connects
        late gets all of them, not just the last query's.
        """
        with self._markers_lock:
            for owner, markers in owners.items():
                if markers is None:
                    self._markers.pop(owner, None)
                else:
                    self._markers[owner] = markers
            out = MarkerArray()
            now = self.get_clock().now().to_msg()
            out.markers.append(delete_all_marker(make_header(self.cfg.map_frame, now)))
            for markers in self._markers.values():
                out.markers.extend(markers)
            self.pub_markers.publish(out)

    # ------------------------------------------------------------------ persistent queries
    def _on_track(self, req: TrackQuery.Request, resp: TrackQuery.Response) -> TrackQuery.Response:
        """Start, update or stop re-segmenting a query as the map grows (see srv/TrackQuery.srv)."""
        key = " ".join(req.query.split())
        if req.clear:
            with self._state_lock:
                gone = list(self._tracked) if not key else [key] if key in self._tracked else []
                for k in gone:
                    del self._tracked[k]
                resp.active = list(self._tracked)
            if key and not gone:
                resp.success, resp.message = False, f"'{key[:80]}' is not tracked"
            else:
                self._set_markers(dict.fromkeys(gone))
                resp.success = True
                resp.message = f"stopped tracking {len(gone)} quer{'y' if len(gone) == 1 else 'ies'}"
            return resp
        try:
            key = normalise_query(req.query, self.pipeline.config.query.max_query_chars)
        except QueryError as exc:
            resp.success, resp.message = False, str(exc)
            resp.active = self._active_tracked()
            return resp
        threshold = float(req.score_threshold)
        threshold = threshold if math.isfinite(threshold) and threshold > 0 else 0.0  # 0 = node default
        period = float(req.period)
        if math.isfinite(period) and period > 0:
            period = min(max(period, _PERIOD_RANGE[0]), _PERIOD_RANGE[1])
        else:
            period = self.cfg.persistent_period
        limit = self.cfg.max_persistent_queries
        with self._state_lock:
            if threshold > 1.0:
                resp.success, resp.message = False, f"score threshold {threshold} is not in (0, 1]"
            elif key not in self._tracked and len(self._tracked) >= limit:
                resp.success = False
                resp.message = (
                    f"refused: already tracking {len(self._tracked)} queries (max_persistent_queries={limit})"
                    if limit
                    else "refused: tracking is disabled (max_persistent_queries=0)"
                )
            else:
                verb = "updated" if key in self._tracked else "tracking"
                self._tracked[key] = _Tracked(key, int(req.num_views), threshold, period)
                resp.success = True
                resp.message = (
                    f"{verb} '{key[:80]}': re-segmented at most every {period:g} s while the map changes"
                )
            resp.active = list(self._tracked)
        return resp

    def _active_tracked(self) -> list[str]:
        with self._state_lock:
            return list(self._tracked)

    def _track_tick(self) -> None:
        """Re-run one due tracked query (map changed and its period elapsed), never beside a user query.

        One query per tick, the longest-waiting first, so user queries get the lock in between. A
        round is skipped (and counted once per period) while a user query runs or waits: tracking
        is background work and must not delay an answer someone is waiting for.
        """
        if self.model_status != "ready":
            return
        now, version = time.monotonic(), self.pipeline.map.version
        with self._state_lock:
            due = [
                t
                for t in self._tracked.values()
                if t.last_version != version and now - t.last_run >= t.period
            ]
        if not due:
            return
        if self._waiting or not self._query_lock.acquire(blocking=False):
            with self._state_lock:
                for t in due:
                    if now - t.skip_counted >= t.period:
                        t.skip_counted = now
                        self._persistent_skipped += 1
            return
        t = min(due, key=lambda t: t.last_run)
        try:
            self._tracking_runs = True
            epoch = self._map_epoch
            self._running_query = f"(tracked) {t.query[:80]}"
            version = self.pipeline.map.version  # the answer reflects at least this map state
            header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())
            result = self.pipeline.query(t.query, num_views=t.num_views, score_threshold=t.score_threshold)
            msg = self._result_msg(result, header)
            with self._state_lock:
                t.last_run, t.last_version = time.monotonic(), version
                self._persistent_runs += 1
                # Not cleared, removed or updated meanwhile, and computed on the current map.
                current = self._tracked.get(t.query) is t and epoch == self._map_epoch
            if current and result.success:
                self._remember(result, user=False)
                self._publish_result(result, msg, header, tracked=True)
            elif current:
                self._warn(f"track:{t.query}", f"tracked query '{t.query[:80]}': {result.message}", 30.0)
        finally:
            self._tracking_runs = False
            self._running_query = None
            self._query_lock.release()

    # ------------------------------------------------------------------ map services and timers
    def _map_path(self, name: str) -> Path:
        return resolve_map_dir(self.cfg.map_directory, name, self.cfg.allow_absolute_map_paths)

    def _on_save(self, req: SaveMap.Request, resp: SaveMap.Response) -> SaveMap.Response:
        name = printable(req.directory[:200])
        try:
            path = self._map_path(req.directory)
            self.pipeline.save(path, allow_empty_overwrite=bool(req.allow_empty_overwrite))
            resp.success, resp.message = (
                True,
                f"saved map and {len(self.pipeline.keyframes)} keyframes as '{name}'",
            )
        except PermissionError as exc:
            resp.success, resp.message = False, f"save refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported to the caller, node stays up
            resp.success, resp.message = False, f"save failed: {exc}"
        return resp

    def _on_load(self, req: LoadMap.Request, resp: LoadMap.Response) -> LoadMap.Response:
        try:
            path = self._map_path(req.directory)
            self.pipeline.load(path, max_bytes=self.cfg.max_map_mb << 20)
            resp.success, resp.message = True, f"loaded map with {len(self.pipeline.keyframes)} keyframes"
        except PermissionError as exc:
            resp.success, resp.message = False, f"load refused (current map kept): {exc}"
            return resp
        except Exception as exc:  # noqa: BLE001 - the current map is kept on any error
            resp.success, resp.message = False, f"load failed (current map kept): {exc}"
            return resp
        self._forget_answers()
        return resp

    def _on_clear(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.pipeline.clear()
        self._forget_answers()
        resp.success, resp.message = True, "map and keyframes cleared"
        return resp

    def _on_pose_corrections(self, msg: PathMsg) -> None:
        """Corrected camera poses (a loop closure): keyframes at those stamps move, the map is rebuilt.

        Each pose in ``msg.poses`` is matched to the keyframe nearest its stamp (within
        ``pose_max_age``). Poses in another frame than ``map_frame``, non-rigid or out-of-range ones are
        refused and counted; the map changes only when a keyframe really moved.
        """
        frames = {msg.header.frame_id, *(p.header.frame_id for p in msg.poses)} - {""}
        if frames - {self.cfg.map_frame} or len(msg.poses) > _MAX_CORRECTION_POSES:
            with self._state_lock:
                self._corrections_refused += 1
            self._warn(
                "pose_corrections",
                f"pose corrections refused: {len(msg.poses)} poses in frame(s) "
                f"{sorted(printable(f[:_MAX_ECHO]) for f in frames)[:3]} (expected '{self.cfg.map_frame}', "
                f"at most {_MAX_CORRECTION_POSES} poses)",
            )
            return
        poses, bad = [], 0
        for p in msg.poses:
            try:
                poses.append((stamp_to_sec(p.header.stamp), pose_to_matrix(p.pose)))
            except ValueError:
                bad += 1
        report = self.pipeline.correct_poses(poses, max_stamp_error=self.cfg.pose_max_age)
        text = (
            f"{report.keyframes_moved} of {report.keyframes} keyframes moved (at most "
            f"{report.max_shift_m:.3f} m, {report.max_turn_deg:.2f} deg), {bad + report.rejected} poses "
            f"refused, map rebuilt in {report.seconds:.2f} s"
            if report.keyframes_moved
            else f"no keyframe moved ({len(poses)} poses, {bad + report.rejected} refused)"
        )
        if report.keyframes_moved:
            self._forget_answers()  # answers on the old map point at the old geometry
        with self._state_lock:
            self._corrections += int(report.keyframes_moved > 0)
            self._corrections_refused += int(bad + report.rejected > 0)
            self._last_correction = text
        self.get_logger().info(f"pose correction: {text}")

    def _forget_answers(self) -> None:
        """Answers computed on a replaced map must not drive a RemoveTarget on the new one."""
        with self._state_lock:
            self._map_epoch += 1
            self._last_results.clear()
            self._last_answered = None

    def _on_remove(self, req: RemoveTarget.Request, resp: RemoveTarget.Response) -> RemoveTarget.Response:
        """After a pick: clear the target's voxels from the map (REALM's object removal, on the TSDF).

        The radius is the map's truncation band plus one voxel (:meth:`VoxelMap.removal_radius`:
        less would leave the band's inner voxels to form a ghost surface once the spot is seen
        again) plus the margin. The object comes back only if the camera sees it again.
        """
        key = " ".join(req.query.split())
        with self._state_lock:
            key = key or self._last_answered or ""
            r = self._last_results.get(key) if key else None
        if not key:
            resp.success, resp.message = False, "no query has been answered yet: nothing to remove"
            return resp
        if r is None:
            resp.success = False
            resp.message = f"no answer to '{key[:80]}' is known on this map (ask it with ~/segment first)"
            return resp
        if not r.found or len(r.points) == 0:
            resp.success = False
            resp.message = f"the last answer to '{key[:80]}' found no target: nothing removed"
            return resp
        margin = float(req.margin)
        if math.isfinite(margin) and margin > _MARGIN_RANGE[1]:
            resp.success = False
            resp.message = (
                f"margin {margin:g} m is above the {_MARGIN_RANGE[1]:g} m limit of removal_margin: "
                "nothing removed"
            )
            return resp
        margin = margin if math.isfinite(margin) and margin > 0 else self.cfg.removal_margin
        radius = self.pipeline.map.removal_radius() + margin
        try:
            n = self.pipeline.remove_points(r.points, radius)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the map lock is released
            resp.success, resp.message = False, f"removal failed: {type(exc).__name__}: {exc}"
            return resp
        with self._state_lock:
            self._tracked.pop(key, None)
            self._last_results.pop(key, None)
            user_target = self._last_answered == key
            if user_target:
                self._last_answered = None
        owners: dict[str, list[Marker] | None] = {key: None}
        if user_target:
            owners[_USER] = None
        self._set_markers(owners)
        header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())
        self.pub_target.publish(
            points_to_cloud_msg(np.zeros((0, 3)), header, fields={"confidence": np.zeros(0, np.float32)})
        )
        self._publish_map()
        resp.success, resp.num_points_removed = True, int(n)
        resp.message = (
            f"removed {n} voxels within {radius:.3f} m of the {len(r.points)} target points of '{key[:80]}'"
        )
        self.get_logger().info(resp.message)
        return resp

    def _publish_map(self) -> None:
        if self.pipeline.map.version == self._last_map_version:
            return
        surface = self.pipeline.surface()
        self._last_map_version = surface.version
        self._map_points = len(surface)
        pts, cols = surface.points, surface.colors
        if len(pts) > self.cfg.map_publish_max_points:
            idx = np.random.default_rng(0).choice(len(pts), self.cfg.map_publish_max_points, replace=False)
            pts, cols = pts[idx], cols[idx]
        header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())
        self.pub_map.publish(points_to_cloud_msg(pts, header, colors=(cols * 255).astype(np.uint8)))

    def _rates(self, received: int, integrated: int) -> tuple[float, float]:
        """Frames received / integrated per second over the last ``_RATE_WINDOW`` seconds."""
        now = time.monotonic()
        samples = self._rate_samples
        samples.append((now, received, integrated))
        while len(samples) > 2 and samples[1][0] <= now - _RATE_WINDOW:
            samples.popleft()
        t0, r0, i0 = samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (received - r0) / dt, (integrated - i0) / dt

    def diagnostics_values(self) -> dict[str, str]:
        """The key/value pairs of the /diagnostics status (also handy from a debugger or a test)."""
        s = self.pipeline.stats
        m, kf = self.pipeline.map, self.pipeline.keyframes
        dropped = self.rejected + s.rejected
        # Not frame losses but what the pipeline chose not to keep: frames over the integration
        # rate, frames not novel enough to be keyframes, whole map blocks evicted (budget, radius or
        # noise pruning; ``blocks_pruned`` of them by the pruning).
        dropped.update(
            skipped=s.frames_skipped,
            not_novel=kf.rejected_not_novel,
            blocks=m.blocks_dropped,
            blocks_pruned=m.blocks_pruned,
        )
        rx, integ = self._rates(s.frames_received, s.frames_integrated)
        if self.cfg.map_publish_period > 0:
            map_points = self._map_points  # as of the last map publication: no extra extraction
        else:
            map_points = len(self.pipeline.surface())
        with self._state_lock:
            values: dict[str, object] = {
                "frames_received": s.frames_received,
                "frames_integrated": s.frames_integrated,
                "rate.received_hz": f"{rx:.2f}",
                "rate.integrated_hz": f"{integ:.2f}",
                "keyframes": len(kf),
                "map_blocks": m.num_blocks,
                "map_points": map_points,
                # Whether ~/map_cloud shows the map as it is now (a client that wants the final map
                # after a recording waits for "true"); "off" when map publication is disabled.
                "map_cloud_current": (
                    "off"
                    if self.cfg.map_publish_period <= 0
                    else str(self._last_map_version == m.version).lower()
                ),
                "map_memory_mb": f"{m.memory_bytes() / 2**20:.1f}",
                "model": self.model_status,
                "net3d": self.net_status,
                "queries_served": self._queries_served,
                "queries_refused": self._queries_refused,
                "queries_waiting": self._waiting,
                "query_running": "true" if self._running_query is not None else "false",
                "pairs_in": self._pairs_in,
                "pose_corrections": self._corrections,
                "pose_corrections_refused": self._corrections_refused,
                "last_pose_correction": self._last_correction,
                "pending_pairs": len(self._pending),
                "pose_source": self._pose.describe(),
                "sync_dropped": self._sync_dropped(),
                "persistent_queries": len(self._tracked),
                "persistent_runs": self._persistent_runs,
                "persistent_skipped": self._persistent_skipped,
            }
        values.update({f"dropped.{k}": v for k, v in sorted(dropped.items())})
        values.update({f"callback_errors.{k}": v for k, v in sorted(self.callback_errors.items())})
        gpu = gpu_memory_mb()
        if gpu is not None:
            values["gpu_memory_mb"] = f"{gpu:.1f}"
        return {k: str(v) for k, v in values.items()}

    def _publish_diagnostics(self) -> None:
        s = self.pipeline.stats
        status = DiagnosticStatus(name="reasoning_seg: mapping and queries", hardware_id="reasoning_seg")
        net = self.net_status
        net_failed = net.startswith("failed")
        errors = sum(self.callback_errors.values())
        no_pose = self._pose.waiting_problem()
        ok = self.model_status == "ready" and s.frames_integrated > 0 and not net_failed and not errors
        status.level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
        if ok:
            status.message = "ok"
        elif no_pose:
            status.message = no_pose
        elif self.model_status != "ready":
            status.message = f"model {self.model_status}"
        elif net_failed:
            status.message = f"3D net {net} (fusion answers)"
        elif errors:
            status.message = (
                f"{errors} callback errors caught (see callback_errors.*; the node keeps running)"
            )
        else:
            status.message = "no frames integrated yet"
        status.values = [KeyValue(key=k, value=v) for k, v in self.diagnostics_values().items()]
        arr = DiagnosticArray(header=make_header("", self.get_clock().now().to_msg()), status=[status])
        self.pub_diag.publish(arr)


def _answer_service(why: str, *args):
    """A guarded callback's answer: a service response with ``success`` false and ``why``, else None."""
    resp = args[1] if len(args) == 2 else None
    if resp is None or not hasattr(resp, "success"):
        return None
    resp.success = False
    if hasattr(resp, "message"):
        resp.message = why
    return resp


def _abort_goal(why: str, goal_handle) -> SegmentQuery.Result:
    """A guarded action's answer: the goal aborted, its result saying why."""
    try:
        goal_handle.abort()
    except Exception:  # noqa: BLE001 - already in a terminal state
        pass
    return SegmentQuery.Result(success=False, message=why)


def printable(text: str) -> str:
    """``text`` with control and escape characters shown as escapes (a query must not drive a terminal)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


@dataclass
class _Tracked:
    """A persistent query (TrackQuery) and when it last ran."""

    query: str
    num_views: int
    score_threshold: float
    period: float
    last_run: float = -math.inf  # monotonic seconds
    last_version: int = -1  # map version it last ran on
    skip_counted: float = -math.inf  # when a skipped round was last counted


def gpu_memory_mb() -> float | None:
    """MiB of CUDA memory PyTorch holds on all devices, or None when this process does not use CUDA.

    Only looks at torch if something already imported it (the 2D model or the 3D net): importing it
    here would cost seconds and memory for nothing, and it must not initialise CUDA either.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not (cuda.is_available() and cuda.is_initialized()):
            return None
        return sum(cuda.memory_allocated(i) for i in range(cuda.device_count())) / 2**20
    except Exception:  # noqa: BLE001 - diagnostics must never take the node down
        return None


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
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
