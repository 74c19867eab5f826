"""MLLM-For3D Table 4 (b, c) in the benchmark world: train on pseudo-labels, evaluate on unseen rooms.

The benchmark runner (:mod:`reasoning_seg.benchmark`) compares query-time methods on one scene set;
the label-free 3D network first has to be trained on *other* scenes, so this runner chains the
three steps, each with the package's own code:

1. record SIMULATED training rooms and write their pseudo-labels (:mod:`reasoning_seg.net.pseudo_labels`:
   the node's own view selection and fusion, the SIMULATED LISA-7B at its default failure rates,
   SIMULATED SAM features for Eq. 2);
2. train one network per Table-4 variant (:mod:`reasoning_seg.net.train`): the full loss (Eq. 3 =
   Eq. 1 + lambda Eq. 2), without spatial consistency (Table 4 (c): Eq. 1 only), and without
   token-for-query (Table 4 (b), see below);
3. evaluate on held-out rooms with :func:`reasoning_seg.benchmark.run_experiment`: the naive
   projection (Table 4 (a)), fusion only (the node's default), and the node answering with each
   network (``net.checkpoint``); Acc@0.25 / Acc@0.5 / mIoU as defined in :mod:`reasoning_seg.metrics`.

"w/o token-for-query" (Table 4 (b)), our definition: Eq. 1 is the only loss that involves the
query, so with it off nothing trains the projection of the ``[SEG]`` embedding and the network
could not answer a query at all. The paper does not say what replaces it. Here the backbone is
trained with Eq. 2 alone, then (backbone frozen) the linear query projection is fitted by BCE
against the *fused 3D pseudo-label* (each voxel's mean fused probability) instead of the per-view
2D predictions of Eq. 1 (:func:`fit_query_projection`). The row therefore measures what the
token-for-query pairing with 2D logits adds over supervising the query with the fused 3D labels.

Scales: the default runs on 2 CPU cores in well under 25 minutes (a narrow U-Net, low resolution,
few rooms); ``--full`` is the GPU scale (MinkowskiNet14, 640x480, more rooms and steps). Every
number comes from SIMULATED rooms and a SIMULATED 2D model: it ranks the variants, it does not
predict real-world accuracy.

Command line::

    python -m reasoning_seg.net.experiment --out out/net_ablation --table bench/results/net_ablation.md
    python -m reasoning_seg.net.experiment --full --out out/net_ablation_full   # on the GPU machine
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from reasoning_seg.benchmark import Experiment, RowSpec, SceneSetSpec, prepare_scene, run_experiment
from reasoning_seg.benchmark import write_markdown as benchmark_markdown
from reasoning_seg.config import PipelineConfig
from reasoning_seg.net.data import DataConfig, PseudoLabelDataset, augmentation_matrix
from reasoning_seg.net.losses import alignment_loss, spatial_consistency_loss
from reasoning_seg.net.model import UNET_PRESETS, LabelFree3DNet, NetConfig, centred, voxelise
from reasoning_seg.net.pseudo_labels import (
    PseudoLabelOptions,
    generate_scene_labels,
    load_scene_labels,
    save_scene_labels,
)
from reasoning_seg.net.sparse_conv import CoordinateMap, SparseTensor
from reasoning_seg.net.train import LabelFreeModule, LossConfig, OptimConfig, StepTimer
from reasoning_seg.sim.simulated_segmenter import SEG_EMBEDDING_MIX, seg_embedding_mix

__all__ = [
    "ALIGNMENT_TARGETS",
    "ALL_VARIANTS",
    "SCALES",
    "EXTRA_VARIANTS",
    "VARIANTS",
    "AblationScale",
    "SceneQueriesDataset",
    "SceneQueriesModule",
    "Variant",
    "collate_scene_queries",
    "fit_query_projection",
    "main",
    "run_ablation",
    "write_markdown",
]

Log = Callable[[str], None]


@dataclass
class AblationScale:
    """How big the experiment is: scenes, recording, network and training length.

    Attributes:
        name: preset name (shown in the table).
        train_seeds / test_seeds: SIMULATED rooms to train on / to evaluate on (disjoint).
        frames, width, height, depth_noise: how each room is recorded.
        map_voxel: the node's map voxel (``map.voxel_size``) for pseudo-labels and evaluation.
        train_queries / test_queries: queries per room (stratified by kind; 0 = all).
        net: U-Net preset (:data:`reasoning_seg.net.model.UNET_PRESETS`); net_voxel: its voxel.
        steps, batch_size, lr: training steps, scenes per step (each with ``queries_per_item``
            queries), base learning rate (poly decay, A.2).
        optimizer: "sgd" (A.2) or "adamw" (``reasoning_seg.net.train.OptimConfig``).
        height_input: the network's voxel input has the height channel (colour + geometry).
        accelerator, devices, threads: Lightning's; torch CPU threads (0: torch's default).
        probe_steps, probe_lr: the Table 4 (b) query-projection fit (Adam, full batch).
        queries_per_item: queries trained per scene forward (:class:`SceneQueriesDataset`).
        max_spatial_pairs: Eq. 2 pairs sampled per query.
        max_pairs_per_view: visible points stored per keyframe in the pseudo-labels.
        net_device: ``net.device`` of the evaluating node.
        label_workers: processes writing pseudo-labels (one room each).
        loader_workers: DataLoader workers feeding the training (0: in the training process).
        max_minutes: stop training after this much wall time even before ``steps`` (0: no limit), so a
            time-limited command still saves a model (its learning-rate decay is then cut short).
        instance_weight: ``segmenter.sim_instance_weight`` of the SIMULATED LISA in every room,
            training and held-out: how much of its ``[SEG]`` embedding is room-specific (an
            assumption about LISA that the sensitivity rows of net_ablation_gpu.md vary).
        init_from: start training from these weights (a ``model.pt`` of the same network) with a
            fresh optimiser and schedule: continues a run that one time-limited command cut short.
    """

    name: str
    train_seeds: list[int]
    test_seeds: list[int]
    frames: int = 60
    width: int = 160
    height: int = 120
    depth_noise: bool = True
    map_voxel: float = 0.04
    train_queries: int = 0
    test_queries: int = 40
    net: str = "small"
    net_voxel: float = 0.08
    steps: int = 300
    batch_size: int = 2
    lr: float = 0.1
    optimizer: str = "sgd"
    height_input: bool = True
    accelerator: str = "cpu"
    devices: str | int = 1
    threads: int = 2
    probe_steps: int = 300
    probe_lr: float = 0.01
    queries_per_item: int = 16
    max_spatial_pairs: int = 2048
    max_pairs_per_view: int = 20000
    net_device: str = "cpu"
    label_workers: int = 2
    loader_workers: int = 0
    max_minutes: float = 0.0
    instance_weight: float = SEG_EMBEDDING_MIX[2]
    init_from: str = ""

    def __post_init__(self) -> None:
        if not self.train_seeds or not self.test_seeds:
            raise ValueError("train_seeds and test_seeds must not be empty")
        if set(self.train_seeds) & set(self.test_seeds):
            raise ValueError(f"rooms {sorted(set(self.train_seeds) & set(self.test_seeds))} are in both sets")
        if self.steps < 1 or self.batch_size < 1 or self.probe_steps < 0:
            raise ValueError("steps and batch_size must be >= 1, probe_steps >= 0")

    def scene_spec(self, seeds: list[int], max_queries: int) -> SceneSetSpec:
        """The benchmark's scene-set description of one split."""
        return SceneSetSpec(
            seeds=list(seeds),
            frames=self.frames,
            width=self.width,
            height=self.height,
            depth_noise=self.depth_noise,
            max_queries=max_queries,
        )

    def base_params(self) -> dict[str, Any]:
        """Pipeline parameters shared by pseudo-labelling and evaluation (map and views)."""
        # The window holds the whole scan, as in bench/experiments/baselines.yaml.
        return {
            "map.voxel_size": self.map_voxel,
            "keyframes.window_size": 64,
            "views.num_views": 4,
            "segmenter.sim_instance_weight": self.instance_weight,
        }


