"""The ROS-free pipeline: frames in, queries answered.

Read :meth:`ReasoningSegPipeline.query` top down to follow a query through every stage.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reasoning_seg.config import PipelineConfig
from reasoning_seg.frames import FrameRejected, RGBDFrame, sanitize_frame
from reasoning_seg.fusion import fuse
from reasoning_seg.keyframes import Keyframe, KeyframeWindow
from reasoning_seg.result import QueryResult, package_result
from reasoning_seg.segmenter import Segmenter, ViewInput, ViewSegmentation
from reasoning_seg.state_io import load_state, save_state
from reasoning_seg.view_selection import select_local_views, select_views
from reasoning_seg.voxel_map import MapSurface, VoxelMap

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, views_done, views_total)``; used for action feedback."""


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


class ReasoningSegPipeline:
    """Voxel map + keyframe window + 2D reasoning model + fusion, usable from a notebook."""

    def __init__(self, config: PipelineConfig | None = None, segmenter: Segmenter | None = None) -> None:
        self.config = config or PipelineConfig()
        self.segmenter = segmenter
        self.map = VoxelMap(self.config.map)
        self.keyframes = KeyframeWindow(self.config.keyframes)
        self.stats = IngestStats()
        self._lock = threading.RLock()

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
            clean = sanitize_frame(frame, c.depth_min, c.depth_max, c.min_valid_depth_fraction)
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
        went wrong.
        """
        timer = StageTimer()
        cfg = self.config
        n_views = num_views if num_views and num_views > 0 else cfg.views.num_views
        threshold = score_threshold if score_threshold and score_threshold > 0 else cfg.query.score_threshold
        try:
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
            if len(surface) == 0 or not window:
                raise QueryError("the map is empty: no frames have been integrated yet")

            # 2. Choose the views the 2D model will see (REALM global stage).
            _report(progress, "view_selection", 0, n_views)
            with timer("view_selection"):
                chosen = select_views(
                    window, surface.points, n_views, cfg.views, cfg.fusion.visibility_tolerance
                )
                views = _view_inputs(chosen)

            # 3. Run the frozen 2D reasoning-segmentation model on each view.
            with timer("segmentation"):
                views, segs, failures = self._segment(views, query, progress)
            if not views:
                raise QueryError("the 2D model failed on every view: " + "; ".join(failures))

            # 4. Lift the masks onto the map (view filtering, token attention, visibility-checked
            #    voting; MLLM-For3D §3.1). Fusion may conclude the target is not in the map.
            _report(progress, "fusion", len(views), len(views))
            with timer("fusion"):
                fused = fuse(surface.points, views, segs, cfg.fusion)

            # 5. REALM local stage (optional): close-ups of the candidate, then fuse all views again.
            if cfg.views.local_views > 0 and not fused.not_found_reason:
                with timer("local_view_selection"):
                    local = select_local_views(
                        window,
                        surface.points[fused.probability >= threshold],
                        cfg.views.local_views,
                        {v.keyframe_id for v in views},
                        cfg.fusion.visibility_tolerance,
                    )
                if local:
                    with timer("segmentation"):
                        more_views, more_segs, more_failures = self._segment(
                            _view_inputs(local), query, progress
                        )
                    views, segs, failures = views + more_views, segs + more_segs, failures + more_failures
                    with timer("fusion"):
                        fused = fuse(surface.points, views, segs, cfg.fusion)

            # 6. Threshold, describe the target, report ('not found' with fusion's reason, if any).
            with timer("packaging"):
                if fused.not_found_reason:
                    result = QueryResult(query, True, False, f"not found: {fused.not_found_reason}")
                else:
                    result = package_result(
                        query,
                        surface.points,
                        surface.colors,
                        fused.probability,
                        threshold,
                        cfg.query.min_points,
                        cfg.query.cluster_radius,
                    )
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

        result.method = f"fusion:{cfg.fusion.method}"
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
                "mask_pixels": int(np.count_nonzero(s.mask)),
                "filtered": r,
                "answer": s.answer,
            }
            for v, s, w, a, al, r in zip(
                views,
                segs,
                fused.view_weights,
                fused.attention,
                fused.alignment,
                fused.filtered_reasons,
                strict=True,
            )
        ] + [{"failed": f} for f in failures]
        result.timings = timer.seconds
        _report(progress, "done", len(views), len(views))
        return result

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

    def save(self, directory: str | Path) -> Path:
        """Write map + keyframes (images, depths, poses, intrinsics) into ``directory`` atomically.

        The map is copied under the lock (ingestion pauses for the copy only); files are written
        outside it. See :mod:`reasoning_seg.state_io` for the layout and the crash-safety rules.
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
        return save_state(directory, meta, map_arrays, window, next_id)

    def load(self, directory: str | Path) -> None:
        """Replace map and keyframes with a saved state; on any error nothing changes.

        Raises ``FileNotFoundError`` when ``directory`` holds no saved state and ``ValueError`` for a
        corrupt, truncated or foreign one, or one saved with another voxel size than this pipeline's.
        """
        st = load_state(directory)
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


def _view_inputs(keyframes: Sequence[Keyframe]) -> list[ViewInput]:
    """What the 2D model gets of each keyframe."""
    return [
        ViewInput(kf.keyframe_id, kf.frame.color, kf.frame.depth, kf.frame.intrinsics, kf.frame.T_world_cam)
        for kf in keyframes
    ]


def _report(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _best_answer(segs: Sequence[ViewSegmentation], weights: np.ndarray) -> str:
    """The answer text of the most trusted voting view (LISA explains its choice in words)."""
    if not segs:
        return ""
    score = [w * s.confidence for s, w in zip(segs, weights, strict=True)]
    return segs[int(np.argmax(score))].answer
