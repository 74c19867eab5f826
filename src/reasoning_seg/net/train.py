"""Training the label-free 3D network on stored pseudo-labels, with PyTorch Lightning (§3.2, A.2).

Why Lightning: the paper trains on 4 GPUs through a Lightning DataModule (A.2 gives its per-device
batch rule, ``batch_size // num_gpus``) and users outgrow one GPU quickly; Lightning's strategies
give DDP across GPUs and nodes, checkpoints, resume and logs without a hand-written loop.

- :class:`LabelFreeModule` (``LightningModule``): a :class:`~reasoning_seg.net.model.LabelFree3DNet`
  trained with :class:`~reasoning_seg.net.losses.LabelFreeLoss` (Eq. 3 = Eq. 1 + lambda Eq. 2, with
  the Table 4 switches) plus, in the hybrid "w/ label" mode, BCE against ground-truth voxel masks.
  Optimiser and schedule default to A.2: SGD, momentum 0.9, lr 0.1. The paper's weight decay and
  schedule did not survive in our copy of the text; defaults are weight decay 1e-4 and the
  polynomial decay (power 0.9) of MinkowskiEngine's training scripts, which the paper's backbone
  comes from; cosine and constant are options.
- :class:`PseudoLabelDataModule` (``LightningDataModule``): the train/validation datasets of
  :mod:`reasoning_seg.net.data`, with the A.2 augmentations on the training split only.
- :func:`run_training` / :func:`main`: checkpoints (``OUT/checkpoints/last.ckpt`` + the best by
  validation loss), resume, CSV logs (and TensorBoard when installed), the exported network
  ``OUT/model.pt`` (:meth:`LabelFree3DNet.load` reads it) and ``OUT/train_summary.json``.

Command line::

    python -m reasoning_seg.net.train --pseudo-labels out/pseudo/train --out out/train/full
        [--val-pseudo-labels out/pseudo/val --epochs 40 --batch-size 8 --lambda-spatial 1.0
         --no-align --no-spatial --with-gt --devices 2 --strategy ddp --num-nodes 1 --resume last]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from reasoning_seg.net.data import DataConfig, PseudoLabelDataset, collate, find_label_files
from reasoning_seg.net.losses import LabelFreeLoss, PointViewPairs
from reasoning_seg.net.model import UNET_PRESETS, LabelFree3DNet, NetConfig
from reasoning_seg.net.sparse_conv import CoordinateMap, SparseTensor

__all__ = [
    "LabelFreeModule",
    "LossConfig",
    "OptimConfig",
    "PseudoLabelDataModule",
    "StepTimer",
    "TrainConfig",
    "main",
    "run_training",
]

SCHEDULES = ("poly", "cosine", "none")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (A.2 defaults where the paper gives them).

    Attributes:
        lr: base learning rate (A.2: 0.1 for ScanNet / Matterport3D, 0.01 for ScanNet++).
        momentum: SGD momentum (A.2: 0.9).
        weight_decay: L2 weight decay (its value is lost in our copy of A.2; 1e-4 assumed).
        nesterov: Nesterov momentum.
        schedule: "poly" (``lr (1 - step / total) ** poly_power``, per step), "cosine" (to
            ``min_lr``) or "none".
        poly_power: exponent of the polynomial decay.
        min_lr: floor of the cosine schedule.
        optimizer: "sgd" (A.2) or "adamw" (our option for short runs: it converges in far fewer
            steps than SGD at lr 0.1 on the small CPU-scale experiments; use lr ~1e-3).
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "poly"
    poly_power: float = 0.9
    min_lr: float = 0.0
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got '{self.optimizer}'")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got '{self.schedule}'")
        if not self.lr > 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, momentum and weight_decay >= 0")


@dataclass
class LossConfig:
    """Eq. 3 and its switches (Table 4 b/c), plus the hybrid ground-truth term.

    Attributes:
        lambda_spatial: weight of Eq. 2 in Eq. 3 (the paper's value is lost in our copy; 1.0).
        use_align: Eq. 1 token-for-query alignment (off = Table 4 (b)).
        use_spatial: Eq. 2 spatial consistency (off = Table 4 (c)).
        weight_alignment_pairs: weight Eq. 1's pairs by their view's token attention.
        balance_alignment: class-balanced Eq. 1 per query (our addition, see
            :func:`reasoning_seg.net.losses.balanced_pair_weights`; off = the literal mean, the
            default: on the simulated rooms it fitted the training room worse, IoU 0.26 vs 0.32).
        target_logit_threshold: pairs with a 2D logit above it are in Eq. 2's set S.
        with_gt: add BCE against ground-truth voxel masks (the paper's "w/ label" rows).
        lambda_gt: weight of that term.
    """

    lambda_spatial: float = 1.0
    use_align: bool = True
    use_spatial: bool = True
    weight_alignment_pairs: bool = True
    balance_alignment: bool = False
    target_logit_threshold: float = 0.0
    with_gt: bool = False
    lambda_gt: float = 1.0


def _voxel_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = float((pred & target).sum())
    union = float((pred | target).sum())
    return inter / union if union else 1.0


class LabelFreeModule(pl.LightningModule):
    """The network, Eq. 3 and the optimiser as a ``LightningModule``.

    Hyper-parameters are plain dicts (``NetConfig.to_dict()``, ``OptimConfig``, ``LossConfig``
    fields), so checkpoints load with ``torch.load(weights_only=True)`` and
    ``LabelFreeModule.load_from_checkpoint`` rebuilds the same module.

    Parameters a disabled loss term would leave without gradient (the query projection without
    Eq. 1 and the hybrid term, the spatial projection without Eq. 2) are frozen, so DDP does not
    wait for their gradients.

    Args:
        net: ``NetConfig.to_dict()`` (default MinkowskiNet14).
        optim: ``OptimConfig`` fields.
        loss: ``LossConfig`` fields.
    """

    def __init__(
        self,
        net: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = LabelFree3DNet(NetConfig.from_dict(net) if net else NetConfig())
        self.optim_config = OptimConfig(**(optim or {}))
        self.loss_config = LossConfig(**(loss or {}))
        lc = self.loss_config
        self.loss = LabelFreeLoss(
            lc.lambda_spatial,
            lc.use_align,
            lc.use_spatial,
            lc.target_logit_threshold,
            lc.weight_alignment_pairs,
            lc.balance_alignment,
        )
        if not (lc.use_align or lc.with_gt):
            self.net.query_head.requires_grad_(False)
        if not lc.use_spatial:
            self.net.spatial.requires_grad_(False)

    # ------------------------------------------------------------------ forward + losses
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(point features (N, D), Eq. 1 logits (N,), features in SAM space (N, C) or None)."""
        x = SparseTensor(batch["feats"], CoordinateMap(batch["coords"]))
        feats = self.net(x)
        logits = self.net.query_head.logits(feats, batch["embedding"], batch["batch_index"])
        img = self.net.spatial(feats) if self.loss.use_spatial else None
        return feats, logits, img

    def _losses(
        self, batch: dict[str, Any], logits: torch.Tensor, img: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        pair_feat = batch.get("pair_feat") if self.loss.use_spatial else None
        if self.loss.use_spatial and pair_feat is None:
            raise ValueError(
                "the spatial-consistency loss needs SAM features in the pseudo-labels (or --no-spatial)"
            )
        pairs = PointViewPairs(batch["pair_point"], batch["pair_logit"], pair_feat, batch["pair_weight"])
        group = batch["batch_index"][batch["pair_point"]]
        terms = self.loss(logits, img, pairs, group, len(batch["scene"]))
        total = terms.total
        gt_term = logits.new_zeros(())
        if self.loss_config.with_gt:
            gt = batch["gt"]
            known = ~torch.isnan(gt)
            if bool(known.any()):
                gt_term = F.binary_cross_entropy_with_logits(logits[known], gt[known])
            else:
                gt_term = logits.sum() * 0.0
            total = total + self.loss_config.lambda_gt * gt_term
        return {"loss": total, "align": terms.align, "spatial": terms.spatial, "gt": gt_term}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Eq. 3 (+ the ground-truth term) on one batch; logs every term."""
        _, logits, img = self(batch)
        losses = self._losses(batch, logits, img)
        n = len(batch["scene"])
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=n, prog_bar=False)
        self.log("train/voxels", float(batch["coords"].shape[0]), batch_size=n)
        self.log("train/pairs", float(batch["pair_point"].shape[0]), batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Losses, and voxel IoU of the §3.3 prediction against the fusion pseudo-label and the truth."""
        feats, logits, img = self(batch)
        losses = self._losses(batch, logits, img)
        n = len(batch["scene"])
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=True, prog_bar=False
        )
        prob = self.net.query_head.probabilities(feats, batch["embedding"], batch["batch_index"])
        pred = prob > self.net.config.threshold
        off = batch["offsets"].tolist()
        iou_fused, iou_gt = [], []
        for b in range(n):
            rows = slice(off[b], off[b + 1])
            iou_fused.append(_voxel_iou(pred[rows], batch["fused"][rows] >= 0.5))
            gt = batch["gt"][rows]
            if not bool(torch.isnan(gt).any()):
                iou_gt.append(_voxel_iou(pred[rows], gt >= 0.5))
        self.log("val/iou_fused", float(np.mean(iou_fused)), batch_size=n, sync_dist=True)
        if iou_gt:
            g = np.array(iou_gt)
            self.log("val/iou_gt", float(g.mean()), batch_size=len(g), sync_dist=True)
            self.log("val/acc50_gt", float((g >= 0.5).mean()), batch_size=len(g), sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """SGD (A.2) or AdamW with a per-step poly / cosine / constant schedule over the whole run."""
        o = self.optim_config
        params = [p for p in self.parameters() if p.requires_grad]
        opt: torch.optim.Optimizer
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
            )
        if o.schedule == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if o.schedule == "poly":
            power = o.poly_power
            sched: Any = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: max(0.0, 1.0 - step / total) ** power
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=o.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class PseudoLabelDataModule(pl.LightningDataModule):
    """Train / validation datasets over pseudo-label files.

    The batch size is the *total* over all devices, as in A.2: each device loads
    ``batch_size // world_size`` items (Lightning's distributed sampler splits the items).

    Args:
        train_files: pseudo-label files to train on.
        val_files: held-out files (may be empty: no validation).
        data: item options (augmentation applies to the training split only).
        batch_size: total batch size.
        num_workers: DataLoader workers per device.
    """

    def __init__(
        self,
        train_files: Sequence[str | Path],
        val_files: Sequence[str | Path] = (),
        data: DataConfig | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.train_files = [Path(f) for f in train_files]
        self.val_files = [Path(f) for f in val_files]
        self.data_config = data or DataConfig()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: PseudoLabelDataset | None = None
        self.val_set: PseudoLabelDataset | None = None

    @property
    def per_device_batch_size(self) -> int:
        """A.2: ``batch_size // number of devices`` (the whole batch without a trainer)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size < world:
            raise ValueError(f"batch size {self.batch_size} is smaller than the {world} devices")
        return self.batch_size // world

    def setup(self, stage: str | None = None) -> None:
        """Index the files (metadata only; scenes are decoded lazily)."""
        if self.train_set is None:
            self.train_set = PseudoLabelDataset(self.train_files, self.data_config)
        if self.val_set is None and self.val_files:
            self.val_set = PseudoLabelDataset(self.val_files, self.data_config, augment=False)

    def _loader(self, ds: PseudoLabelDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.per_device_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training items."""
        assert self.train_set is not None
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Held-out items in order, no augmentation ([] without validation files)."""
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


class StepTimer(Callback):
    """Wall time of every optimisation step (forward, backward, optimiser), logged as ``time/step_s``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ):
        """Start the clock (after the batch was loaded and moved to the device)."""
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ):
        """Stop the clock and log the step time."""
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        pl_module.log("time/step_s", dt, batch_size=len(batch["scene"]))


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """One training run (what the command line sets).

    Attributes:
        pseudo_labels: training pseudo-label files or folders.
        out: output folder (checkpoints/, logs/, model.pt, train_summary.json).
        val_pseudo_labels: held-out files or folders (validation); empty: none, unless
            ``val_fraction`` > 0 holds out that share of the training scenes.
        net: U-Net preset (:data:`reasoning_seg.net.model.UNET_PRESETS`).
        feature_dim: override the preset's per-voxel feature dimension (0: keep).
        epochs, max_steps: stop after either (``max_steps`` -1: epochs only).
        batch_size: total over devices (A.2).
        resume: checkpoint to continue from: a path, or "last" for ``OUT/checkpoints/last.ckpt``.
        accelerator, devices, strategy, num_nodes, precision: Lightning's (DDP: ``strategy="ddp"``).
        threads: torch CPU threads (0: leave torch's default).
    """

    pseudo_labels: list[str]
    out: str
    val_pseudo_labels: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    net: str = "minkunet14"
    feature_dim: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 40
    max_steps: int = -1
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    resume: str = ""
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 10
    progress_bar: bool = True
    threads: int = 0

    def net_config(self) -> NetConfig:
        """The network configuration of this run."""
        if self.net not in UNET_PRESETS:
            raise ValueError(f"unknown network preset '{self.net}' (one of {sorted(UNET_PRESETS)})")
        unet = UNET_PRESETS[self.net]
        if self.feature_dim:
            unet = dataclasses.replace(unet, out_channels=self.feature_dim)
        unet = dataclasses.replace(unet, in_channels=4 if self.data.height else 3)
        return NetConfig(unet=unet, voxel_size=self.data.voxel_size, color_center=self.data.color_center)


def _split(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    train = find_label_files(cfg.pseudo_labels)
    val = find_label_files(cfg.val_pseudo_labels) if cfg.val_pseudo_labels else []
    if not val and cfg.val_fraction > 0:
        n_val = max(1, int(round(cfg.val_fraction * len(train))))
        if n_val >= len(train):
            raise ValueError(f"val_fraction {cfg.val_fraction} leaves no training scene of {len(train)}")
        train, val = train[:-n_val], train[-n_val:]
    return train, val


def _loggers(out: Path) -> list[Any]:
    loggers: list[Any] = [CSVLogger(out, name="logs")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        import_ok = False
        for mod in ("tensorboard", "tensorboardX"):
            try:
                __import__(mod)
                import_ok = True
                break
            except ImportError:
                continue
        if import_ok:
            loggers.append(TensorBoardLogger(out, name="tensorboard"))
    except ImportError:
        pass
    return loggers


def _resume_path(cfg: TrainConfig, ckpt_dir: Path) -> str | None:
    if not cfg.resume:
        return None
    path = ckpt_dir / "last.ckpt" if cfg.resume == "last" else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return str(path)


def run_training(cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train (or continue training) and export the network; returns the run summary.

    Writes ``OUT/checkpoints/last.ckpt`` (every epoch and at the end), the best checkpoint by
    ``val/loss`` when validating, ``OUT/logs/version_N/metrics.csv``, ``OUT/model.pt`` and
    ``OUT/train_summary.json`` (rank 0).
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    resume = _resume_path(cfg, ckpt_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train_files, val_files = _split(cfg)
    dm = PseudoLabelDataModule(train_files, val_files, cfg.data, cfg.batch_size, cfg.num_workers)
    module = LabelFreeModule(
        cfg.net_config().to_dict(), dataclasses.asdict(cfg.optim), dataclasses.asdict(cfg.loss)
    )
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="epoch{epoch:03d}-step{step:07d}",
        auto_insert_metric_name=False,
        monitor="val/loss" if val_files else None,
        save_top_k=1,
        save_last=True,
        every_n_epochs=1,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logger=_loggers(out),
        callbacks=[checkpoint, timer, LearningRateMonitor(logging_interval="step"), *callbacks],
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=cfg.progress_bar,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_files else 0,
        default_root_dir=out,
    )
    t0 = time.perf_counter()
    # Our checkpoints hold only tensors and plain types: resume never unpickles arbitrary objects.
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    seconds = time.perf_counter() - t0
    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)  # full state, also when max_steps stopped mid-epoch
    steps = timer.times[2:] if len(timer.times) > 4 else timer.times
    summary = {
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "seconds": round(seconds, 2),
        "step_s_mean": float(np.mean(steps)) if steps else math.nan,
        "step_s_median": float(np.median(steps)) if steps else math.nan,
        "train_files": [str(f) for f in train_files],
        "val_files": [str(f) for f in val_files],
        "train_items": len(dm.train_set) if dm.train_set is not None else 0,
        "last_checkpoint": str(last),
        "best_checkpoint": checkpoint.best_model_path,
        "metrics": {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
        },
        "resumed_from": resume,
        "config": _jsonable(dataclasses.asdict(cfg)),
        "world_size": int(trainer.world_size),
        "global_rank": int(trainer.global_rank),
    }
    if trainer.is_global_zero:
        module.net.save(out / "model.pt", meta={k: summary[k] for k in ("global_step", "epoch", "metrics")})
        summary["model"] = str(out / "model.pt")
        (out / "train_summary.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _devices(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m reasoning_seg.net.train``."""
    p = argparse.ArgumentParser(
        prog="python -m reasoning_seg.net.train",
        description="Train the label-free 3D network (MLLM-For3D §3.2) on stored pseudo-labels.",
    )
    p.add_argument("--pseudo-labels", nargs="+", required=True, help="training .npz files or folders")
    p.add_argument("--val-pseudo-labels", nargs="*", default=[], help="held-out .npz files or folders")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this share of training scenes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=40, help="A.2: 40")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs only)")
    p.add_argument("--batch-size", type=int, default=8, help="total over all devices (A.2: 8 on ScanNet)")
    p.add_argument("--lr", type=float, default=0.1, help="A.2: 0.1 (0.01 on ScanNet++)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="poly")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="A.2: sgd")
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--lambda-spatial", type=float, default=1.0, help="weight of Eq. 2 in Eq. 3")
    p.add_argument("--no-align", action="store_true", help="drop Eq. 1 (Table 4 (b))")
    p.add_argument("--no-spatial", action="store_true", help="drop Eq. 2 (Table 4 (c))")
    p.add_argument(
        "--unweighted-align", action="store_true", help="plain mean in Eq. 1 (no attention weights)"
    )
    p.add_argument(
        "--balanced-align",
        action="store_true",
        help="class-balanced Eq. 1 per query (LossConfig.balance_alignment; default: the literal mean)",
    )
    p.add_argument("--with-gt", action="store_true", help='hybrid "w/ label" mode: add BCE on ground truth')
    p.add_argument("--lambda-gt", type=float, default=1.0)
    p.add_argument("--net", choices=sorted(UNET_PRESETS), default="minkunet14", help="U-Net preset")
    p.add_argument("--feature-dim", type=int, default=0, help="per-voxel feature dimension (0: preset's)")
    p.add_argument("--voxel-size", type=float, default=0.05, help="network voxel in metres (A.2: 0.05)")
    p.add_argument("--height", action="store_true", help="add the height channel to the voxel input")
    p.add_argument("--no-augment", action="store_true", help="no rotation / flips")
    p.add_argument("--no-dedupe", action="store_true", help="keep every point-view pair (no voxel merge)")
    p.add_argument("--include-not-found", action="store_true", help="also train on 'not found' queries")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    p.add_argument("--devices", default="auto", help="number of devices, list or auto")
    p.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="", help="checkpoint path, or 'last' (OUT/checkpoints/last.ckpt)")
    p.add_argument("--log-every", type=int, default=10, help="log every N steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / model summary")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed command-line arguments (ValueError on bad values)."""
    return TrainConfig(
        pseudo_labels=list(a.pseudo_labels),
        out=a.out,
        val_pseudo_labels=list(a.val_pseudo_labels),
        val_fraction=a.val_fraction,
        net=a.net,
        feature_dim=a.feature_dim,
        data=DataConfig(
            voxel_size=a.voxel_size,
            height=a.height,
            augment=not a.no_augment,
            dedupe_pairs=not a.no_dedupe,
            include_not_found=a.include_not_found,
            require_features=not a.no_spatial,
        ),
        optim=OptimConfig(
            lr=a.lr,
            momentum=a.momentum,
            weight_decay=a.weight_decay,
            schedule=a.schedule,
            poly_power=a.poly_power,
            optimizer=a.optimizer,
        ),
        loss=LossConfig(
            lambda_spatial=a.lambda_spatial,
            use_align=not a.no_align,
            use_spatial=not a.no_spatial,
            weight_alignment_pairs=not a.unweighted_align,
            balance_alignment=a.balanced_align,
            with_gt=a.with_gt,
            lambda_gt=a.lambda_gt,
        ),
        epochs=a.epochs,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        seed=a.seed,
        resume=a.resume,
        accelerator=a.accelerator,
        devices=_devices(a.devices),
        strategy=a.strategy,
        num_nodes=a.num_nodes,
        precision=a.precision,
        log_every_n_steps=a.log_every,
        progress_bar=not a.no_progress,
        threads=a.threads,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the run summary as JSON."""
    a = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(a)
        cfg.net_config()
        if a.no_align and a.no_spatial:
            raise ValueError("--no-align and --no-spatial together leave no label-free loss")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_training(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["global_rank"] != 0:  # DDP: every rank returns here; one report is enough
        return 0
    print(
        json.dumps(
            _jsonable(
                {
                    k: summary[k]
                    for k in (
                        "global_step",
                        "epoch",
                        "seconds",
                        "step_s_median",
                        "metrics",
                        "last_checkpoint",
                    )
                }
            ),
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
