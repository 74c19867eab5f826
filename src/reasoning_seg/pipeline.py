"""The ROS-free pipeline: frames in, queries answered.

Read :meth:`ReasoningSegPipeline.query` top down to follow a query through every stage:
:func:`run_stages` (views, 2D model, fusion), then the label-free 3D network when one is configured
(MLLM-For3D §3.3), then packaging.

Threading: ingestion (``add_frame``) and queries may run on different threads. The map and the
keyframe window are guarded by one lock, held only for integration and for taking a snapshot; the
slow stages of a query (the 2D model, fusion) run on the snapshot without the lock, so a query never
stalls the camera stream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from reasoning_seg.camera import is_rigid_transform
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.frames import FrameRejected, PoseJumpGate, RGBDFrame, sanitize_frame
from reasoning_seg.mapping.keyframes import Keyframe, KeyframeWindow, rotation_angle_deg
from reasoning_seg.mapping.state_io import load_state, save_state
from reasoning_seg.mapping.voxel_map import MapSurface, VoxelMap
from reasoning_seg.query.fusion import FusionCache, FusionResult, fuse
from reasoning_seg.query.fusion_torch import DEVICE_ARRAYS, torch_device
from reasoning_seg.query.result import QueryResult, ViewImage, package_result
from reasoning_seg.query.view_selection import select_local_views, select_views
from reasoning_seg.segmenter import Segmenter, ViewInput, ViewSegmentation

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, views_done, views_total)``; used for action feedback."""

SegmentFn = Callable[[list[ViewInput]], tuple[list[ViewInput], list[ViewSegmentation], list[str]]]
"""Runs the 2D model on views: returns the views that succeeded, their segmentations, and failures."""

METHOD_3D_NET = "3d_net"
"""``QueryResult.method`` of answers from the label-free 3D network (the message's METHOD_3D_NET)."""


class QueryError(ValueError):
    """A query that cannot be run (bad text, empty map, no model); the message is user-facing."""


class QueryCancelled(Exception):  # noqa: N818 - reads as an event, like KeyboardInterrupt
    """Raised by a progress callback to abandon a running query (action cancel)."""


def normalise_query(text: object, max_chars: int) -> str:
    """Strip and validate a query string; raises :class:`QueryError` with a user-facing reason."""
    if not isinstance(text, str):
        raise QueryError(f"query must be a string, got {type(text).__name__}")
    q = " ".join(text.split())
    if not q:
        raise QueryError("query is empty")
    if len(q) > max_chars:
        raise QueryError(f"query is {len(q)} characters long; the limit is {max_chars}")
    if not any(ch.isalnum() for ch in q):
        raise QueryError("query contains no words")
    return q


@dataclass
class IngestStats:
    """Counters for diagnostics: what came in, what was kept, and why frames were dropped."""

    frames_received: int = 0
    frames_integrated: int = 0
    frames_skipped: int = 0
    keyframes_added: int = 0
    rejected: Counter = field(default_factory=Counter)