# 2 CPU cores, < 25 min: narrow U-Net at 8 cm, 160x120 recordings, 6 + 3 rooms.
_CPU_SCALE = AblationScale(name="cpu", train_seeds=list(range(6)), test_seeds=[100, 101, 102])

SCALES: dict[str, AblationScale] = {
    "cpu": _CPU_SCALE,
    # The GPU machine: MinkowskiNet14 at 5 cm (A.2/A.3), the benchmark's 640x480 recordings.
    # Sized so that each stage (--stop-after labels / train --variants X / all) fits a 10-minute
    # command on one H100 with 16 CPU cores; not measured yet (see bench/results/net_ablation.md).
    "full": AblationScale(
        name="full",
        train_seeds=list(range(16)),
        test_seeds=list(range(100, 106)),
        frames=100,
        width=640,
        height=480,
        map_voxel=0.02,
        train_queries=0,
        test_queries=60,
        net="minkunet14",
        net_voxel=0.05,
        steps=2000,
        batch_size=4,
        accelerator="gpu",
        devices=1,
        threads=0,
        probe_steps=500,
        queries_per_item=32,
        net_device="cuda",
        label_workers=12,
        loader_workers=8,
    ),
    # The GPU machine with the CPU scale's recordings and map (derived from it, so the fusion rows
    # stay comparable): 5x the training rooms, twice the held-out rooms, the network at the map's
    # 4 cm, AdamW. The default 4000 steps take ~20 min at the measured 0.29 s/step (data-bound), more
    # than one 10-minute device command: the runs in bench/results/net_ablation_gpu.md split the
    # stages (--stop-after labels / train, --eval-only) and set --steps / --max-minutes.
    "gpu": dataclasses.replace(
        _CPU_SCALE,
        name="gpu",
        train_seeds=list(range(30)),
        test_seeds=list(range(100, 106)),
        net_voxel=0.04,
        steps=4000,
        batch_size=4,
        lr=0.001,
        optimizer="adamw",
        accelerator="gpu",
        threads=0,
        queries_per_item=32,
        net_device="cuda",
        label_workers=15,
        loader_workers=6,
    ),
}
"""Named scales (``--full`` picks "full")."""


ALIGNMENT_TARGETS = ("views", "fused", "truth")
"""Targets of Eq. 1's pairs (:attr:`Variant.alignment_target`)."""


def _check_alignment_target(target: str) -> None:
    if target not in ALIGNMENT_TARGETS:
        raise ValueError(f"alignment_target must be one of {ALIGNMENT_TARGETS}, got {target!r}")


@dataclass(frozen=True)
class Variant:
    """One trained network of the table.

    Attributes:
        key: output folder name.
        name: table row.
        use_align: Eq. 1 (token-for-query alignment).
        use_spatial: Eq. 2 (spatial consistency).
        fit_query_to_fused: fit the query projection to the fused 3D pseudo-labels after training
            (Table 4 (b), see the module docstring).
        balance_alignment: class-balanced Eq. 1 per query (our addition; False = the literal mean).
        alignment_target: what Eq. 1's BCE pulls the 3D logit of a (voxel, view) pair towards
            (:data:`ALIGNMENT_TARGETS`): "views" the view's sampled 2D mask probability (Eq. 1 as the
            paper writes it), "fused" the voxel's fused 3D pseudo-label (the §3.1 fusion output;
            still label-free), "truth" the SIMULATION's ground truth (the paper's "w/ label" setting:
            a ceiling for this network and data, not a label-free row).
    """

    key: str
    name: str
    use_align: bool
    use_spatial: bool
    fit_query_to_fused: bool = False
    balance_alignment: bool = False
    alignment_target: str = "views"

    def __post_init__(self) -> None:
        _check_alignment_target(self.alignment_target)


VARIANTS: tuple[Variant, ...] = (
    Variant("full", "3D net: L_align + λ L_spatial (Eq. 3)", True, True),
    Variant("no_tfq", "3D net w/o token-for-query (Table 4b)", False, True, fit_query_to_fused=True),
    Variant("no_spatial", "3D net w/o spatial consistency (Table 4c)", True, False),
)
"""The Table 4 rows a default run trains."""

EXTRA_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "full_balanced", "3D net: Eq. 3 with class-balanced Eq. 1 (ours)", True, True, balance_alignment=True
    ),
    Variant(
        "full_fused",
        "3D net: Eq. 3, Eq. 1 against the fused 3D label (ours)",
        True,
        True,
        alignment_target="fused",
    ),
    Variant(
        "with_gt",
        "3D net: Eq. 3, Eq. 1 against the SIMULATION's truth (w/ label, ceiling)",
        True,
        True,
        alignment_target="truth",
    ),
)
"""Variants trained only when named (``--variants``): our departures from the paper's losses."""

ALL_VARIANTS: tuple[Variant, ...] = (*VARIANTS, *EXTRA_VARIANTS)
"""Every variant a run can name, in table order."""


