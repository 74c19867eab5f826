"""Queries of the node: Segment, SegmentQuery, tracked queries and their publication.

A mixin of :class:`~reasoning_seg.ros.node.ReasoningSegNode` (its state is set up there).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from geometry_msgs.msg import Vector3
from reasoning_seg_msgs.action import SegmentQuery
from reasoning_seg_msgs.msg import SegmentationResult, StageTiming
from reasoning_seg_msgs.srv import Segment, TrackQuery
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from reasoning_seg.pipeline import QueryCancelled, QueryError, normalise_query
from reasoning_seg.query.result import QueryResult
from reasoning_seg.ros.conversions import box_marker as make_box_marker
from reasoning_seg.ros.conversions import (
    delete_all_marker,
    frustum_marker,
    make_header,
    matrix_to_pose,
    points_to_cloud_msg,
    view_report_msgs,
)
from reasoning_seg.ros.conversions import text_marker as make_text_marker
from reasoning_seg.ros.node_common import (
    _INVALID_QUERY_PREFIXES,
    _MAX_ECHO,
    _PERIOD_RANGE,
    _REMEMBERED,
    _USER,
    _WAIT_SLICE,
    _Tracked,
    printable,
)


class QueriesMixin:
    """Query handlers; one query lock runs them one at a time."""

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