class StageTimer:
    """Wall-clock seconds per named stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block as ``stage`` (repeated stages accumulate)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


@dataclass(frozen=True)
class PoseCorrection:
    """What :meth:`ReasoningSegPipeline.correct_poses` did."""

    keyframes_moved: int
    keyframes: int
    max_shift_m: float  # largest keyframe position change
    max_turn_deg: float  # largest keyframe rotation change
    rejected: int  # poses refused (not rigid, not finite, beyond map.max_extent)
    seconds: float  # including the map rebuild


@dataclass
class StageTrace:
    """What the query stages before packaging produced (:func:`run_stages`).

    Attributes:
        query: the normalised query text.
        points: (N, 3) map surface points the query ran on (the snapshot).
        colors: (N, 3) their colours in [0, 1] (empty when the caller gave none).
        views: the views the 2D model answered, global views first, then REALM local close-ups.
        segmentations: one per view.
        local: (V,) bool, True for the local close-ups.
        fused: the final fusion over all views (its ``unified_embedding`` is the 3D net's query).
        failures: per view the 2D model failed on, why (those views are not in ``views``).
        mask_pixels: per view, its mask's pixel count (counted once, for the view filter).
    """

    query: str
    points: np.ndarray
    colors: np.ndarray
    views: list[ViewInput]
    segmentations: list[ViewSegmentation]
    local: np.ndarray
    fused: FusionResult
    failures: list[str]
    mask_pixels: list[int] = field(default_factory=list)


def run_stages(
    window: Sequence[Keyframe],
    points: np.ndarray,
    query: str,
    config: PipelineConfig,
    segment: SegmentFn,
    num_views: int,
    threshold: float,
    timer: StageTimer | None = None,
    progress: ProgressCallback | None = None,
    colors: np.ndarray | None = None,
) -> StageTrace:
    """The query stages 2-5 on a snapshot: global views, 2D model, fusion, REALM local views, fusion.

    One definition for the node (:meth:`ReasoningSegPipeline.query`) and for pseudo-label
    generation (:func:`reasoning_seg.net.pseudo_labels.trace_query`), so a 3D network is trained
    on exactly what the node computes at query time.

    Args:
        window: keyframes to choose views from.
        points: (N, 3) map surface points.
        query: normalised query text (:func:`normalise_query`).
        config: view selection and fusion settings.
        segment: runs the 2D model on a list of views (see :data:`SegmentFn`).
        num_views: global views (REALM global stage).
        threshold: fused probability at which a point is a candidate for the local close-ups.
        timer: accumulates the stage times (a fresh one when None).
        progress: progress callback.
        colors: (N, 3) point colours, carried into the trace for the 3D network.

    Raises:
        QueryError: the 2D model failed on every global view.
    """
    timer = timer or StageTimer()
    tol = config.fusion.visibility_tolerance
    dev = config.fusion.device  # numpy / auto / cuda: where view selection and fusion run
    # The second fusion pass (after the local views) reuses what the first computed per view.
    cache = FusionCache()
    # 2. Choose the views the 2D model will see (REALM global stage).
    _report(progress, "view_selection", 0, num_views)
    with timer("view_selection"):
        views = _view_inputs(select_views(window, points, num_views, config.views, tol, device=dev))

    # 3. Run the frozen 2D reasoning-segmentation model on each view.
    with timer("segmentation"):
        views, segs, failures = segment(views)
    if not views:
        raise QueryError("the 2D model failed on every view: " + "; ".join(failures))
    local = [False] * len(views)

    # 4. Lift the masks onto the map (view filtering, token attention, visibility-checked voting;
    #    MLLM-For3D §3.1). Fusion may conclude the target is not in the map.
    _report(progress, "fusion", len(views), len(views))
    with timer("fusion"):
        fused = fuse(points, views, segs, config.fusion, device=dev, cache=cache)

    # 5. REALM local stage (optional): close-ups of the candidate, then fuse all views again.
    if config.views.local_views > 0 and not fused.not_found_reason:
        with timer("local_view_selection"):
            close = select_local_views(
                window,
                points[np.flatnonzero(fused.probability >= threshold)],  # (index: 10x faster than a mask)
                config.views.local_views,
                {v.keyframe_id for v in views},
                tol,
                device=dev,
            )
        if close:
            with timer("segmentation"):
                more_views, more_segs, more_failures = segment(_view_inputs(close))
            views, segs, failures = views + more_views, segs + more_segs, failures + more_failures
            local += [True] * len(more_views)
            with timer("fusion"):
                fused = fuse(points, views, segs, config.fusion, device=dev, cache=cache)
    cols = np.zeros((0, 3), np.float32) if colors is None else colors
    pixels = [cache.mask_pixels(s) for s in segs]
    return StageTrace(query, points, cols, views, segs, np.array(local, dtype=bool), fused, failures, pixels)


class ReasoningSegPipeline:
    """Voxel map + keyframe window + 2D reasoning model + fusion (+ 3D network), usable from a notebook."""

    def __init__(self, config: PipelineConfig | None = None, segmenter: Segmenter | None = None) -> None:
        self.config = config or PipelineConfig()
        self.segmenter = segmenter
        self.map = VoxelMap(self.config.map)
        self.keyframes = KeyframeWindow(self.config.keyframes)
        self.stats = IngestStats()
        self._pose_gate = PoseJumpGate(self.config.map.max_speed, self.config.map.pose_jump_confirm)
        self._lock = threading.RLock()
        # The label-free 3D network (MLLM-For3D §3.3): loaded from net.checkpoint by load_net(), or
        # on the first query that needs it. _net_key is the (checkpoint, device, backend) it was loaded for.
        self._net = None
        self._net_key: tuple[str, str, str] | None = None
        self._net_status = "not configured"
        self._net_lock = threading.Lock()

    # ------------------------------------------------------------------ ingestion
    def add_frame(self, frame: RGBDFrame) -> Keyframe | None:
        """Integrate one posed RGB-D frame; returns the keyframe if it became one.

        Raises :class:`FrameRejected` (already counted in ``stats.rejected``) for unusable input;
        the map is untouched in that case. A valid frame the integration rate skips
        (``map.integrate_every`` / ``map.max_rate_hz``) is counted in ``stats.frames_skipped`` and
        may still become a keyframe: the 2D model wants sharp, well-placed images, not fused ones.
        """
        self.stats.frames_received += 1
        c = self.config.map
        try:
            clean = sanitize_frame(
                frame,
                c.depth_min,
                c.depth_max,
                c.min_valid_depth_fraction,
                max_extent=c.max_extent,
                max_image_pixels=c.max_image_pixels,
            )
            self._pose_gate.check(clean.T_world_cam[:3, 3], clean.stamp)
        except FrameRejected as exc:
            self.stats.rejected[exc.reason] += 1
            raise
        with self._lock:
            integrated = self.map.offer(clean)
            kf = self.keyframes.offer(clean)
        if integrated:
            self.stats.frames_integrated += 1
        else:
            self.stats.frames_skipped += 1
        if kf is not None:
            self.stats.keyframes_added += 1
        return kf

    # ------------------------------------------------------------------ the query path
    def query(
        self,
        text: str,
        num_views: int | None = None,
        score_threshold: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> QueryResult:
        """Answer ``text`` with the target's map points.

        Never raises for bad input or a failing model: the result's ``success``/``message`` say what
        went wrong, and ``method``/``message`` say whether fusion or the 3D network answered, and why.
        """
        timer = StageTimer()
        cfg = self.config
        threshold = score_threshold if score_threshold and score_threshold > 0 else cfg.query.score_threshold
        try:
            # 1-5. Validate, snapshot, views, 2D model, fusion (see trace()).
            trace = self.trace(text, num_views, score_threshold, progress, timer)
            fused = trace.fused

            # 6. The label-free 3D network (MLLM-For3D §3.3) answers when one is configured and
            #    fusion found a target; otherwise (or if it fails) fusion's probability is packaged.
            prob, method, why = fused.probability, f"fusion:{cfg.fusion.method}", ""
            if fused.not_found_reason:
                if cfg.net.checkpoint:
                    why = "3D net not run: fusion found no target"
            else:
                net_prob, why = self._net_probability(trace, timer)
                if net_prob is not None:
                    prob, method = net_prob, METHOD_3D_NET

            # 7. Threshold, describe the target, report ('not found' with fusion's reason, if any).
            with timer("packaging"):
                if fused.not_found_reason:
                    result = QueryResult(trace.query, True, False, f"not found: {fused.not_found_reason}")
                elif method == METHOD_3D_NET:
                    result = package_result(
                        trace.query,
                        trace.points,
                        trace.colors,
                        prob,
                        cfg.net.threshold,
                        cfg.net.min_points,
                        cfg.query.cluster_radius,
                    )
                else:
                    result = package_result(
                        trace.query,
                        trace.points,
                        trace.colors,
                        prob,
                        threshold,
                        cfg.query.min_points,
                        cfg.query.cluster_radius,
                    )
            if why:
                result.message += f" ({why})"
        except QueryError as exc:
            return QueryResult(
                str(text)[:200],
                False,
                False,
                str(exc),
                timings=timer.seconds,
                segmenter=getattr(self.segmenter, "name", ""),
                method=f"fusion:{cfg.fusion.method}",
            )

        views, segs = trace.views, trace.segmentations
        result.method = method
        result.unified_embedding = fused.unified_embedding
        result.segmenter = self.segmenter.name
        result.keyframe_ids = [v.keyframe_id for v in views]
        result.answer = _best_answer(segs, np.where(fused.view_weights > 0, fused.attention, 0.0))
        result.view_reports = [
            {
                "keyframe_id": v.keyframe_id,
                "confidence": float(s.confidence),
                "weight": float(w),
                "attention": float(a),
                "alignment": None if np.isnan(al) else float(al),
                "mask_pixels": px,
                "filtered": r,
                "answer": s.answer,
            }
            for v, s, px, w, a, al, r in zip(
                views,
                segs,
                trace.mask_pixels,
                fused.view_weights,
                fused.attention,
                fused.alignment,
                fused.filtered_reasons,
                strict=True,
            )
        ] + [{"failed": f} for f in trace.failures]
        result.view_images = [
            ViewImage(v.keyframe_id, v.color, s.mask, v.T_world_cam, v.intrinsics)
            for v, s in zip(views, segs, strict=True)
        ]
        if trace.failures:  # failed views have no ViewReport in the ROS message: say it here
            n = len(trace.failures)
            failed = "; ".join(trace.failures)[:400]
            result.message += f" (2D model failed on {n} of {n + len(views)} views: {failed})"
        result.timings = timer.seconds
        _report(progress, "done", len(views), len(views))
        return result

    def trace(
        self,
        text: str,
        num_views: int | None = None,
        score_threshold: float | None = None,
        progress: ProgressCallback | None = None,
        timer: StageTimer | None = None,
    ) -> StageTrace:
        """Stages 1-5 of :meth:`query`: validate, snapshot, views, 2D model, fusion (no packaging).

        For callers that want what fusion produced (per-view masks, the unified ``[SEG]``
        embedding, the fused probability) rather than the packaged answer.

        Raises:
            QueryError: bad text or threshold, no 2D model, empty map, or the model failed on every view.
        """
        timer = timer or StageTimer()
        cfg = self.config
        n_views = num_views if num_views and num_views > 0 else cfg.views.num_views
        threshold = score_threshold if score_threshold and score_threshold > 0 else cfg.query.score_threshold
        # 1. Validate the request and take a consistent snapshot of the world.
        query = normalise_query(text, cfg.query.max_query_chars)
        if not 0.0 < threshold <= 1.0:
            raise QueryError(f"score threshold {threshold} is not in (0, 1]")
        if self.segmenter is None:
            raise QueryError("no 2D segmentation model is loaded")
        _report(progress, "snapshot", 0, n_views)
        with timer("snapshot"), self._lock:
            surface = self.map.surface()
            window = self.keyframes.snapshot()
            _share_device_surface(self.map, surface, cfg.fusion.device)
        if len(surface) == 0 or not window:
            raise QueryError("the map is empty: no frames have been integrated yet")
        return run_stages(
            window,
            surface.points,
            query,
            cfg,
            lambda views: self._segment(views, query, progress),
            n_views,
            threshold,
            timer,
            progress,
            colors=surface.colors,
        )

    # ------------------------------------------------------------------ the 3D network
    @property
    def net_status(self) -> str:
        """The 3D network's state: "not configured", "loading", "ready: ..." or "failed: ..."."""
        if not self.config.net.checkpoint:
            return "not configured"
        if self._net_key != self._wanted_net_key():
            return "loading" if self._net_lock.locked() else "not loaded yet"
        return self._net_status

    @property
    def net(self):
        """The loaded :class:`~reasoning_seg.net.model.LabelFree3DNet`, or None."""
        return self._net if self._net_key == self._wanted_net_key() else None

    def _wanted_net_key(self) -> tuple[str, str, str]:
        c = self.config.net
        return (c.checkpoint, c.device, c.backend)

    def load_net(self) -> str:
        """Load ``net.checkpoint`` onto ``net.device`` (blocking); returns the new :attr:`net_status`.

        Never raises: a missing, corrupt or mismatched checkpoint, or no PyTorch, is reported in the
        status and queries keep being answered by fusion. Loading again for the same checkpoint
        and device does nothing.
        """
        with self._net_lock:
            return self._load_net_locked()

    def _load_net_locked(self) -> str:
        key = self._wanted_net_key()
        if key == self._net_key:
            return self._net_status
        path, device, _backend = key
        net, status = None, "not configured"
        if path:
            try:
                net, status = self._read_net(path, device)
            except Exception as exc:  # noqa: BLE001 - any loader error leaves fusion answering, says why
                status = f"failed: {type(exc).__name__}: {exc}"
        self._net, self._net_key, self._net_status = net, key, status
        return status

    def _read_net(self, path: str, device: str):
        try:
            import torch

            from reasoning_seg.net.model import LabelFree3DNet
        except ImportError as exc:
            raise RuntimeError(
                f"the 3D network needs PyTorch (pip install 'reasoning_seg[net]'): {exc}"
            ) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        from reasoning_seg.net.sparse_conv import set_backend

        net = LabelFree3DNet.load(path, map_location=torch.device(device))
        backend = set_backend(net, self.config.net.backend, device)
        dim = self.config.segmenter.embedding_dim
        if net.config.embed_dim != dim:
            raise ValueError(
                f"{path} expects {net.config.embed_dim}-d [SEG] embeddings, the segmenter gives {dim}-d"
            )
        n = sum(p.numel() for p in net.parameters()) / 1e6
        width = net.config.unet.out_channels
        return (
            net,
            f"ready: {Path(path).name} ({n:.2f} M parameters, {width}-d features, {device}, {backend})",
        )

    def _net_probability(self, trace: StageTrace, timer: StageTimer) -> tuple[np.ndarray | None, str]:
        """The 3D network's per-point probability (§3.3), or None and why fusion answers instead."""
        if not self.config.net.checkpoint:
            return None, "answered by fusion: no 3D-net checkpoint configured"
        if self._net_key != self._wanted_net_key():
            if not self._net_lock.acquire(blocking=False):
                return None, "answered by fusion: the 3D net is still loading"
            try:
                self._load_net_locked()
            finally:
                self._net_lock.release()
        net, status = self._net, self._net_status
        if net is None:
            return None, f"answered by fusion: 3D net {status}"
        if trace.fused.unified_embedding is None:
            return None, (
                f"answered by fusion: fusion method '{self.config.fusion.method}' gave no unified [SEG] "
                "embedding for the 3D net"
            )
        try:
            with timer("3d_net"):
                prob = net.predict(trace.points, trace.colors, trace.fused.unified_embedding)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fusion still has an answer
            return None, f"answered by fusion: 3D net failed: {type(exc).__name__}: {exc}"
        return prob, f"answered by the 3D net, {status.removeprefix('ready: ')}"

    def _segment(
        self, views: list[ViewInput], query: str, progress: ProgressCallback | None
    ) -> tuple[list[ViewInput], list[ViewSegmentation], list[str]]:
        """Run the model batched, falling back to one view at a time.

        If the batch fails (e.g. out of memory), each view is retried alone and only the views that
        fail are dropped, so one bad view cannot sink the query.
        """
        seg = self.segmenter
        assert seg is not None
        _report(progress, "segmentation", 0, len(views))
        try:
            out = list(seg.segment(views, query))
            for v, s in zip(views, out, strict=True):
                s.validate(v.intrinsics.height, v.intrinsics.width, seg.embedding_dim)
            _report(progress, "segmentation", len(views), len(views))
            return views, out, []
        except QueryCancelled:
            raise
        except Exception:  # noqa: BLE001 - any model failure falls back to per-view isolation
            pass
        kept_v, kept_s, failures = [], [], []
        for i, v in enumerate(views):
            try:
                (s,) = seg.segment([v], query)
                s.validate(v.intrinsics.height, v.intrinsics.width, seg.embedding_dim)
                kept_v.append(v)
                kept_s.append(s)
            except QueryCancelled:
                raise
            except Exception as exc:  # noqa: BLE001
                failures.append(f"keyframe {v.keyframe_id}: {type(exc).__name__}: {exc}")
            _report(progress, "segmentation", i + 1, len(views))
        return kept_v, kept_s, failures

    # ------------------------------------------------------------------ state
    def surface(self) -> MapSurface:
        """Current map surface (thread-safe snapshot)."""
        with self._lock:
            return self.map.surface()

    def clear(self) -> None:
        """Forget the map and the keyframes (counters keep running)."""
        with self._lock:
            self.map.clear()
            self.keyframes.clear()
            self._pose_gate.reset()

    def correct_poses(
        self, poses: Sequence[tuple[float, np.ndarray]], max_stamp_error: float = 0.01
    ) -> PoseCorrection:
        """Follow a SLAM back-end's correction (loop closure): re-pose the keyframes, rebuild the map.

        ``poses`` are ``(stamp, T_world_cam)`` pairs, e.g. the corrected trajectory or keyframe
        poses. Each keyframe takes the pose whose stamp is nearest its own, if within
        ``max_stamp_error`` s; keyframes without one keep theirs. A pose that is not a finite rigid
        transform, or lies beyond ``map.max_extent``, is refused (counted) and changes nothing. If any
        keyframe moved, the map is rebuilt by integrating the keyframes at their new poses: the
        other frames were not kept (memory stays bounded), so the rebuilt map holds what the
        keyframes saw (a window of ``keyframes.window_size`` views chosen for coverage). Labels of
        removed or tracked targets are dropped with the old map; the next query recomputes them.
        """
        t0 = time.perf_counter()
        extent = self.config.map.max_extent
        stamps, mats, rejected = [], [], 0
        for stamp, T in poses:
            T = np.asarray(T, dtype=np.float64)
            ok = np.isfinite(stamp) and is_rigid_transform(T) and np.all(np.abs(T[:3, 3]) <= extent)
            if not ok:
                rejected += 1
                continue
            stamps.append(float(stamp))
            mats.append(T)
        order = np.argsort(stamps) if stamps else np.zeros(0, np.int64)
        st = np.asarray(stamps, dtype=np.float64)[order]
        shift = turn = 0.0
        with self._lock:
            window = self.keyframes.snapshot()
            moved: dict[int, np.ndarray] = {}
            for kf in window:
                if not len(st):
                    break
                i = int(np.clip(np.searchsorted(st, kf.frame.stamp), 1, len(st)) - 1)
                j = min(i + 1, len(st) - 1)
                k = i if abs(st[i] - kf.frame.stamp) <= abs(st[j] - kf.frame.stamp) else j
                if abs(st[k] - kf.frame.stamp) > max_stamp_error:
                    continue
                T = mats[int(order[k])]
                if np.array_equal(T, kf.T_world_cam):
                    continue
                moved[kf.keyframe_id] = T
                shift = max(shift, float(np.linalg.norm(T[:3, 3] - kf.T_world_cam[:3, 3])))
                turn = max(turn, rotation_angle_deg(T[:3, :3], kf.T_world_cam[:3, :3]))
            if moved:
                next_id = self.keyframes.next_id
                self.keyframes.clear()
                self.map.clear()
                self._pose_gate.reset()
                for kf in window:
                    frame = replace(kf.frame, T_world_cam=moved.get(kf.keyframe_id, kf.T_world_cam))
                    self.keyframes.add(frame, keyframe_id=kf.keyframe_id)
                    self.map.integrate(frame)
                self.keyframes.next_id = next_id
        return PoseCorrection(len(moved), len(window), shift, turn, rejected, time.perf_counter() - t0)

    def remove_points(self, points: np.ndarray, radius: float | None = None) -> int:
        """Remove a picked object from the map: voxels within ``radius`` of ``points`` are deleted.

        ``points`` is (N, 3) map points or a boolean mask over :meth:`surface`; ``radius`` defaults to
        the truncation band plus a voxel (:meth:`VoxelMap.removal_radius`). The keyframe window
        forgets having observed that spot, so the next view of it becomes a keyframe (the 2D model
        then sees the scene without the object). Returns the number of voxels cleared.
        """
        with self._lock:
            pts = np.asarray(points)
            if pts.dtype == bool:
                surf = self.map.surface()
                if pts.shape != (len(surf),):
                    raise ValueError(f"mask has shape {pts.shape} but the surface has {len(surf)} points")
                pts = surf.points[pts]
            r = self.map.removal_radius() if radius is None else float(radius)
            n = self.map.remove_points(pts, r)
            self.keyframes.forget(np.asarray(pts, dtype=np.float64).reshape(-1, 3), r)
            return n

    def label_points(self, label: int, points: np.ndarray, probability: np.ndarray | float = 1.0) -> int:
        """Remember a query's answer on the map voxels (``label`` > 0; replaces that label's last answer)."""
        with self._lock:
            return self.map.set_labels(points, probability, label)

    def labelled_points(self, label: int, min_probability: float = 0.0) -> tuple[MapSurface, np.ndarray]:
        """Current surface points carrying ``label`` and their probabilities (to re-publish a target)."""
        with self._lock:
            return self.map.labelled_surface(label, min_probability)

    def save(self, directory: str | Path, allow_empty_overwrite: bool = False) -> Path:
        """Write map + keyframes (images, depths, poses, intrinsics) into ``directory`` atomically.

        The map is copied under the lock (ingestion pauses for the copy only); files are written
        outside it. See :mod:`reasoning_seg.mapping.state_io` for the layout and the crash-safety rules.
        """
        with self._lock:
            map_arrays = self.map.to_arrays()
            window = [(k.keyframe_id, k.frame) for k in self.keyframes.snapshot()]
            next_id = self.keyframes.next_id
        c = self.config.map
        meta = {
            "map": {
                "voxel_size": c.voxel_size,
                "trunc_voxels": c.trunc_voxels,
                "depth_max": c.depth_max,
                "backend": self.map.backend,
            }
        }
        return save_state(directory, meta, map_arrays, window, next_id, allow_empty_overwrite)

    def load(self, directory: str | Path, max_bytes: int = 8 << 30) -> None:
        """Replace map and keyframes with a saved state; on any error nothing changes.

        Raises ``FileNotFoundError`` when ``directory`` holds no saved state and ``ValueError`` for a
        corrupt, truncated or foreign one, or one saved with another voxel size than this pipeline's.
        """
        st = load_state(directory, max_bytes)
        saved = st.meta.get("map", {})
        voxel = saved.get("voxel_size") if isinstance(saved, dict) else None
        if not isinstance(voxel, (int, float)) or not np.isclose(float(voxel), self.config.map.voxel_size):
            raise ValueError(
                f"saved map has voxel size {voxel} m but this pipeline uses {self.config.map.voxel_size} m "
                "(set map.voxel_size to match)"
            )
        new_map = VoxelMap(self.config.map)
        new_map.from_arrays(st.map_arrays)
        window = KeyframeWindow(self.config.keyframes)
        for kid, frame in st.keyframes:
            window.add(frame, keyframe_id=kid)
        window.next_id = st.next_keyframe_id
        with self._lock:
            self.map, self.keyframes = new_map, window
            self._pose_gate.reset()


def _view_inputs(keyframes: Sequence[Keyframe]) -> list[ViewInput]:
    """What the 2D model gets of each keyframe."""
    return [
        ViewInput(kf.keyframe_id, kf.frame.color, kf.frame.depth, kf.frame.intrinsics, kf.frame.T_world_cam)
        for kf in keyframes
    ]


def _share_device_surface(voxel_map: VoxelMap, surface: MapSurface, device: str) -> None:
    """Let the query's stages find the surface points on their device instead of uploading them.

    The torch TSDF extracts the surface on its device and copies it to the host; when view
    selection and fusion run on that same kind of device, its device copy is registered as the
    upload of ``surface.points`` (:meth:`reasoning_seg.query.fusion._DeviceArrays.put`): one 8 MB
    host-to-device copy less per query at 350k points.
    """
    dev = torch_device(device)
    grid_points = getattr(voxel_map.grid, "device_points", None)
    if dev is None or dev.type == "cpu" or grid_points is None or len(surface) == 0:
        return
    tensor = grid_points(surface.points)
    if tensor is not None and tensor.device.type == dev.type:
        DEVICE_ARRAYS.put(surface.points, tensor.to(dev))


def _report(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _best_answer(segs: Sequence[ViewSegmentation], weights: np.ndarray) -> str:
    """The answer text of the most trusted voting view (LISA explains its choice in words)."""
    if not segs:
        return ""
    score = [w * s.confidence for s, w in zip(segs, weights, strict=True)]
    return segs[int(np.argmax(score))].answer