def _variants(keys: Sequence[str] | None) -> list[Variant]:
    """The named variants (all of :data:`VARIANTS` when None), in table order."""
    if keys is None:
        return list(VARIANTS)
    return [v for v in ALL_VARIANTS if v.key in keys]


NAIVE_ROW = "naive projection (Table 4a)"
FUSION_ROW = "fusion only (node default)"
_NAIVE_PARAMS = {
    "fusion.method": "naive",
    "fusion.min_confidence": 0.0,
    "fusion.min_mask_pixels": 0,
    "views.local_views": 0,
}


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _matches(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# 1. Pseudo-labels
# ---------------------------------------------------------------------------------------------


def make_pseudo_labels(
    scale: AblationScale, out: Path, cache: Path, reuse: bool = True, log: Log = print
) -> tuple[list[Path], dict[str, Any]]:
    """Record the training rooms and write one pseudo-label file per room (reused when unchanged).

    Returns the files and statistics: queries, queries fusion found a target for (the training
    items), and the fused pseudo-label's quality against the SIMULATION's ground truth.
    """
    spec = scale.scene_spec(scale.train_seeds, scale.train_queries)
    cfg = PipelineConfig()
    cfg.update(scale.base_params())
    opts = PseudoLabelOptions(max_pairs_per_view=scale.max_pairs_per_view)
    fp = _fingerprint(
        {
            "spec": dataclasses.asdict(spec),
            "config": cfg.flat(),
            "options": dataclasses.asdict(opts),
            "seg_embedding_mix": seg_embedding_mix(scale.instance_weight),
        }
    )
    folder = out / "pseudo"
    stamp = folder / "fingerprint.json"
    if not (reuse and _matches(stamp, fp)):
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    # Stamp first: each room's file appears atomically, so a run killed half-way (a time-limited
    # command on the GPU machine) leaves valid files of this configuration that the next run keeps.
    stamp.write_text(json.dumps({"fingerprint": fp}) + "\n")
    t0 = time.perf_counter()
    files = [folder / f"{spec.cache_key(seed)}.npz" for seed in spec.seeds]
    todo = [(seed, path) for seed, path in zip(spec.seeds, files, strict=True) if not path.is_file()]
    args = [
        (seed, dataclasses.asdict(spec), cfg.flat(), dataclasses.asdict(opts), str(cache), str(path))
        for seed, path in todo
    ]
    if scale.label_workers > 1 and len(todo) > 1:
        # spawn, not fork: the parent may already run torch's thread pool, which fork would break.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            min(scale.label_workers, len(todo)), mp_context=ctx
        ) as pool:
            for msg in pool.map(_label_room, *zip(*args, strict=True)):
                log(msg)
    else:
        for a in args:
            log(_label_room(*a))
    stats = _label_stats(files)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    (folder / "stats.json").write_text(json.dumps(_json_safe(stats)) + "\n")  # for --eval-only
    return files, stats


def _label_room(
    seed: int, spec: dict[str, Any], params: dict[str, Any], opts: dict[str, Any], cache: str, path: str
) -> str:
    """Record one room (cached) and write its pseudo-labels; picklable, for worker processes."""
    torch.set_num_threads(1)
    scene_spec = SceneSetSpec(**spec)
    cfg = PipelineConfig()
    cfg.update(params)
    scene, root = prepare_scene(seed, scene_spec, Path(cache))
    t0 = time.perf_counter()
    labels = generate_scene_labels(
        root, cfg, scene_spec.pick_queries(scene.queries, seed), PseudoLabelOptions(**opts)
    )
    save_scene_labels(labels, path)
    return (
        f"[ablation] {root.name}: {len(labels.queries)} queries labelled in {time.perf_counter() - t0:.1f} s"
    )


def _label_stats(files: Sequence[Path]) -> dict[str, Any]:
    queries = found = 0
    ious: list[float] = []
    for f in files:
        labels = load_scene_labels(f)
        for q in labels.queries:
            queries += 1
            found += q.found
            truth = labels.gt_mask(q)
            if q.found and truth is not None and q.target_id > 0 and truth.any():
                pred = q.probability >= 0.5
                ious.append(float((pred & truth).sum() / max(1, (pred | truth).sum())))
    return {
        "rooms": len(files),
        "queries": queries,
        "found": found,
        "fused_point_iou_mean": float(np.mean(ious)) if ious else math.nan,
        "fused_point_acc50": float(np.mean(np.array(ious) >= 0.5)) if ious else math.nan,
    }


# ---------------------------------------------------------------------------------------------
# 2. Training
# ---------------------------------------------------------------------------------------------


