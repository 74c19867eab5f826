"""The reasoning_seg node: camera stream in, voxel map kept, implicit queries answered.

This layer only converts messages, holds parameters and calls :class:`ReasoningSegPipeline`.
Threads: camera callbacks run in one mutually exclusive group (frames are integrated in arrival
order); queries (service and action) in another, so a query never blocks ingestion; map
save/load/clear and timers in a third. A MultiThreadedExecutor serves all three.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped, Vector3
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from reasoning_seg.action import SegmentQuery
from reasoning_seg.frame_sync import ApproximatePairSync, PoseBuffer
from reasoning_seg.frames import FrameRejected, RGBDFrame
from reasoning_seg.msg import SegmentationResult, StageTiming
from reasoning_seg.pipeline import QueryCancelled, ReasoningSegPipeline
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
)
from reasoning_seg.ros.conversions import text_marker as make_text_marker
from reasoning_seg.ros.params import declare_and_read
from reasoning_seg.segmenter import Segmenter, segmenter_from_config
from reasoning_seg.srv import LoadMap, SaveMap, Segment

try:  # real ROS 2 installs; not available from PyPI wheels
    import tf2_ros  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None

_CAMERA_QUEUE = 30  # reliable camera subscription depth, and the colour/depth pairing queue depth
_LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


class ReasoningSegNode(Node):
    """ROS 2 front end of the pipeline (see module docstring for threading)."""

    def __init__(self, segmenter: Segmenter | None = None, **kwargs) -> None:
        super().__init__("reasoning_seg", **kwargs)
        self.cfg, pipe_cfg = declare_and_read(self)
        self.pipeline = ReasoningSegPipeline(pipe_cfg)
        self.rejected: Counter = Counter()
        self._intrinsics = None
        # The executor may drain one topic's queue in a burst before the other's, so the pairing queue
        # is as deep as the subscription queue to never drop a frame whose partner is queued.
        self._sync: ApproximatePairSync = ApproximatePairSync(self.cfg.sync_slop, queue_size=_CAMERA_QUEUE)
        self._poses = PoseBuffer(self.cfg.pose_max_age)
        # Image pairs that arrived before their pose or the first CameraInfo (a tf2 message filter
        # would hold them too); bounded, the oldest is decided when it overflows.
        self._pending: deque[tuple[float, Image, Image]] = deque()
        self._query_lock = threading.Lock()
        self._queries_served = 0
        self._last_map_version = -1
        self._last_warn: dict[str, float] = {}

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

        # --- pose source
        self._tf_buffer = None
        use_tf = self.cfg.pose_source == "tf" or (self.cfg.pose_source == "auto" and tf2_ros is not None)
        if use_tf:
            if tf2_ros is None:
                raise ValueError("pose_source is 'tf' but tf2_ros is not importable in this installation")
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)

        sensors = MutuallyExclusiveCallbackGroup()
        queries = MutuallyExclusiveCallbackGroup()
        admin = MutuallyExclusiveCallbackGroup()
        # Reliable (recordings): a deeper queue absorbs bursts while a query or GC stalls the executor;
        # keep-last history still bounds memory (_CAMERA_QUEUE colour + depth images).
        qos = (
            qos_profile_sensor_data
            if self.cfg.sensor_qos == "sensor_data"
            else QoSProfile(depth=_CAMERA_QUEUE)
        )
        self.create_subscription(Image, "camera/color/image_raw", self._on_color, qos, callback_group=sensors)
        self.create_subscription(Image, "camera/depth/image_raw", self._on_depth, qos, callback_group=sensors)
        self.create_subscription(
            CameraInfo, "camera/color/camera_info", self._on_info, qos, callback_group=sensors
        )
        if self._tf_buffer is None:
            self.create_subscription(PoseStamped, "camera/pose", self._on_pose, qos, callback_group=sensors)
            self.create_subscription(
                TransformStamped, "camera/transform", self._on_transform, qos, callback_group=sensors
            )

        self.pub_map = self.create_publisher(PointCloud2, "~/map_cloud", _LATCHED)
        self.pub_target = self.create_publisher(PointCloud2, "~/target_cloud", _LATCHED)
        self.pub_result = self.create_publisher(SegmentationResult, "~/result", _LATCHED)
        self.pub_markers = self.create_publisher(MarkerArray, "~/markers", _LATCHED)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(Segment, "~/segment", self._on_segment, callback_group=queries)
        self._action = ActionServer(
            self,
            SegmentQuery,
            "~/segment_query",
            execute_callback=self._on_action,
            goal_callback=lambda _g: GoalResponse.ACCEPT,
            cancel_callback=lambda _g: CancelResponse.ACCEPT,
            callback_group=queries,
        )
        self.create_service(SaveMap, "~/save_map", self._on_save, callback_group=admin)
        self.create_service(LoadMap, "~/load_map", self._on_load, callback_group=admin)
        self.create_service(Trigger, "~/clear_map", self._on_clear, callback_group=admin)
        if self.cfg.map_publish_period > 0:
            self.create_timer(self.cfg.map_publish_period, self._publish_map, callback_group=admin)
        if self.cfg.diagnostics_period > 0:
            self.create_timer(self.cfg.diagnostics_period, self._publish_diagnostics, callback_group=admin)
        net = f"'{pipe_cfg.net.checkpoint}' (loading)" if pipe_cfg.net.checkpoint else "off (fusion answers)"
        self.get_logger().info(
            f"reasoning_seg up: map frame '{self.cfg.map_frame}', pose from "
            f"{'TF' if self._tf_buffer else 'camera/pose or camera/transform topics'}, voxel "
            f"{pipe_cfg.map.voxel_size} m, segmenter '{pipe_cfg.segmenter.backend}', 3D net {net}"
        )

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
            self._intrinsics = camera_info_to_intrinsics(msg)
        except ValueError as exc:
            self._reject("bad_camera_info", str(exc))
            return
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

    def _add_pose(self, header: Header, T: np.ndarray) -> None:  # noqa: N803
        if header.frame_id and header.frame_id != self.cfg.map_frame:
            self._reject(
                "wrong_pose_frame", f"pose is in '{header.frame_id}', expected '{self.cfg.map_frame}'"
            )
            return
        self._poses.add(stamp_to_sec(header.stamp), T)
        self._drain_pending()

    def _on_color(self, msg: Image) -> None:
        pair = self._sync.add_a(stamp_to_sec(msg.header.stamp), msg)
        if pair:
            self._enqueue(*pair)

    def _on_depth(self, msg: Image) -> None:
        pair = self._sync.add_b(stamp_to_sec(msg.header.stamp), msg)
        if pair:
            self._enqueue(*pair)

    _MAX_PENDING = 10

    def _enqueue(self, stamp: float, color: Image, depth: Image) -> None:
        self._pending.append((stamp, color, depth))
        self._drain_pending()
        while len(self._pending) > self._MAX_PENDING:
            self._process(*self._pending.popleft())

    def _ready(self, stamp: float) -> bool:
        """Whether a pair can be decided now.

        Camera info must be known and, with topic poses, a pose at or after the pair's stamp must
        have arrived, so the pose is interpolated rather than extrapolated.
        """
        if self._intrinsics is None:
            return False
        if self._tf_buffer is not None:
            return True
        newest = self._poses.newest_stamp
        return newest is not None and newest >= stamp

    def _drain_pending(self) -> None:
        while self._pending and self._ready(self._pending[0][0]):
            self._process(*self._pending.popleft())

    def _lookup_pose(self, stamp: float, color: Image) -> np.ndarray | None:
        if self._tf_buffer is None:
            T, why = self._poses.lookup(stamp)
            if T is None:
                self._reject("no_pose", why)
            return T
        frame = self.cfg.camera_frame or color.header.frame_id
        try:  # pragma: no cover - needs tf2_ros
            tf = self._tf_buffer.lookup_transform(
                self.cfg.map_frame,
                frame,
                color.header.stamp,
                rclpy.duration.Duration(seconds=self.cfg.tf_timeout),
            )
            return transform_to_matrix(tf.transform)
        except Exception as exc:  # noqa: BLE001 - tf2 raises several unrelated exception types
            self._reject("no_pose", f"TF {self.cfg.map_frame} <- {frame}: {exc}")
            return None

    def _process(self, stamp: float, color: Image, depth: Image) -> None:
        if self._intrinsics is None:
            self._reject("no_camera_info", "no valid CameraInfo received yet")
            return
        T = self._lookup_pose(stamp, color)
        if T is None:
            return
        try:
            rgb = image_msg_to_rgb8(color)
            d = depth_msg_to_metres(depth, self.cfg.depth_scale)
        except ValueError as exc:
            self._reject("bad_encoding", str(exc))
            return
        frame = RGBDFrame(rgb, d, self._intrinsics, T, stamp, int(self.pipeline.stats.frames_received))
        try:
            self.pipeline.add_frame(frame)
        except FrameRejected as exc:  # counted by the pipeline
            self._warn(exc.reason, f"frame dropped ({exc.reason}): {exc.detail}")

    # ------------------------------------------------------------------ queries
    def _on_segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        result, msg = self._run_query(req.query, req.num_views, req.score_threshold, req.target_frame)
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
                g.query, g.num_views, g.score_threshold, g.target_frame, progress
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

    def _run_query(
        self, text: str, num_views: int, threshold: float, target_frame: str, progress=None
    ) -> tuple[QueryResult, SegmentationResult]:
        header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())

        def refuse(why: str) -> tuple[QueryResult, SegmentationResult]:
            r = QueryResult(text[:200], False, False, why)
            return r, self._result_msg(r, header)

        if target_frame and target_frame != self.cfg.map_frame:
            return refuse(
                f"target_frame '{target_frame}' is not supported: results are reported in the map "
                f"frame '{self.cfg.map_frame}' (transform them with TF)"
            )
        if self.model_status != "ready":
            return refuse(f"2D model not ready ({self.model_status})")
        queue = self.cfg.concurrent_queries == "queue"
        if not self._query_lock.acquire(blocking=queue, timeout=self.cfg.query_wait_timeout if queue else -1):
            return refuse("busy: another query is running (concurrent_queries=reject)")
        try:
            result = self.pipeline.query(
                text, num_views=num_views, score_threshold=threshold, progress=progress
            )
            t0 = time.perf_counter()
            msg = self._result_msg(result, header)
            if result.success:
                self._publish_result(result, msg, header)
            result.timings["publishing"] = time.perf_counter() - t0
            msg.timings.append(StageTiming(stage="publishing", seconds=result.timings["publishing"]))
            self._queries_served += 1
            # rclpy fixes a call site's severity on first use, hence two calls rather than one.
            text = f"query '{result.query[:80]}': {result.message}"
            if result.success:
                self.get_logger().info(text)
            else:
                self.get_logger().warning(text)
            return result, msg
        finally:
            self._query_lock.release()

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
        return m

    def _publish_result(self, r: QueryResult, msg: SegmentationResult, header: Header) -> None:
        self.pub_result.publish(msg)
        self.pub_target.publish(msg.cloud)
        markers = MarkerArray()
        markers.markers.append(delete_all_marker(header))
        if r.found:
            markers.markers.append(
                make_box_marker(r.box.center, r.box.rotation, r.box.size, header, ns="target")
            )
            top = r.box.center + np.array([0.0, 0.0, r.box.size[2] / 2 + 0.1])
            markers.markers.append(
                make_text_marker(top, f"{r.query[:60]} ({r.confidence:.2f})", header, ns="target_label")
            )
        if self.cfg.publish_frustums:
            used = set(r.keyframe_ids)
            for i, kf in enumerate(k for k in self.pipeline.keyframes.snapshot() if k.keyframe_id in used):
                markers.markers.append(
                    frustum_marker(kf.T_world_cam, kf.frame.intrinsics, 0.3, header, ns="views", id=i)
                )
        self.pub_markers.publish(markers)

    # ------------------------------------------------------------------ map services and timers
    def _on_save(self, req: SaveMap.Request, resp: SaveMap.Response) -> SaveMap.Response:
        try:
            self.pipeline.save(req.directory)
            resp.success, resp.message = (
                True,
                f"saved map and {len(self.pipeline.keyframes)} keyframes to {req.directory}",
            )
        except Exception as exc:  # noqa: BLE001 - reported to the caller, node stays up
            resp.success, resp.message = False, f"save failed: {exc}"
        return resp

    def _on_load(self, req: LoadMap.Request, resp: LoadMap.Response) -> LoadMap.Response:
        try:
            self.pipeline.load(req.directory)
            resp.success, resp.message = True, f"loaded map with {len(self.pipeline.keyframes)} keyframes"
        except Exception as exc:  # noqa: BLE001 - the current map is kept on any error
            resp.success, resp.message = False, f"load failed (current map kept): {exc}"
        return resp

    def _on_clear(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.pipeline.clear()
        resp.success, resp.message = True, "map and keyframes cleared"
        return resp

    def _publish_map(self) -> None:
        if self.pipeline.map.version == self._last_map_version:
            return
        surface = self.pipeline.surface()
        self._last_map_version = surface.version
        pts, cols = surface.points, surface.colors
        if len(pts) > self.cfg.map_publish_max_points:
            idx = np.random.default_rng(0).choice(len(pts), self.cfg.map_publish_max_points, replace=False)
            pts, cols = pts[idx], cols[idx]
        header = make_header(self.cfg.map_frame, self.get_clock().now().to_msg())
        self.pub_map.publish(points_to_cloud_msg(pts, header, colors=(cols * 255).astype(np.uint8)))

    def _publish_diagnostics(self) -> None:
        s = self.pipeline.stats
        dropped = self.rejected + s.rejected
        status = DiagnosticStatus(name="reasoning_seg: mapping and queries", hardware_id="reasoning_seg")
        net = self.net_status
        net_failed = net.startswith("failed")
        ok = self.model_status == "ready" and s.frames_integrated > 0 and not net_failed
        status.level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
        if ok:
            status.message = "ok"
        elif self.model_status != "ready":
            status.message = f"model {self.model_status}"
        elif net_failed:
            status.message = f"3D net {net} (fusion answers)"
        else:
            status.message = "no frames integrated yet"
        values = {
            "frames_received": s.frames_received,
            "frames_integrated": s.frames_integrated,
            "keyframes": len(self.pipeline.keyframes),
            "map_blocks": self.pipeline.map.num_blocks,
            "model": self.model_status,
            "net3d": net,
            "queries_served": self._queries_served,
            "sync_dropped": self._sync.dropped,
        }
        values.update({f"dropped.{k}": v for k, v in sorted(dropped.items())})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(header=make_header("", self.get_clock().now().to_msg()), status=[status])
        self.pub_diag.publish(arr)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``reasoning_seg_node``."""
    rclpy.init(args=args)
    try:
        node = ReasoningSegNode()
    except ValueError as exc:
        print(f"reasoning_seg: invalid parameters: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    executor = MultiThreadedExecutor(num_threads=4)
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
