"""Training the label-free network on several queries per simulated room (step 2 of :mod:`.experiment`)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from reasoning_seg.net.ablation_config import (
    AblationScale,
    Log,
    Variant,
    _check_alignment_target,
    _fingerprint,
    _matches,
)
from reasoning_seg.net.data import DataConfig, PseudoLabelDataset, augmentation_matrix
from reasoning_seg.net.losses import alignment_loss, spatial_consistency_loss
from reasoning_seg.net.model import UNET_PRESETS, LabelFree3DNet, NetConfig, centred, voxelise
from reasoning_seg.net.sparse_conv import CoordinateMap, SparseTensor
from reasoning_seg.net.train import LabelFreeModule, LossConfig, OptimConfig, StepTimer

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