class SceneQueriesDataset(Dataset):
    """Training items of several queries of one scene under one A.2 augmentation.

    Why: the U-Net's features do not depend on the query, so one forward pass of a scene can serve
    every query asked in it; :class:`~reasoning_seg.net.data.PseudoLabelDataset` gives one
    (scene, query) per item and so one forward per query. With ``queries_per_item`` queries per
    forward the same compute trains on many more queries, which is what makes a CPU-scale run
    learn anything. The losses are the same (Eq. 1 over every query's point-view pairs, Eq. 2 over
    the target-labelled ones), with two cost cuts: Eq. 1's pairs of one voxel in one view are
    merged (mean mask probability, as ``DataConfig.dedupe_pairs`` does), and Eq. 2 uses a random
    subset of at most ``max_spatial_pairs`` target-labelled pairs per query (an unbiased estimate of
    its mean).

    Args:
        files: pseudo-label files.
        data: voxel size, augmentation, which queries are usable (as the standard dataset).
        queries_per_item: queries drawn (without replacement) from the scene for each item.
        max_spatial_pairs: Eq. 2 pairs kept per query (0: no Eq. 2 data).
        target_logit_threshold: a pair is target-labelled (in Eq. 2's S) above this 2D logit.
        alignment_target: Eq. 1's pair target (:attr:`Variant.alignment_target`): "views" the merged
            2D probability of the (voxel, view) pair; "fused" / "truth" the voxel's mean fused
            probability / SIMULATION ground truth, on the same pairs (so the pairs, their view
            weights and Eq. 2's set S stay those of "views", and only the target changes).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        data: DataConfig,
        queries_per_item: int = 16,
        max_spatial_pairs: int = 2048,
        target_logit_threshold: float = 0.0,
        alignment_target: str = "views",
    ) -> None:
        if queries_per_item < 1 or max_spatial_pairs < 0:
            raise ValueError("queries_per_item must be >= 1 and max_spatial_pairs >= 0")
        _check_alignment_target(alignment_target)
        self.alignment_target = alignment_target
        self.base = PseudoLabelDataset(files, data)
        self.config = data
        self.queries_per_item = queries_per_item
        self.max_spatial_pairs = max_spatial_pairs
        self.target_logit_threshold = target_logit_threshold
        self.queries: dict[int, list[int]] = {}
        for fi, qi in self.base.items:
            self.queries.setdefault(fi, []).append(qi)
        # An epoch draws each scene about as many times as it takes to see each query once.
        self.index = [
            fi for fi, qs in sorted(self.queries.items()) for _ in range(-(-len(qs) // queries_per_item))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i``: its scene, a random augmentation and random queries (torch's RNG: seedable)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        fi = self.index[i]
        qs = self.queries[fi]
        chosen = [qs[k] for k in rng.permutation(len(qs))[: self.queries_per_item]]
        m = augmentation_matrix(rng, self.config.rotate, self.config.flip) if self.config.augment else None
        return self.item(fi, chosen, m, rng)

    def item(
        self, file_index: int, queries: Sequence[int], transform: np.ndarray | None, rng: np.random.Generator
    ) -> dict[str, Any]:
        """The voxelised scene and the pairs of ``queries`` (numpy; see :func:`collate_scene_queries`)."""
        cfg = self.config
        scene = self.base.scene(file_index)
        pts = centred(scene.points)
        if transform is not None:
            pts = pts @ np.asarray(transform, dtype=np.float64).T
        vox = voxelise(pts, scene.colors, cfg.voxel_size, cfg.color_center, cfg.height)
        n_vox = len(vox.coords)
        emb, a_point, a_query, a_logit, a_weight, s_point, s_feat = [], [], [], [], [], [], []
        for k, qi in enumerate(queries):
            q = scene.queries[qi]
            pairs = scene.pairs(q)
            keep = pairs["weight"] > cfg.min_view_weight
            point, view = vox.inverse[pairs["point"][keep]], pairs["view"][keep]
            logit, feat_row = pairs["logit"][keep], pairs["feat_row"][keep]
            # Eq. 1: one pair per (voxel, view), mean mask probability (back to a logit), the view's weight.
            # Dense bincounts over (voxel, view) keys: a sort-free np.unique (it was half the item's time).
            n_views = max(1, len(q.view_keyframe))
            key = point * n_views + view
            prob = 1.0 / (1.0 + np.exp(-np.clip(logit.astype(np.float64), -60.0, 60.0)))
            count = np.bincount(key, minlength=n_vox * n_views)
            groups = np.flatnonzero(count)
            mean_p = np.bincount(key, prob, n_vox * n_views)[groups] / count[groups]
            if self.alignment_target != "views":
                per_point = q.probability if self.alignment_target == "fused" else scene.gt_mask(q)
                if per_point is None:
                    raise ValueError(f"{scene.name}: query {q.text!r} has no truth for 'truth' targets")
                mean_p = vox.point_mean(per_point)[groups // n_views]
            mean_p = np.clip(mean_p, 1e-6, 1 - 1e-6)
            a_point.append(groups // n_views)
            a_query.append(np.full(len(groups), k, np.int64))
            # clipped at |logit| 13.8 (probability 1e-6), as the standard dataset's merged pairs
            a_logit.append(np.clip(np.log(mean_p / (1.0 - mean_p)), -13.8, 13.8).astype(np.float32))
            a_weight.append(q.view_weight[groups % n_views].astype(np.float32))
            emb.append(q.unified.astype(np.float32))
            # Eq. 2: target-labelled pairs with a SAM feature, at most max_spatial_pairs of them.
            in_s = np.flatnonzero((logit > self.target_logit_threshold) & (feat_row >= 0))
            if self.max_spatial_pairs and in_s.size:
                if in_s.size > self.max_spatial_pairs:
                    in_s = rng.choice(in_s, self.max_spatial_pairs, replace=False)
                s_point.append(point[in_s])
                s_feat.append(scene.feats[feat_row[in_s]].astype(np.float32))

        def cat(parts: list[np.ndarray], dtype: Any, width: int = 0) -> np.ndarray:
            if parts:
                return np.concatenate(parts).astype(dtype, copy=False)
            return np.zeros((0, width) if width else 0, dtype)

        return {
            "coords": vox.coords,
            "feats": vox.feats,
            "embedding": np.stack(emb) if emb else np.zeros((0, 0), np.float32),
            "pair_point": cat(a_point, np.int64),
            "pair_query": cat(a_query, np.int64),
            "pair_logit": cat(a_logit, np.float32),
            "pair_weight": cat(a_weight, np.float32),
            "s_point": cat(s_point, np.int64),
            "s_feat": cat(s_feat, np.float32, scene.feats.shape[1] if scene.feats.ndim == 2 else 1),
            "scene": scene.name,
        }


def collate_scene_queries(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch scene items: sites ``(batch, x, y, z)``; pairs re-indexed into the batch's rows and queries.

    Returns tensors ``coords`` (N, 4), ``feats`` (N, 3), ``embedding`` (Q, E) of every query of
    the batch, ``pair_point`` / ``pair_query`` (M,) row and query of each Eq. 1 pair,
    ``pair_logit`` / ``pair_weight`` (M,), ``s_point`` (S,) and ``s_feat`` (S, C) for Eq. 2,
    and ``scene`` (list of names).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    rows = np.cumsum([0] + [len(s["coords"]) for s in samples])
    cols = np.cumsum([0] + [len(s["embedding"]) for s in samples])
    coords = np.concatenate(
        [
            np.concatenate([np.full((len(s["coords"]), 1), b, np.int64), s["coords"]], 1)
            for b, s in enumerate(samples)
        ]
    )

    def cat(key: str, shift: np.ndarray | None = None) -> torch.Tensor:
        parts = [s[key] + (shift[b] if shift is not None else 0) for b, s in enumerate(samples)]
        return torch.from_numpy(np.concatenate(parts))

    return {
        "coords": torch.from_numpy(coords),
        "feats": torch.from_numpy(np.concatenate([s["feats"] for s in samples])),
        "embedding": cat("embedding"),
        "pair_point": cat("pair_point", rows),
        "pair_query": cat("pair_query", cols),
        "pair_logit": cat("pair_logit"),
        "pair_weight": cat("pair_weight"),
        "s_point": cat("s_point", rows),
        "s_feat": cat("s_feat"),
        "scene": [s["scene"] for s in samples],
    }


class SceneQueriesModule(LabelFreeModule):
    """:class:`~reasoning_seg.net.train.LabelFreeModule` trained on :class:`SceneQueriesDataset` batches.

    Same network, optimiser (A.2 SGD + schedule) and losses: Eq. 1 is the (view-weighted) BCE
    between ``<W h_q, f_p>`` and the merged 2D logit over every query's pairs, Eq. 2 the mean
    ``1 - cos`` over the sampled target-labelled pairs, Eq. 3 their sum with ``lambda_spatial``.
    """

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Eq. 3 on one batch of scenes x queries; logs every term."""
        feats = self.net(SparseTensor(batch["feats"], CoordinateMap(batch["coords"])))
        lc = self.loss_config
        align = spatial = feats.sum() * 0.0
        if lc.use_align:
            query = self.net.query_head.project(batch["embedding"])  # (Q, D): W h per query
            logits = (feats[batch["pair_point"]] * query[batch["pair_query"]]).sum(dim=1)
            rows = torch.arange(len(logits), device=logits.device)
            weight = batch["pair_weight"] if lc.weight_alignment_pairs else None
            group = batch["pair_query"] if lc.balance_alignment else None
            align = alignment_loss(  # Eq. 1 (class-balanced per query unless balance_alignment is off)
                logits, rows, batch["pair_logit"], weight, True, group, len(batch["embedding"])
            )
        if lc.use_spatial:
            s_point = batch["s_point"]
            img = self.net.spatial(feats[s_point])
            rows = torch.arange(len(s_point), device=img.device)
            spatial = spatial_consistency_loss(img, rows, batch["s_feat"])  # Eq. 2
        loss = align + lc.lambda_spatial * spatial  # Eq. 3
        n = len(batch["scene"])
        self.log_dict(
            {"train/loss": loss.detach(), "train/align": align.detach(), "train/spatial": spatial.detach()},
            batch_size=n,
        )
        self.log("train/queries", float(len(batch["embedding"])), batch_size=n)
        self.log("train/voxels", float(batch["coords"].shape[0]), batch_size=n)
        return loss


