"""Map services and timers of the node: save, load, clear, pose corrections, removal, map cloud, diagnostics.

A mixin of :class:`~reasoning_seg.ros.node.ReasoningSegNode` (its state is set up there).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Path as PathMsg
from reasoning_seg_msgs.srv import LoadMap, RemoveTarget, SaveMap
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from reasoning_seg.mapping.state_io import resolve_map_dir
from reasoning_seg.ros.conversions import (
    make_header,
    points_to_cloud_msg,
    pose_to_matrix,
    stamp_to_sec,
)
from reasoning_seg.ros.node_common import (
    _MARGIN_RANGE,
    _MAX_CORRECTION_POSES,
    _MAX_ECHO,
    _RATE_WINDOW,
    _USER,
    gpu_memory_mb,
    printable,
)


class MapMixin:
    """Map administration and the periodic publications."""

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
