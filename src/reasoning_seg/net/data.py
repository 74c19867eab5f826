"""Training data from stored pseudo-labels: one item = one scene + one query (§3.2, Appendix A.2).

An item carries what the losses need, at the network's voxel resolution:

- the voxelised map (``voxel_size``, 5 cm by default as in A.2): integer coordinates and the mean
  colour of each voxel (the U-Net input), plus the voxel of every map point (``inverse``);
- the query's point-view pairs (Eq. 1/2): the map point of each stored pair is replaced by its
  voxel, so pairs follow any augmentation for free (they index points, and the points' voxels are
  recomputed after the transform). With ``dedupe_pairs`` the pairs of one voxel in one view are
  merged (mean mask probability, mean SAM feature): a 5 cm voxel covers several 2 cm map points that
  all saw the same few pixels, and the merged pair is the same evidence at a fraction of the cost;
- the unified ``[SEG]`` embedding (the query token), each pair's weight (its view's fusion weight:
  token attention; views fusion dropped get 0 and are left out), the fusion pseudo-label and, for
  the hybrid "w/ label" mode and evaluation only, the SIMULATION's ground-truth mask per voxel.

Augmentations (A.2: "random rotation around the upright axis, random flips on point clouds"): a
uniform rotation about z (the map's up axis, REP-103) and independent mirror flips of x and y,
about the scene's centroid, applied to the point coordinates before voxelisation.

:func:`collate` batches items into one sparse batch (``batch, x, y, z`` coordinates) with the pairs
re-indexed into the batch's rows, as :class:`reasoning_seg.net.losses.PointViewPairs` expects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from reasoning_seg.net.model import centred, voxelise
from reasoning_seg.net.pseudo_labels import ScenePseudoLabels, load_scene_labels, read_meta

__all__ = ["DataConfig", "PseudoLabelDataset", "augmentation_matrix", "collate", "find_label_files"]

_MAX_LOGIT = 13.8  # |logit| of probability 1e-6: merged probabilities are clipped there


@dataclass(frozen=True)
class DataConfig:
    """How pseudo-labels become training items.

    Attributes:
        voxel_size: network voxel edge in metres (A.2: 0.05).
        augment: apply the A.2 augmentations (training split only).
        rotate: random rotation about the up (z) axis.
        flip: random mirror flips of x and of y (each with probability 0.5).
        dedupe_pairs: merge the pairs of one voxel in one view (see the module docstring).
        min_view_weight: views whose fusion weight is at most this give no pairs (0: drop only the
            views fusion filtered out).
        include_not_found: also train on queries fusion answered "not found" (their views teach
            "nothing here"; off by default, since fusion judged those views unreliable).
        require_features: refuse files without SAM features (needed by Eq. 2).
        attach_gt: attach SIMULATION ground-truth masks per voxel (for evaluation, and for training
            only in the hybrid "w/ label" mode).
        color_center: subtracted from colours in [0, 1].
        height: add the height channel to the voxel input (``reasoning_seg.net.model.voxelise``);
            must match the network's ``unet.in_channels`` (4 with height).
        scene_cache: decoded scene files kept per worker.
    """

    voxel_size: float = 0.05
    augment: bool = True
    rotate: bool = True
    flip: bool = True
    dedupe_pairs: bool = True
    min_view_weight: float = 0.0
    include_not_found: bool = False
    require_features: bool = True
    attach_gt: bool = True
    color_center: float = 0.5
    height: bool = False
    scene_cache: int = 2

    def __post_init__(self) -> None:
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if self.scene_cache < 1:
            raise ValueError("scene_cache must be >= 1")


def find_label_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Pseudo-label files: each path is a ``.npz`` file or a folder searched (non-recursively) for them.

    Raises:
        FileNotFoundError: a path does not exist or a folder holds no ``.npz`` file.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise FileNotFoundError(f"no pseudo-label files (*.npz) in {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"pseudo-label path {p} does not exist")
    return out


def augmentation_matrix(rng: np.random.Generator, rotate: bool = True, flip: bool = True) -> np.ndarray:
    """(3, 3) random transform of A.2: mirror flips of x / y (p = 0.5 each), then a yaw in [0, 2 pi)."""
    m = np.eye(3)
    if flip:
        m = np.diag([-1.0 if rng.random() < 0.5 else 1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
    if rotate:
        a = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.cos(a), np.sin(a)
        m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


class PseudoLabelDataset(Dataset):
    """Items (scene, query) over pseudo-label files written by ``pseudo_labels.save_scene_labels``.

    Only the metadata is read at construction (to list the usable queries); scenes are decoded on
    first use and kept in a small per-worker cache, so items of one scene are cheap in sequence.

    Args:
        files: pseudo-label ``.npz`` files.
        config: item construction options.
        augment: override ``config.augment`` (validation sets pass False).

    Raises:
        PseudoLabelError: a file is corrupt or foreign.
        ValueError: no usable query, or features missing while ``require_features``.
    """

    def __init__(
        self, files: Sequence[str | Path], config: DataConfig | None = None, augment: bool | None = None
    ):
        self.config = config or DataConfig()
        self.augment = self.config.augment if augment is None else bool(augment)
        self.files = [Path(f) for f in files]
        self.items: list[tuple[int, int]] = []
        for fi, f in enumerate(self.files):
            meta = read_meta(f)
            for qi, q in enumerate(meta.get("queries", [])):
                if q.get("unified_source") == "none":
                    continue
                if q.get("not_found_reason") and not self.config.include_not_found:
                    continue
                self.items.append((fi, qi))
        if not self.items:
            raise ValueError(f"no usable queries in {len(self.files)} pseudo-label file(s)")
        self._cache: OrderedDict[int, ScenePseudoLabels] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def scene(self, file_index: int) -> ScenePseudoLabels:
        """The decoded scene of ``files[file_index]`` (cached)."""
        hit = self._cache.get(file_index)
        if hit is not None:
            self._cache.move_to_end(file_index)
            return hit
        scene = load_scene_labels(self.files[file_index])
        if self.config.require_features and not scene.has_features:
            raise ValueError(
                f"{self.files[file_index]} has no SAM image features: train without the spatial loss "
                "(--no-spatial) or regenerate with a segmenter that returns them"
            )
        self._cache[file_index] = scene
        while len(self._cache) > self.config.scene_cache:
            self._cache.popitem(last=False)
        return scene

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One augmented item (random transform from torch's RNG, so ``seed_everything`` fixes it)."""
        transform = None
        if self.augment:
            seed = int(torch.randint(0, 2**62, ()))
            transform = augmentation_matrix(np.random.default_rng(seed), self.config.rotate, self.config.flip)
        return self.item(index, transform)

    def item(self, index: int, transform: np.ndarray | None = None) -> dict[str, Any]:
        """Item ``index`` with an explicit (3, 3) point transform about the centroid (None: identity).

        Returns a dict of numpy arrays: ``coords`` (V, 3) int64, ``feats`` (V, 3) float32,
        ``inverse`` (N,) int64 map point -> voxel, ``pair_point`` (M,) int64 voxel row,
        ``pair_view`` (M,) int64, ``pair_logit`` (M,) float32, ``pair_weight`` (M,) float32,
        ``pair_feat`` (M, C) float32 or None, ``embedding`` (E,) float32, ``fused`` (V,) float32
        voxel mean of the fusion pseudo-label, ``gt`` (V,) float32 fraction of the voxel's points on
        the true target (None when unknown or ``attach_gt`` is off), ``transform`` (3, 3), ``scene``,
        ``query`` and ``key`` (file index, query index).
        """
        cfg = self.config
        fi, qi = self.items[index]
        scene = self.scene(fi)
        q = scene.queries[qi]
        m = np.eye(3) if transform is None else np.asarray(transform, dtype=np.float64)
        pts = centred(scene.points)
        if transform is not None:
            pts = pts @ m.T
        vox = voxelise(pts, scene.colors, cfg.voxel_size, cfg.color_center, cfg.height)

        pairs = scene.pairs(q)
        keep = pairs["weight"] > cfg.min_view_weight
        point = vox.inverse[pairs["point"][keep]]
        view = pairs["view"][keep]
        logit = pairs["logit"][keep]
        weight = pairs["weight"][keep]
        feat_row = pairs["feat_row"][keep]
        feats = scene.feats if scene.has_features else None
        if cfg.dedupe_pairs and point.size:
            point, view, logit, weight, feat = _merge_pairs(
                point, view, logit, weight, feat_row, feats, len(q.view_keyframe)
            )
        else:
            feat = feats[feat_row].astype(np.float32) if feats is not None else None

        fused = vox.point_mean(q.probability)
        gt = None
        truth = scene.gt_mask(q) if cfg.attach_gt else None
        if truth is not None:
            gt = vox.point_mean(truth).astype(np.float32)
        return {
            "coords": vox.coords,
            "feats": vox.feats,
            "inverse": vox.inverse,
            "pair_point": point.astype(np.int64),
            "pair_view": view.astype(np.int64),
            "pair_logit": logit.astype(np.float32),
            "pair_weight": weight.astype(np.float32),
            "pair_feat": feat,
            "embedding": q.unified.astype(np.float32),
            "fused": fused.astype(np.float32),
            "gt": gt,
            "transform": m,
            "scene": scene.name,
            "query": q.text,
            "key": (fi, qi),
        }


