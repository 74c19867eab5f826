"""The ablation's knobs: its scale presets and the Table-4 variants (see :mod:`.experiment`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasoning_seg.eval.benchmark import SceneSetSpec
from reasoning_seg.sim.simulated_segmenter import SEG_EMBEDDING_MIX

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