def train_scene_queries(
    variant: Variant, scale: AblationScale, files: Sequence[Path], folder: Path, seed: int = 0
) -> dict[str, Any]:
    """Train one variant with :class:`SceneQueriesModule`; writes ``model.pt`` and CSV logs to ``folder``."""
    pl.seed_everything(seed, workers=True, verbose=False)
    data = DataConfig(
        voxel_size=scale.net_voxel,
        require_features=variant.use_spatial,
        scene_cache=max(2, len(files)),
        height=scale.height_input,
    )
    ds = SceneQueriesDataset(
        files,
        data,
        scale.queries_per_item,
        scale.max_spatial_pairs if variant.use_spatial else 0,
        alignment_target=variant.alignment_target,
    )
    loader = DataLoader(
        ds,
        batch_size=scale.batch_size,
        shuffle=True,
        collate_fn=collate_scene_queries,
        num_workers=scale.loader_workers,
        persistent_workers=scale.loader_workers > 0,
    )
    unet = dataclasses.replace(UNET_PRESETS[scale.net], in_channels=4 if scale.height_input else 3)
    net = NetConfig(unet=unet, voxel_size=scale.net_voxel)
    loss = LossConfig(
        use_align=variant.use_align,
        use_spatial=variant.use_spatial,
        balance_alignment=variant.balance_alignment,
    )
    module = SceneQueriesModule(
        net.to_dict(),
        dataclasses.asdict(OptimConfig(lr=scale.lr, optimizer=scale.optimizer)),
        dataclasses.asdict(loss),
    )
    init_steps = 0
    if scale.init_from:
        start = LabelFree3DNet.load(scale.init_from)
        if start.config.to_dict() != net.to_dict():
            raise ValueError(
                f"{scale.init_from} is another network than this scale's {scale.net} at {scale.net_voxel} m"
            )
        module.net.load_state_dict(start.state_dict())
        init_steps = int(start.checkpoint_meta.get("total_steps", start.checkpoint_meta.get("steps", 0)))
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=scale.accelerator,
        devices=scale.devices,
        max_epochs=-1,
        max_steps=scale.steps,
        max_time={"minutes": scale.max_minutes} if scale.max_minutes > 0 else None,
        logger=CSVLogger(folder, name="logs"),
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, scale.steps // 50),
        num_sanity_val_steps=0,
        default_root_dir=folder,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    summary = {
        "seconds": round(seconds, 2),
        "steps": int(trainer.global_step),
        "step_s_median": float(np.median(timer.times)) if timer.times else math.nan,
        "train_items": len(ds.base),
        "scene_items_per_epoch": len(ds),
        "final_loss": metrics.get("train/loss"),
    }
    if scale.init_from:  # steps of every run this model has been through, this one included
        summary["init_from"] = scale.init_from
        summary["total_steps"] = init_steps + summary["steps"]
    if trainer.is_global_zero:
        module.net.save(folder / "model.pt", meta={"variant": variant.key, **summary})
    return summary