def _merge_pairs(
    point: np.ndarray,
    view: np.ndarray,
    logit: np.ndarray,
    weight: np.ndarray,
    feat_row: np.ndarray,
    feats: np.ndarray | None,
    n_views: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One pair per (voxel, view): mean probability (back to a logit), the view's weight, mean feature.

    The pairs of a group see only a few SAM feature cells, so the mean feature is taken over the
    distinct (group, cell) combinations weighted by their counts, not over a copy per pair.
    """
    key = point * max(1, n_views) + view
    groups, group_of, counts = np.unique(key, return_inverse=True, return_counts=True)
    group_of = group_of.reshape(-1)
    prob = 1.0 / (1.0 + np.exp(-np.clip(logit.astype(np.float64), -60, 60)))
    mean_p = np.clip(np.bincount(group_of, weights=prob, minlength=len(groups)) / counts, 1e-6, 1 - 1e-6)
    merged_logit = np.clip(np.log(mean_p / (1 - mean_p)), -_MAX_LOGIT, _MAX_LOGIT)
    first = np.zeros(len(groups), dtype=np.int64)
    first[group_of[::-1]] = np.arange(len(key))[::-1]  # the first pair of every group
    merged_feat = None
    if feats is not None:
        n_rows = max(1, feats.shape[0])
        combo, combo_count = np.unique(group_of * n_rows + feat_row, return_counts=True)
        combo_group, combo_row = combo // n_rows, combo % n_rows
        weighted = torch.from_numpy(
            feats[combo_row].astype(np.float32) * combo_count[:, None].astype(np.float32)
        )
        summed = torch.zeros((len(groups), feats.shape[1])).index_add_(
            0, torch.from_numpy(combo_group), weighted
        )
        merged_feat = (summed.numpy() / counts[:, None]).astype(np.float32)
    return (
        groups // max(1, n_views),
        groups % max(1, n_views),
        merged_logit.astype(np.float32),
        weight[first],
        merged_feat,
    )


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: sites ``(batch, x, y, z)``, features, and pairs re-indexed into the batch's rows.

    Returns a dict of tensors (Lightning moves them to the device): ``coords`` (N, 4) int64,
    ``feats`` (N, 3), ``batch_index`` (N,), ``offsets`` (B + 1,) first row of each scene,
    ``embedding`` (B, E), ``pair_point`` (M,) rows of the batch, ``pair_logit``, ``pair_weight``
    (M,), ``pair_feat`` (M, C) or None, ``fused`` (N,), ``gt`` (N,) with NaN where unknown,
    ``inverse`` (list of (N_i,) point -> voxel row of scene i, not offset), ``scene``/``query``
    (lists of str).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    sizes = [len(s["coords"]) for s in samples]
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    coords = np.concatenate(
        [
            np.concatenate([np.full((n, 1), b, np.int64), s["coords"]], 1)
            for b, (s, n) in enumerate(zip(samples, sizes, strict=True))
        ]
    )
    has_feat = all(s["pair_feat"] is not None for s in samples)
    gt = [
        s["gt"] if s["gt"] is not None else np.full(n, np.nan, np.float32)
        for s, n in zip(samples, sizes, strict=True)
    ]
    return {
        "coords": torch.from_numpy(coords),
        "feats": torch.from_numpy(np.concatenate([s["feats"] for s in samples])),
        "batch_index": torch.from_numpy(coords[:, 0].copy()),
        "offsets": torch.from_numpy(offsets),
        "embedding": torch.from_numpy(np.stack([s["embedding"] for s in samples])),
        "pair_point": torch.from_numpy(
            np.concatenate([s["pair_point"] + offsets[b] for b, s in enumerate(samples)])
        ),
        "pair_logit": torch.from_numpy(np.concatenate([s["pair_logit"] for s in samples])),
        "pair_weight": torch.from_numpy(np.concatenate([s["pair_weight"] for s in samples])),
        "pair_feat": torch.from_numpy(np.concatenate([s["pair_feat"] for s in samples]))
        if has_feat
        else None,
        "fused": torch.from_numpy(np.concatenate([s["fused"] for s in samples])),
        "gt": torch.from_numpy(np.concatenate(gt).astype(np.float32)),
        "inverse": [torch.from_numpy(s["inverse"]) for s in samples],
        "scene": [s["scene"] for s in samples],
        "query": [s["query"] for s in samples],
    }
