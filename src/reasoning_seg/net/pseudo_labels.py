"""Multi-view pseudo-labels for the label-free 3D network (MLLM-For3D §3.1-3.2), stored per scene.

Why store them: the 2D model (LISA, or its SIMULATION in the benchmark world) is frozen, so its
answers are the same in every training epoch; running it once per scene and query and training
the 3D network from disk is what makes many epochs affordable (the paper's 2D models are far
slower than the 3D network).

What one query records is exactly what the node computes when it answers that query, because the
node's own stages run: view selection (global, then REALM's local close-ups), the configured
segmenter, and the configured fusion (:func:`trace_query` calls
:func:`reasoning_seg.pipeline.run_stages`, which :meth:`ReasoningSegPipeline.query` calls too). Per scene:

- the map: surface points (float32 metres), colours, and the SIMULATION's ground-truth instance of
  every point (for evaluation and the hybrid "w/ label" mode only; never used label-free);
- a keyframe table: for every keyframe any query looked at, the map points visible in it
  (depth-checked with the fusion's tolerance, :func:`reasoning_seg.camera.visible_pixels`: the
  same test fusion votes with), their pixels, and the frozen SAM image features at those pixels.
  SAM features depend on the image, not the query, so they are stored once per keyframe, and once
  per feature cell (all pixels of one cell of SAM's 64x64 grid share a feature; each visible
  point keeps the row of its cell): that is "sampled at the visible points" with nearest-cell
  sampling, without a copy per point. ``max_pairs_per_view`` subsamples the visible points of a
  keyframe (deterministically) to bound the size at high resolution;
- per query: the fused probability (the fusion pseudo-label), each view's mask logits sampled at
  that view's (stored) visible points (the flat point-view pairs of Eq. 1), each view's [SEG]
  embedding, confidence, fusion weight, token attention and alignment, whether it was a local
  close-up, the unified embedding (the 3D net's query token, §3.2) and the "not found" reason.

One compressed ``.npz`` per scene (no pickles); :func:`load_scene_labels` validates it and raises
:class:`PseudoLabelError` for a corrupt, truncated or foreign file.

Command line (records the benchmark's SIMULATED rooms, then labels them)::

    python -m reasoning_seg.net.pseudo_labels --out out/pseudo --seeds 0-7 --frames 60 --size 160x120
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_seg.camera import visible_pixels
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.keyframes import Keyframe
from reasoning_seg.net.pseudo_label_store import (
    FORMAT,
    VERSION,
    PseudoLabelError,
    QueryLabels,
    ScenePseudoLabels,
    load_scene_labels,
    read_meta,
    save_scene_labels,
)
from reasoning_seg.pipeline import normalise_query, run_stages
from reasoning_seg.query.fusion import FusionResult
from reasoning_seg.query.result import select_target
from reasoning_seg.segmenter import Segmenter, ViewInput, ViewSegmentation

__all__ = [
    "FORMAT",
    "VERSION",
    "PseudoLabelError",
    "PseudoLabelOptions",
    "QueryLabels",
    "QueryTrace",
    "ScenePseudoLabels",
    "generate_scene_labels",
    "load_scene_labels",
    "main",
    "pixel_to_feature_cell",
    "read_meta",
    "save_scene_labels",
    "trace_query",
]


# ---------------------------------------------------------------------------------------------
# Running the node's stages on one query
# ---------------------------------------------------------------------------------------------


@dataclass
class QueryTrace:
    """Everything the node's query path produced for one query (before packaging the result).

    Attributes:
        views: the views the segmenter saw, global views first, then local close-ups.
        segmentations: one per view.
        local: (V,) bool, True for REALM local close-ups.
        fused: the final fusion (over all views).
        outcomes: per view, what the SIMULATED model did ("correct", "hallucinated", ...), or "" when
            the segmenter cannot say (a real model).
    """

    views: list[ViewInput]
    segmentations: list[ViewSegmentation]
    local: np.ndarray
    fused: FusionResult
    outcomes: list[str]


def _segment(
    segmenter: Segmenter, views: list[ViewInput], text: str
) -> tuple[list[ViewSegmentation], list[str]]:
    with_truth = getattr(segmenter, "segment_with_truth", None)
    if callable(with_truth):
        pairs = with_truth(views, text)
        return [s for s, _ in pairs], [o.kind for _, o in pairs]
    segs = list(segmenter.segment(views, text))
    return segs, [""] * len(segs)


def trace_query(
    keyframes: Sequence[Keyframe],
    points: np.ndarray,
    text: str,
    segmenter: Segmenter,
    config: PipelineConfig,
) -> QueryTrace:
    """Run the node's query stages 2-5 on a snapshot (keyframe window + map points).

    The stages are the node's own (:func:`reasoning_seg.pipeline.run_stages`: global view
    selection, segmentation, fusion, then REALM local close-ups of the points at or above
    ``query.score_threshold`` and fusion over all views); only the segmentation step is wrapped, to
    record what the SIMULATED model did in each view.

    Raises:
        ValueError: for an unusable query text (:func:`reasoning_seg.pipeline.normalise_query`).
    """
    cfg = config
    query = normalise_query(text, cfg.query.max_query_chars)
    outcomes: list[str] = []

    def segment(views: list[ViewInput]) -> tuple[list[ViewInput], list[ViewSegmentation], list[str]]:
        segs, outs = _segment(segmenter, views, query)
        outcomes.extend(outs)
        return views, segs, []

    st = run_stages(keyframes, points, query, cfg, segment, cfg.views.num_views, cfg.query.score_threshold)
    return QueryTrace(st.views, st.segmentations, st.local, st.fused, outcomes)


def pixel_to_feature_cell(
    flat_pixel: np.ndarray, height: int, width: int, grid_h: int, grid_w: int
) -> np.ndarray:
    """Flat index into a (grid_h, grid_w) SAM feature grid of each flat image pixel (nearest cell).

    SAM resizes the longest side to its input size and pads bottom/right, so its feature grid covers
    a ``max(H, W)`` square from the top-left corner; a pixel's centre ``(u + 0.5, v + 0.5)`` falls in
    cell ``floor((v + 0.5) grid_h / L), floor((u + 0.5) grid_w / L)`` with ``L = max(H, W)``.
    """
    side = max(height, width)
    v, u = np.divmod(np.asarray(flat_pixel, dtype=np.int64), width)
    r = np.minimum(((2 * v + 1) * grid_h) // (2 * side), grid_h - 1)
    c = np.minimum(((2 * u + 1) * grid_w) // (2 * side), grid_w - 1)
    return r * grid_w + c


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclass
class PseudoLabelOptions:
    """How pseudo-labels are generated (the node's own stages come from the ``PipelineConfig``).

    Attributes:
        max_pairs_per_view: most visible points stored per keyframe (deterministic subsample); 0 = all.
        feature_noise: noise of the simulated SAM features (see ``SimulatedSegmenter``).
        gt_distance_voxels: a map point belongs to the surface within this many map voxels (as the
            benchmark scores).
    """

    max_pairs_per_view: int = 20000
    feature_noise: float = 0.5
    gt_distance_voxels: float = 1.5

    def __post_init__(self) -> None:
        if self.max_pairs_per_view < 0:
            raise ValueError("max_pairs_per_view must be >= 0")


class _KeyframeTable:
    """Accumulates the per-keyframe visibility and feature rows while queries are traced."""

    def __init__(self, points: np.ndarray, tolerance: float, max_pairs: int) -> None:
        self.points = points
        self.tolerance = tolerance
        self.max_pairs = max_pairs
        self.row_of: dict[int, int] = {}
        self.ids: list[int] = []
        self.vis_point: list[np.ndarray] = []
        self.vis_pixel: list[np.ndarray] = []
        self.vis_feat: list[np.ndarray] = []
        self.feats: list[np.ndarray] = []
        self.n_feats = 0

    def row(self, view: ViewInput, seg: ViewSegmentation) -> int:
        """Table row of a view's keyframe, adding it (visibility + SAM features) on first sight."""
        kid = int(view.keyframe_id)
        if kid in self.row_of:
            return self.row_of[kid]
        visible, pix = visible_pixels(
            self.points, view.T_world_cam, view.intrinsics, view.depth, self.tolerance
        )
        idx = np.flatnonzero(visible)
        if self.max_pairs and idx.size > self.max_pairs:
            rng = np.random.default_rng(kid)
            idx = np.sort(rng.choice(idx, size=self.max_pairs, replace=False))
        pixels = pix[idx]
        feat_rows = np.full(idx.size, -1, dtype=np.int32)
        f = seg.image_features
        if f is not None and idx.size:
            f = np.asarray(f)
            if f.ndim != 3:
                raise ValueError(f"image features must be (C, h, w), got {f.shape}")
            h, w = view.intrinsics.height, view.intrinsics.width
            cells = pixel_to_feature_cell(pixels, h, w, f.shape[1], f.shape[2])
            uniq, inverse = np.unique(cells, return_inverse=True)
            table = f.reshape(f.shape[0], -1)[:, uniq].T.astype(np.float16)
            feat_rows = (self.n_feats + inverse).astype(np.int32)
            self.feats.append(table)
            self.n_feats += table.shape[0]
        self.row_of[kid] = len(self.ids)
        self.ids.append(kid)
        self.vis_point.append(idx.astype(np.int32))
        self.vis_pixel.append(pixels.astype(np.int64))
        self.vis_feat.append(feat_rows)
        return self.row_of[kid]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else np.zeros_like(v, dtype=np.float32)


def _query_labels(
    text: str, kind: str, target: int, trace: QueryTrace, table: _KeyframeTable, config: PipelineConfig
) -> QueryLabels:
    fused, segs = trace.fused, trace.segmentations
    embedding_dim = config.segmenter.embedding_dim
    # "Found" exactly as the node's fusion answer decides it: fusion's own verdict, then the same
    # threshold / min_points / cluster rule the node packages with (result.select_target).
    q = config.query
    reason = fused.not_found_reason
    if not reason:
        _, reason = select_target(
            table.points, fused.probability, q.score_threshold, q.min_points, q.cluster_radius
        )
    rows = np.array([table.row(v, s) for v, s in zip(trace.views, segs, strict=True)], dtype=np.int32)
    logits = [
        s.mask_logits.reshape(-1)[table.vis_pixel[r]].astype(np.float32)
        for s, r in zip(segs, rows, strict=True)
    ]
    embs = (
        np.stack([np.asarray(s.seg_embedding, np.float32) for s in segs])
        if segs
        else np.zeros((0, embedding_dim), np.float32)
    )
    conf = np.array([s.confidence for s in segs], dtype=np.float32)
    if fused.unified_embedding is not None:
        unified, source = np.asarray(fused.unified_embedding, np.float32), "fusion"
    elif len(segs) and conf.sum() > 0:
        norms = np.linalg.norm(embs, axis=1, keepdims=True)
        unit = np.divide(embs, norms, out=np.zeros_like(embs), where=norms > 0)
        unified, source = _unit(conf @ unit), "mean"
    else:
        unified, source = np.zeros(embedding_dim, np.float32), "none"
    return QueryLabels(
        text=text,
        kind=kind,
        target_id=int(target),
        probability=np.asarray(fused.probability, np.float32),
        not_found_reason=reason,
        unified=unified,
        unified_source=source,
        agreement=float(fused.agreement),
        view_keyframe=rows,
        view_confidence=conf,
        view_weight=np.asarray(fused.view_weights, np.float32),
        view_attention=np.asarray(fused.attention, np.float32),
        view_alignment=np.asarray(fused.alignment, np.float32),
        view_local=np.asarray(trace.local, bool),
        seg_embeddings=embs,
        logits=(np.concatenate(logits) if logits else np.zeros(0, np.float32)).astype(np.float16),
        view_reasons=list(fused.filtered_reasons),
        view_answers=[s.answer for s in segs],
        view_outcomes=list(trace.outcomes),
    )


def generate_scene_labels(
    scene_dir: str | Path,
    config: PipelineConfig | None = None,
    queries: Sequence[Any] | None = None,
    options: PseudoLabelOptions | None = None,
    segmenter: Segmenter | None = None,
    log=None,
) -> ScenePseudoLabels:
    """Pseudo-labels of one recorded benchmark-world scene (sequence + ``scene.json``).

    Builds the map from the recording with the node's pipeline, then traces every query through the
    node's stages (:func:`trace_query`).

    Args:
        scene_dir: a recording made by ``SyntheticScene.record_sequence`` (what the benchmark caches).
        config: the node's configuration (map, key frames, views, fusion, segmenter seed).
        queries: ``SceneQuery`` objects (``text``, ``kind``, ``target_instance_id``) or plain strings;
            default: every query of ``scene.json``.
        options: generation options.
        segmenter: the 2D model; default: the configured one. For ``segmenter.backend`` "simulated"
            that is the SIMULATED LISA of ``segmenter.sim_profile`` (lisa7b by default) on this scene,
            seeded by ``segmenter.sim_seed``, with SIMULATED SAM features switched on; for "lisa"
            the real model (:func:`reasoning_seg.backends.segmenter_from_config`).
        log: optional ``print``-like progress callback.

    Returns:
        The scene's labels (save them with :func:`save_scene_labels`).
    """
    from reasoning_seg.eval.benchmark import build_map
    from reasoning_seg.sim.scene import SyntheticScene
    from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter, seg_embedding_mix

    cfg = config or PipelineConfig()
    opts = options or PseudoLabelOptions()
    root = Path(scene_dir)
    scene = SyntheticScene.load(root)
    if segmenter is None and cfg.segmenter.backend != "simulated":
        from reasoning_seg.backends import segmenter_from_config

        segmenter = segmenter_from_config(cfg.segmenter)
    if segmenter is None:
        segmenter = SimulatedSegmenter(
            scene,
            profile=cfg.segmenter.sim_profile,
            embedding_dim=cfg.segmenter.embedding_dim,
            seed=cfg.segmenter.sim_seed,
            embedding_mix=seg_embedding_mix(cfg.segmenter.sim_instance_weight),
            image_features=True,
            feature_noise=opts.feature_noise,
        )
    t0 = time.perf_counter()
    pipe, t_map = build_map(root, cfg)
    surface = pipe.surface()
    window = pipe.keyframes.snapshot()
    if len(surface) == 0 or not window:
        raise ValueError(f"{root}: the recording produced an empty map")
    points = np.asarray(surface.points, dtype=np.float64)
    gt = scene.label_points(points, max_distance=opts.gt_distance_voxels * cfg.map.voxel_size)
    table = _KeyframeTable(points, cfg.fusion.visibility_tolerance, opts.max_pairs_per_view)
    labels: list[QueryLabels] = []
    for q in scene.queries if queries is None else queries:
        text = q if isinstance(q, str) else q.text
        kind = "unknown" if isinstance(q, str) else q.kind
        target = -1 if isinstance(q, str) else int(q.target_instance_id)
        trace = trace_query(window, points, text, segmenter, cfg)
        labels.append(_query_labels(text, kind, target, trace, table, cfg))
    offsets = np.zeros(len(table.ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(v) for v in table.vis_point])
    dim = next((f.shape[1] for f in table.feats), 0)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "scene": root.name,
        "scene_seed": scene.seed,
        "segmenter": getattr(segmenter, "name", type(segmenter).__name__),
        "config": cfg.flat(),
        "options": dataclasses.asdict(opts),
        "map_voxel_size": cfg.map.voxel_size,
        "keyframes_in_window": len(window),
        "map_seconds": round(t_map, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if log:
        log(
            f"[pseudo] {root.name}: {len(labels)} queries, {len(points)} points, {len(table.ids)} keyframes "
            f"in {meta['seconds']:.1f} s"
        )
    return ScenePseudoLabels(
        name=root.name,
        points=points.astype(np.float32),
        colors=np.clip(np.asarray(surface.colors, np.float32), 0.0, 1.0),
        gt_instance=np.asarray(gt, np.int32),
        keyframe_ids=np.array(table.ids, dtype=np.int64),
        vis_offsets=offsets,
        vis_point=np.concatenate(table.vis_point) if table.vis_point else np.zeros(0, np.int32),
        vis_feat=np.concatenate(table.vis_feat) if table.vis_feat else np.zeros(0, np.int32),
        feats=np.concatenate(table.feats) if table.feats else np.zeros((0, dim), np.float16),
        queries=labels,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _parse_param(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise ValueError(f"--param needs name=value, got '{text}'")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    """Record SIMULATED benchmark rooms (cached) and write one pseudo-label file per room."""
    from reasoning_seg.eval.benchmark import SceneSetSpec, parse_seeds, prepare_scene

    p = argparse.ArgumentParser(prog="python -m reasoning_seg.net.pseudo_labels", description=main.__doc__)
    p.add_argument("--out", required=True, help="folder for the seedNNNN-*.npz files")
    p.add_argument("--seeds", default="0-3", help="scene seeds, e.g. 0-7 or 1,5,9")
    p.add_argument("--frames", type=int, default=100, help="frames per recording")
    p.add_argument("--size", default="640x480", help="image size WxH")
    p.add_argument("--no-depth-noise", action="store_true", help="record exact depth")
    p.add_argument(
        "--max-queries", type=int, default=0, help="queries per scene (stratified by kind), 0 = all"
    )
    p.add_argument("--cache", default="", help="recording cache (default OUT/scenes)")
    p.add_argument("--profile", default="lisa7b", help="SIMULATED LISA profile (oracle, lisa7b, lisa13b)")
    p.add_argument("--max-pairs-per-view", type=int, default=20000, help="visible points kept per keyframe")
    p.add_argument(
        "--param", action="append", default=[], help="pipeline parameter override name=value (repeatable)"
    )
    a = p.parse_args(argv)
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
        spec = SceneSetSpec(
            seeds=parse_seeds(a.seeds),
            frames=a.frames,
            width=w,
            height=h,
            depth_noise=not a.no_depth_noise,
            max_queries=a.max_queries,
        )
        cfg = PipelineConfig()
        cfg.update({"segmenter.sim_profile": a.profile})
        cfg.update(dict(_parse_param(t) for t in a.param))
        opts = PseudoLabelOptions(max_pairs_per_view=a.max_pairs_per_view)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    cache = Path(a.cache) if a.cache else out / "scenes"
    written = []
    for seed in spec.seeds:
        scene, root = prepare_scene(seed, spec, cache)
        queries = spec.pick_queries(scene.queries, seed)
        labels = generate_scene_labels(root, cfg, queries, opts, log=lambda m: print(m, file=sys.stderr))
        written.append(str(save_scene_labels(labels, out / f"{root.name}.npz")))
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