def train_variant(
    variant: Variant,
    scale: AblationScale,
    files: Sequence[Path],
    out: Path,
    reuse: bool = True,
    seed: int = 0,
    log: Log = print,
) -> tuple[Path, dict[str, Any]]:
    """Train one variant (reused when its inputs are unchanged); returns ``model.pt`` and a summary."""
    folder = out / "train" / variant.key
    fp = _fingerprint(
        {
            "variant": dataclasses.asdict(variant),
            "scale": dataclasses.asdict(scale),
            "files": [f.name for f in files],
            "pseudo": (out / "pseudo" / "fingerprint.json").read_text(),
            "seed": seed,
        }
    )
    stamp = folder / "experiment.json"
    model = folder / "model.pt"
    if reuse and model.is_file() and _matches(stamp, fp):
        log(f"[ablation] {variant.key}: reusing {model}")
        return model, json.loads(stamp.read_text())["summary"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(
        f"[ablation] training '{variant.name}': {scale.net} at {scale.net_voxel} m, {scale.steps} steps of "
        f"{scale.batch_size} scenes x {scale.queries_per_item} queries"
    )
    info = train_scene_queries(variant, scale, files, folder, seed)
    if variant.fit_query_to_fused:
        # On the training accelerator: the fit runs the frozen backbone over every training room.
        dev = "cuda" if scale.accelerator == "gpu" and torch.cuda.is_available() else "cpu"
        net = LabelFree3DNet.load(model, map_location=dev)
        probe = fit_query_projection(
            net, files, scale.net_voxel, scale.probe_steps, scale.probe_lr, seed=seed, log=log
        )
        net.save(model, meta={**net.checkpoint_meta, "query_projection": probe})
        info["query_projection"] = probe
        info["seconds"] = round(info["seconds"] + probe["seconds"], 2)
    stamp.write_text(json.dumps({"fingerprint": fp, "summary": info}, default=str) + "\n")
    return model, info


def fit_query_projection(
    net: LabelFree3DNet,
    files: Sequence[Path],
    voxel_size: float,
    steps: int = 300,
    lr: float = 0.01,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Fit the ``[SEG]`` projection ``W`` to the fused 3D pseudo-labels, backbone frozen (Table 4 (b)).

    Loss: mean over the training items and their voxels of ``BCE(<W h, f_v>, fused_v)``, with
    ``f_v`` the frozen network's voxel features (eval mode, un-augmented scene) and ``fused_v`` the
    voxel's mean fused probability. Full batch, Adam; each scene's features are computed once.

    Returns:
        What was done: steps, first and last loss, items, seconds (stored in the checkpoint's meta).
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    ds = PseudoLabelDataset(
        files,
        DataConfig(
            voxel_size=voxel_size, augment=False, require_features=False, height=net.config.height_input
        ),
        augment=False,
    )
    dev = net.device
    net.eval()
    cfg = ds.config
    by_file: dict[int, list[int]] = {}
    for fi, qi in ds.items:
        by_file.setdefault(fi, []).append(qi)
    # Per scene: voxelise once, run the frozen backbone once, then each query's voxel-mean fused
    # probability (what PseudoLabelDataset.item returns as ``fused``, without building its pairs).
    per_file: dict[int, dict[str, Any]] = {}
    for fi, qis in by_file.items():
        scene = ds.scene(fi)
        vox = voxelise(centred(scene.points), scene.colors, cfg.voxel_size, cfg.color_center, cfg.height)
        coords = torch.as_tensor(vox.coords, device=dev)
        coords = torch.cat([torch.zeros((len(coords), 1), dtype=torch.int64, device=dev), coords], 1)
        x = SparseTensor.from_coords(coords, torch.as_tensor(vox.feats, device=dev))
        with torch.no_grad():
            feats = net(x).float()
        emb, target = [], []
        for qi in qis:
            q = scene.queries[qi]
            fused = vox.point_mean(q.probability)
            emb.append(torch.as_tensor(q.unified.astype(np.float32), device=dev))
            target.append(torch.as_tensor(fused.astype(np.float32), device=dev))
        per_file[fi] = {"feats": feats, "emb": emb, "target": target}
    groups = [(g["feats"], torch.stack(g["emb"]), torch.stack(g["target"], dim=1)) for g in per_file.values()]
    proj = net.query_head.proj
    proj.requires_grad_(True)
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    losses: list[float] = []
    n_total = sum(t.numel() for _, _, t in groups)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(
            F.binary_cross_entropy_with_logits(feats @ proj(emb).T, target, reduction="sum")
            for feats, emb, target in groups
        ) / max(1, n_total)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    proj.requires_grad_(False)
    info = {
        "method": "BCE against the fused 3D pseudo-label, backbone frozen (Table 4b substitute for Eq. 1)",
        "steps": steps,
        "items": len(ds),
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": losses[-1] if losses else math.nan,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log(f"[ablation] query projection fitted: BCE {info['loss_first']:.4f} -> {info['loss_last']:.4f}")
    return info


# ---------------------------------------------------------------------------------------------
# 3. Evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_experiment(scale: AblationScale, models: dict[str, Path]) -> Experiment:
    """The held-out benchmark: Table 4 (a), fusion only, and the node answering with each network."""
    rows = [
        RowSpec(NAIVE_ROW, dict(_NAIVE_PARAMS)),
        RowSpec(FUSION_ROW, {}),
    ]
    for v in ALL_VARIANTS:
        if v.key in models:
            rows.append(
                RowSpec(
                    v.name,
                    {
                        "net.checkpoint": str(models[v.key]),
                        "net.device": scale.net_device,
                    },
                )
            )
    return Experiment(
        title="Label-free 3D network ablation (MLLM-For3D Table 4) on held-out SIMULATED rooms",
        scenes=scale.scene_spec(scale.test_seeds, scale.test_queries),
        rows=rows,
        description="",
        base_params=scale.base_params(),
    )


def run_ablation(
    scale: AblationScale,
    out: str | Path,
    cache: str | Path | None = None,
    variants: Sequence[str] | None = None,
    reuse: bool = True,
    seed: int = 0,
    log: Log = print,
    stop_after: str = "",
    eval_only: bool = False,
) -> dict[str, Any]:
    """Pseudo-labels -> training -> held-out evaluation; writes ``OUT/ablation.json`` and returns it.

    ``stop_after`` "labels" or "train" ends early (returns the partial result, writes nothing): with
    the reuse of unchanged pseudo-labels and models, a long run can be split into short commands.
    ``eval_only`` evaluates the models already in ``OUT/train/<variant>/`` (with the label and
    training summaries stored beside them) without the pseudo-labels, e.g. on another machine.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache) if cache else out / "scenes"
    t0 = time.perf_counter()
    if scale.threads > 0:
        torch.set_num_threads(scale.threads)
    chosen = _variants(variants)
    models: dict[str, Path] = {}
    training: dict[str, Any] = {}
    if eval_only:
        try:
            label_stats = json.loads((out / "pseudo" / "stats.json").read_text())
            for v in chosen:
                models[v.key] = out / "train" / v.key / "model.pt"
                training[v.key] = json.loads((out / "train" / v.key / "experiment.json").read_text())[
                    "summary"
                ]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(
                f"--eval-only needs the stored labels summary and trained models: {exc}"
            ) from exc
    else:
        files, label_stats = make_pseudo_labels(scale, out, cache_dir, reuse, log)
        log(f"[ablation] pseudo-labels: {label_stats}")
        if stop_after == "labels":
            return {"pseudo_labels": label_stats}
        for v in chosen:
            models[v.key], training[v.key] = train_variant(v, scale, files, out, reuse, seed, log)
    if stop_after == "train":
        return {"pseudo_labels": label_stats, "training": training}
    t_eval = time.perf_counter()
    exp = evaluation_experiment(scale, models)
    doc = run_experiment(exp, out / "eval", cache_dir, pictures=0, log=log)
    result = {
        "scale": dataclasses.asdict(scale),
        "seg_embedding_mix": list(seg_embedding_mix(scale.instance_weight)),
        "pseudo_labels": label_stats,
        "training": training,
        "variants": [dataclasses.asdict(v) for v in chosen],
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "evaluation": doc,
        "command": " ".join(["python -m reasoning_seg.net.experiment", *sys.argv[1:]]),
    }
    (out / "ablation.json").write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    return result


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# 4. The table
# ---------------------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def _num(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def _delta(x: Any, ref: Any) -> str:
    if x is None or ref is None or not (math.isfinite(x) and math.isfinite(ref)):
        return ""
    return f" ({100 * (x - ref):+.1f})"


_TARGET_NOTE = {"views": "", "fused": " (fused 3D label)", "truth": " (truth: w/ label)"}


def write_markdown(result: dict[str, Any]) -> str:
    """``bench/results/net_ablation.md``: the Table-4 rows, how they were made, and the details."""
    sc, doc = result["scale"], result["evaluation"]
    rows = {r["name"]: r for r in doc["rows"]}
    ref = rows.get(FUSION_ROW, {}).get("summary", {}).get("overall", {})
    flags = {v["name"]: v for v in result["variants"]}
    pl = result["pseudo_labels"]
    n_q = sum(sum(s["queries"].values()) for s in doc["scene_info"])
    # Steps the models went through (a run cut by --max-minutes or continued with --init-from
    # differs from the scale's nominal steps).
    done = [t.get("total_steps", t.get("steps")) for t in result.get("training", {}).values()]
    steps = sorted({int(s) for s in done if s}) or [int(sc["steps"])]
    steps_text = "/".join(str(s) for s in steps)
    lines = [
        "# Label-free 3D network: Table 4 ablation in the benchmark world",
        "",
        "MLLM-For3D Table 4 (a-c) on held-out SIMULATED rooms: a 3D network trained only on fused "
        "multi-view pseudo-labels of *other* rooms answers the node's queries (§3.3), against the fusion "
        "it learned from. Every number comes from simulated rooms and a simulated 2D model (LISA-7B-like "
        "failure rates, SIMULATED SAM features, SIMULATED [SEG] embeddings that mix category, colour and "
        f"instance directions with weights {tuple(result['seg_embedding_mix'])}); it ranks the variants, it "
        "does not predict real-world accuracy.",
        "",
        f"Reproduce: `{result['command']}` (scale '{sc['name']}', {result['total_seconds']:.0f} s in total; "
        "`--full` is the GPU-machine scale).",
        "",
        f"- Training: {pl['rooms']} rooms (seeds {sc['train_seeds']}), {pl['queries']} queries, "
        f"{pl['found']} with a fused target (the training items). Fused pseudo-label vs the simulation's "
        f"truth on those: mean point IoU {_pct(pl['fused_point_iou_mean'])}, IoU >= 0.5 for "
        f"{_pct(pl['fused_point_acc50'])}%. Network '{sc['net']}' at {sc['net_voxel']} m, input "
        f"{'colour + height' if sc.get('height_input', False) else 'colour'}, "
        f"{steps_text} {sc.get('optimizer', 'sgd').upper()} steps of {sc['batch_size']} scenes x "
        f"{sc.get('queries_per_item', 1)} queries (lr {sc['lr']}, poly decay, A.2 augmentations).",
        f"- Evaluation: {len(doc['scenes']['seeds'])} unseen rooms (seeds {doc['scenes']['seeds']}), "
        f"{n_q} queries, recorded at {sc['width']}x{sc['height']}, {sc['frames']} frames, map voxel "
        f"{sc['map_voxel']} m; the node's query path with `net.checkpoint` set (the network answers when "
        "fusion found a target; 'not found' stays fusion's verdict).",
        "",
        "| Method | L_align (Eq. 1) | L_spatial (Eq. 2) | Acc@0.25 | Acc@0.5 | mIoU | found | false found "
        "| answered by the 3D net |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        o, s = r["summary"]["overall"], r["summary"]
        v = flags.get(r["name"])
        target = "" if v is None else _TARGET_NOTE[v.get("alignment_target", "views")]
        align = "–" if v is None else ("✓" + target if v["use_align"] else "✗ (fused-label BCE)")
        spatial = "–" if v is None else ("✓" if v["use_spatial"] else "✗")
        deltas = {
            k: "" if r["name"] == FUSION_ROW else _delta(o[k], ref.get(k))
            for k in ("acc_25", "acc_50", "miou")
        }
        methods = r.get("methods", {})
        net_n = methods.get("3d_net", 0)
        total = sum(methods.values())
        lines.append(
            f"| {r['name']} | {align} | {spatial} | {_pct(o['acc_25'])}{deltas['acc_25']} | "
            f"{_pct(o['acc_50'])}{deltas['acc_50']} | {_pct(o['miou'])}{deltas['miou']} | "
            f"{_pct(s['found_rate'])} | "
            f"{_pct(s['false_found_rate'])} | {net_n}/{total} |"
        )
    # The verdict is about label-free rows: a row trained on the simulation's truth is a ceiling.
    nets = [
        r
        for r in doc["rows"]
        if r["name"] in flags and flags[r["name"]].get("alignment_target", "views") != "truth"
    ]
    if nets and ref:
        best = max(nets, key=lambda r: r["summary"]["overall"]["miou"])
        gap = 100 * (best["summary"]["overall"]["miou"] - ref["miou"])
        verdict = "beats" if gap > 0 else "does not beat"
        lines += [
            "",
            f"**At this scale the 3D net {verdict} fusion only on the held-out rooms**: the best network row "
            f"('{best['name']}') is {gap:+.1f} mIoU points from fusion only.",
        ]
    items = steps[-1] * sc["batch_size"] * sc.get("queries_per_item", 1)
    lines += [
        "",
        f"Scale '{sc['name']}': a '{sc['net']}' U-Net trained for {steps_text} steps ({items} query-items, "
        f"{items / max(1, pl['found']):.1f} passes over the training items) on {pl['rooms']} rooms. "
        "Deltas in parentheses are against fusion only. Acc@k: % of queries with 3D IoU >= k; mIoU: mean "
        "IoU over the same queries (misses count 0); false found: % of absent-target queries answered "
        "'found' (`reasoning_seg.metrics`).",
        "",
        "**w/o token-for-query (4b), our definition.** With Eq. 1 off nothing trains the projection of the "
        "[SEG] embedding, so the network could not answer queries at all. The paper does not say what "
        "replaces it; here the backbone is trained with Eq. 2 only, then (backbone frozen) the query "
        "projection is fitted by BCE against the fused 3D pseudo-label (each voxel's mean fused "
        "probability) instead of the per-view 2D logits of Eq. 1 "
        "(`reasoning_seg.net.experiment.fit_query_projection`).",
        "",
        "## Timings",
        "",
        f"- Pseudo-labels (recording + node stages on {pl['rooms']} rooms): {pl['seconds']} s",
    ]
    for key, t in result["training"].items():
        extra = " (incl. query-projection fit)" if "query_projection" in t else ""
        if t.get("init_from"):
            extra += f", continuing {t['init_from']} ({t['total_steps']} steps in all)"
        lines.append(
            f"- Training '{key}': {t['steps']} steps in {t['seconds']} s{extra}, median step "
            f"{t['step_s_median']:.3f} s, {t['train_items']} items, final loss {_num(t['final_loss'])}"
        )
    lines.append(f"- Evaluation ({len(doc['rows'])} rows): {result['eval_seconds']} s")
    details = benchmark_markdown(doc).split("\n")
    keep = [ln.replace("## ", "### ") for ln in details if not ln.startswith(("# ", "Reproduce:"))]
    while keep and not keep[0].strip():
        keep.pop(0)
    lines += ["", "## Evaluation details (benchmark runner output)", "", *keep]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m reasoning_seg.net.experiment``."""
    p = argparse.ArgumentParser(
        prog="python -m reasoning_seg.net.experiment",
        description="Train the label-free 3D network on pseudo-labels of SIMULATED rooms and evaluate "
        "the Table 4 variants on held-out rooms.",
    )
    p.add_argument("--out", default="out/net_ablation", help="output folder")
    p.add_argument("--cache", default="", help="recorded-room cache (default OUT/scenes)")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset (SCALES)")
    p.add_argument("--full", action="store_true", help="same as --scale full")
    p.add_argument("--table", default="", help="also write the Markdown table here")
    keys = [v.key for v in ALL_VARIANTS]
    p.add_argument("--variants", default="", help=f"comma list of {keys} (default: the Table 4 rows)")
    p.add_argument("--fresh", action="store_true", help="regenerate pseudo-labels and retrain")
    p.add_argument(
        "--stop-after", choices=("labels", "train"), default="", help="end after this stage (reused later)"
    )
    p.add_argument("--label-workers", type=int, default=0, help="processes for pseudo-labels")
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate the models already trained in OUT (no labels)"
    )
    p.add_argument(
        "--table-only", action="store_true", help="only re-render the table from OUT/ablation.json"
    )
    p.add_argument("--loader-workers", type=int, default=-1, help="DataLoader workers for training")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default="", help="warm-start training from this model.pt (same network)")
    p.add_argument(
        "--instance-weight",
        type=float,
        default=-1.0,
        help="segmenter.sim_instance_weight of the SIMULATED LISA (default: the scale's, 0)",
    )
    p.add_argument("--train-seeds", default="", help="override, e.g. 0-5")
    p.add_argument("--test-seeds", default="", help="override, e.g. 100-102")
    p.add_argument("--steps", type=int, default=0, help="override training steps")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--optimizer", default="", help="sgd (A.2) or adamw")
    p.add_argument("--no-height", action="store_true", help="colour-only voxel input (no height channel)")
    p.add_argument("--queries-per-item", type=int, default=0, help="queries per scene forward")
    p.add_argument("--net", default="", help="override the U-Net preset")
    p.add_argument("--net-voxel", type=float, default=0.0)
    p.add_argument("--size", default="", help="override recording size WxH")
    p.add_argument("--frames", type=int, default=0)
    p.add_argument("--train-queries", type=int, default=-1, help="queries per training room (0 = all)")
    p.add_argument("--test-queries", type=int, default=-1, help="queries per held-out room (0 = all)")
    p.add_argument("--threads", type=int, default=-1, help="torch CPU threads")
    p.add_argument("--accelerator", default="", help="cpu / gpu")
    p.add_argument("--devices", default="", help="Lightning devices")
    p.add_argument("--net-device", default="", help="net.device for evaluation")
    return p


def scale_from_args(a: argparse.Namespace) -> AblationScale:
    """The preset, with the command line's overrides (ValueError on bad values)."""
    base = SCALES["full" if a.full else a.scale]
    changes: dict[str, Any] = {}
    if a.train_seeds:
        changes["train_seeds"] = _seeds(a.train_seeds)
    if a.test_seeds:
        changes["test_seeds"] = _seeds(a.test_seeds)
    for name in ("steps", "batch_size", "frames", "queries_per_item", "label_workers"):
        if getattr(a, name):
            changes[name] = getattr(a, name)
    if a.lr:
        changes["lr"] = a.lr
    if a.max_minutes:
        changes["max_minutes"] = a.max_minutes
    if a.init_from:
        changes["init_from"] = a.init_from
    if a.instance_weight >= 0:
        changes["instance_weight"] = a.instance_weight
    if a.optimizer:
        changes["optimizer"] = a.optimizer
    if a.no_height:
        changes["height_input"] = False
    if a.net:
        changes["net"] = a.net
    if a.net_voxel:
        changes["net_voxel"] = a.net_voxel
    if a.size:
        w, h = (int(v) for v in a.size.lower().split("x"))
        changes["width"], changes["height"] = w, h
    if a.train_queries >= 0:
        changes["train_queries"] = a.train_queries
    if a.test_queries >= 0:
        changes["test_queries"] = a.test_queries
    if a.threads >= 0:
        changes["threads"] = a.threads
    if a.loader_workers >= 0:
        changes["loader_workers"] = a.loader_workers
    if a.accelerator:
        changes["accelerator"] = a.accelerator
    if a.devices:
        changes["devices"] = int(a.devices) if a.devices.isdigit() else a.devices
    if a.net_device:
        changes["net_device"] = a.net_device
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: runs the ablation and prints the table."""
    a = build_parser().parse_args(argv)
    if a.table_only:
        try:
            result = json.loads((Path(a.out) / "ablation.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        table = write_markdown(result)
        print(table)
        if a.table:
            Path(a.table).write_text(table)
        return 0
    try:
        scale = scale_from_args(a)
        variants = [v.strip() for v in a.variants.split(",") if v.strip()] or None
        unknown = set(variants or []) - {v.key for v in ALL_VARIANTS}
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_ablation(
            scale,
            a.out,
            a.cache or None,
            variants,
            reuse=not a.fresh,
            seed=a.seed,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            stop_after=a.stop_after,
            eval_only=a.eval_only,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.stop_after:
        print(json.dumps(_json_safe(result), indent=1))
        return 0
    table = write_markdown(result)
    (Path(a.out) / "net_ablation.md").write_text(table)
    print(table)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
