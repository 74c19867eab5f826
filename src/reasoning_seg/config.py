"""Typed configuration of the whole pipeline, loaded from the same YAML file the ROS node uses.

Every knob is a dataclass field whose metadata carries its description and valid range. The ROS
layer declares one parameter per field from this metadata (names ``section.field``), so the
documentation, the range checks and the defaults cannot drift between the notebook API and the node.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def knob(
    default: Any,
    description: str,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its documentation and valid range (used for ROS parameter descriptors)."""
    return field(
        default=default, metadata={"description": description, "range": (lo, hi), "choices": choices}
    )


@dataclass
class MapConfig:
    """TSDF voxel map: a sparse grid of 8^3-voxel blocks (Open3D VoxelBlockGrid or the torch equivalent)."""

    voxel_size: float = knob(0.02, "Voxel edge length in metres.", 0.005, 0.5)
    trunc_voxels: float = knob(4.0, "TSDF truncation distance in voxels.", 1.0, 20.0)
    depth_min: float = knob(0.2, "Depth readings nearer than this (m) are ignored.", 0.0, 10.0)
    depth_max: float = knob(5.0, "Depth readings beyond this (m) are ignored.", 0.1, 50.0)
    min_weight: float = knob(
        0.5, "Minimum TSDF weight (observations) for a voxel to count as surface.", 0.0, 1000.0
    )
    block_count: int = knob(
        10000,
        "Initial capacity in voxel blocks (512 voxels, about 10 KB each); grows by doubling as needed.",
        100,
        10_000_000,
    )
    max_blocks: int = knob(
        100000,
        "Block budget: above it the blocks farthest from the camera are dropped (down to 90%), so an "
        "endless stream stays bounded; 0 = unlimited.",
        0,
        100_000_000,
    )
    keep_radius: float = knob(
        0.0,
        "Blocks farther than this (m) from the camera are dropped (checked every 10 integrated frames); "
        "0 = keep everything.",
        0.0,
        10000.0,
    )
    prune_after: int = knob(
        0,
        "Noise pruning: a block whose voxels all still weigh less than prune_min_weight this many "
        "integrated frames after it appeared is dropped (depth outliers no later frame confirms); "
        "0 = off.",
        0,
        1_000_000,
    )
    prune_min_weight: float = knob(
        3.0, "Noise pruning: the largest voxel weight (observations) that confirms a block.", 0.0, 1000.0
    )
    integrate_every: int = knob(1, "Integrate every Nth valid frame (1 = all).", 1, 10000)
    max_rate_hz: float = knob(
        0.0, "Integrate at most this many frames per second of sensor time (0 = no limit).", 0.0, 1000.0
    )
    min_valid_depth_fraction: float = knob(
        0.05, "Frames with fewer valid depth pixels than this fraction are rejected.", 0.0, 1.0
    )
    max_extent: float = knob(
        1000.0,
        "Frames whose camera is farther than this (m) from the map origin are rejected "
        "(dropped.pose_out_of_bounds): a building-sized workspace; raise it for outdoor maps.",
        1.0,
        40000.0,
    )
    max_speed: float = knob(
        10.0,
        "Frames whose camera moved faster than this (m/s of sensor time, at least 0.5 m) since the "
        "last accepted frame are rejected (dropped.pose_jump) until pose_jump_confirm frames in a "
        "row agree on the new place (a relocalisation); garbage poses never agree.",
        0.1,
        1000.0,
    )
    pose_jump_confirm: int = knob(
        3, "Consecutive mutually consistent frames that make a pose jump accepted.", 1, 1000
    )
    max_image_pixels: int = knob(
        2_400_000,
        "Frames with more pixels than this are rejected (dropped.image_too_large): keyframes keep "
        "full images (1920x1200 fits).",
        1,
        100_000_000,
    )
    backend: str = knob(
        "auto",
        "open3d: Open3D VoxelBlockGrid; torch: the PyTorch block grid (runs on CUDA without Open3D); "
        "triton: the torch grid with fused Triton integration (CUDA); auto: triton on a CUDA device "
        "when Triton is importable, else open3d when it can be imported, else torch.",
        choices=("auto", "open3d", "torch", "triton"),
    )
    device: str = knob(
        "CPU:0",
        "Device for integration: CPU:0 or CUDA:0 (the torch and triton backends also accept cpu, cuda:0).",
    )


@dataclass
class KeyframeConfig:
    """Window of keyframes the query chooses its views from, chosen by motion and novelty."""

    window_size: int = knob(
        30, "Maximum number of keyframes kept; when full, one is dropped (see keyframes.eviction).", 1, 1000
    )
    min_translation: float = knob(0.15, "New keyframe when the camera moved this far (m) ...", 0.0, 100.0)
    min_rotation_deg: float = knob(
        15.0, "... or turned this much (degrees) since the last keyframe.", 0.0, 180.0
    )
    max_interval: float = knob(5.0, "... or this many seconds passed (0 disables).", 0.0, 3600.0)
    min_novelty: float = knob(
        0.1,
        "Once the window is full, a candidate must also show at least this fraction of surface cells "
        "that no kept keyframe observed.",
        0.0,
        1.0,
    )
    eviction: str = knob(
        "redundancy",
        "redundancy: a full window drops the keyframe observing the fewest cells no other keyframe "
        "observes (keeps the early views of a loop); oldest: first in, first out.",
        choices=("redundancy", "oldest"),
    )
    observation_cell: float = knob(
        0.05,
        "Cell size (m) of the index of which keyframe observed which surface (novelty, redundancy, "
        "observers of a point).",
        0.005,
        1.0,
    )


@dataclass
class ViewSelectionConfig:
    """Choosing the views the 2D model runs on (REALM global stage, adapted to a keyframe window)."""

    num_views: int = knob(
        4, "Global views per query (MLLM-For3D Table 4: 4 was best for LISA; see the fusion ablation).", 1, 64
    )
    strategy: str = knob(
        "diverse_coverage",
        "random | diverse | diverse_coverage (k-means over poses, "
        "then the view seeing most map voxels in each cluster).",
        choices=("random", "diverse", "diverse_coverage"),
    )
    max_points: int = knob(
        20000, "Map points sampled to score coverage (bounds cost on large maps).", 100, 10_000_000
    )
    local_views: int = knob(
        2,
        "REALM local stage: after fusing the global views, this many extra close-up keyframes of the "
        "candidate target are segmented and everything is fused again (0 disables; see "
        "bench/results/fusion_ablation.md).",
        0,
        32,
    )
    seed: int = knob(0, "Seed for random selection and k-means initialisation.", 0, 2**31 - 1)


@dataclass
class FusionConfig:
    """Lifting per-view masks onto the map."""

    method: str = knob(
        "token_attention",
        "naive: unweighted average of visible views' binary masks (MLLM-For3D Table 4 (a)); "
        "filtered: view filtering + visibility voting, equal weights (ablation); "
        "token_attention: filtering + [SEG] token attention weights + not-found checks (MLLM-For3D 3.1); "
        "majority_vote: views vote for an instance hypothesis, the winner is kept (REALM GLSpaG-Global).",
        choices=("naive", "filtered", "token_attention", "majority_vote"),
    )
    device: str = knob(
        "auto",
        "Where view selection and fusion run: numpy (CPU) | auto (CUDA when available, else numpy) | "
        "cuda | cuda:N. Same results on every device (bench/results/query.md).",
    )
    visibility_tolerance: float = knob(
        0.05,
        "A map point is visible in a view when its depth is within this (m) of the view's depth.",
        0.001,
        1.0,
    )
    min_confidence: float = knob(
        0.3,
        "Views whose mask confidence (SAM's predicted IoU) is below this give no votes (all methods).",
        0.0,
        1.0,
    )
    min_mask_pixels: int = knob(
        5,
        "Views whose mask has fewer pixels than this give no votes (all methods); keep it below a small "
        "object's footprint at the camera's resolution (a mug is ~15 px at 160x120).",
        0,
        10_000_000,
    )
    mask_mode: str = knob(
        "probability",
        "Vote value of a visible point: probability = sigmoid(mask logit), binary = 1 inside / 0 outside "
        "(naive always uses binary).",
        choices=("probability", "binary"),
    )
    attention_rounds: int = knob(
        3,
        "Rounds of the unified-embedding <-> token-attention fixed point, starting from the "
        "confidence-weighted mean [SEG] embedding; more rounds suppress a dissenting minority harder.",
        1,
        100,
    )
    min_agreement: float = knob(
        0.5,
        "token_attention/majority_vote: 'not found' when the attention-weighted cosine between the views' "
        "[SEG] embeddings and the unified embedding is below this (K views on K different objects "
        "score about 1/sqrt(K): 0.58 for 3, 0.5 for 4; a consensus with a dissenting minority > 0.9).",
        0.0,
        1.0,
    )
    min_support: float = knob(
        0.5,
        "Points whose in-mask attention mass, in units of one view's equal share, is below this get "
        "probability 0 (a region only distrusted views mark is dropped); 'not found' if no point "
        "reaches it. Not used by naive.",
        0.0,
        1000.0,
    )
    hypothesis_radius: float = knob(
        0.06,
        "majority_vote: masked map points closer than this (m) join one instance hypothesis "
        "(use about 1.5x the map voxel size).",
        0.001,
        1.0,
    )


@dataclass
class QueryConfig:
    """Turning the fused probability into the published target."""

    score_threshold: float = knob(
        0.5, "Points with fused probability >= this belong to the target.", 0.0, 1.0
    )
    min_points: int = knob(20, "Fewer target points than this means 'not found'.", 1, 10_000_000)
    max_query_chars: int = knob(2000, "Longer queries are rejected with an error.", 1, 1_000_000)
    cluster_radius: float = knob(
        0.0, "If > 0, keep only the largest cluster of target points (DBSCAN eps in m).", 0.0, 1.0
    )


@dataclass
class SegmenterConfig:
    """The frozen 2D reasoning-segmentation model."""

    backend: str = knob(
        "simulated",
        "simulated (ground-truth driven SIMULATION of an MLLM; needs segmenter.scene) or lisa (a published "
        "LISA checkpoint folder in segmenter.lisa_path; needs torch and transformers).",
        choices=("simulated", "lisa"),
    )
    scene: str = knob("", "For the simulated backend: directory of the synthetic scene (scene.json).")
    embedding_dim: int = knob(256, "Dimension of the projected [SEG] embedding.", 1, 65536)
    sim_profile: str = knob(
        "lisa7b",
        "For the simulated backend: failure profile of the SIMULATED model (oracle: ground truth; "
        "lisa7b / lisa13b: hallucinations, confusions, misses, boundary errors at assumed LISA-like rates).",
        choices=("oracle", "lisa7b", "lisa13b"),
    )
    sim_seed: int = knob(0, "For the simulated backend: seed of the simulated model's errors.", 0, 2**31 - 1)
    sim_instance_weight: float = knob(
        0.0,
        "For the simulated backend: weight of a view-invariant per-object part of the SIMULATED [SEG] "
        "embedding against its category (0.5) and colour (0.35) parts. An assumption, not a measurement "
        "of LISA; 0: the embedding says only what the object is (0.8, the earlier model: 63% of it).",
        0.0,
        10.0,
    )
    lisa_path: str = knob(
        "", "For lisa: checkpoint folder (config.json, tokenizer, weight shards), e.g. LISA-7B-v1."
    )
    lisa_vision_tower: str = knob(
        "",
        "For lisa: local CLIP vision-tower folder (openai/clip-vit-large-patch14); empty: the config's "
        "vision_tower if that is a local folder.",
    )
    lisa_device: str = knob(
        "auto", "For lisa: torch device of CLIP + LLM (auto: cuda if available, else cpu)."
    )
    lisa_sam_device: str = knob(
        "", "For lisa: torch device of SAM (empty: same as lisa_device), e.g. cuda:1."
    )
    lisa_dtype: str = knob(
        "auto",
        "For lisa: weights precision (auto: bf16 on CUDA, fp32 on CPU).",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    lisa_max_new_tokens: int = knob(32, "For lisa: most tokens generated per answer.", 1, 2048)
    lisa_question_template: str = knob(
        "{query} Please output segmentation mask.",
        "For lisa: how the query is asked ({query} is replaced), in the form LISA was trained on.",
    )
    lisa_max_batch: int = knob(4, "For lisa: most views per forward pass (bounds GPU memory).", 1, 64)
    lisa_stop_at_seg: bool = knob(
        True,
        "For lisa: stop decoding a view at its first [SEG] (the mask needs nothing after it; the "
        "answer text then ends there). false: decode to EOS or lisa_max_new_tokens.",
    )
    lisa_confidence: str = knob(
        "sam_iou",
        "For lisa: view confidence (fusion.min_confidence filters on it): sam_iou (SAM's IoU head), "
        "seg_prob (probability of the [SEG] token), mask_margin (foreground logit margin).",
        choices=("sam_iou", "seg_prob", "mask_margin"),
    )


@dataclass
class Net3DConfig:
    """The label-free 3D network at query time (MLLM-For3D §3.3); fusion answers until one is set."""

    checkpoint: str = knob(
        "",
        "Trained 3D-network file (model.pt or a trainer .ckpt of python -m reasoning_seg.net.train). "
        "When set, a query whose fusion found a target is answered by the network from the fused "
        "[SEG] embedding; empty, unloadable, or no unified embedding: fusion answers (the result says why).",
    )
    threshold: float = knob(
        0.5, "Points whose 3D-net probability sigmoid(scale * cosine) is >= this are the target.", 0.01, 0.99
    )
    device: str = knob(
        "cpu", "Torch device of the 3D network: cpu, cuda, cuda:1, or auto (cuda if available)."
    )
    backend: str = knob(
        "auto",
        "Sparse-convolution arithmetic of the 3D network: torch (pure PyTorch, the reference, any device), "
        "triton (one fused gather-GEMM kernel per convolution, CUDA), spconv (spconv-triton's CUDA "
        "kernels; minutes of autotuning on first use), auto: triton on CUDA, else torch (measured the "
        "fastest forward and training step, bench/results/net.md). Same weights and results either way.",
        choices=("auto", "torch", "triton", "spconv"),
    )
    min_points: int = knob(20, "Fewer 3D-net target points than this means 'not found'.", 1, 10_000_000)


@dataclass
class PipelineConfig:
    """Everything the ROS-free core needs."""

    map: MapConfig = field(default_factory=MapConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    views: ViewSelectionConfig = field(default_factory=ViewSelectionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    net: Net3DConfig = field(default_factory=Net3DConfig)

    # ---- flattening (ROS parameters are flat dotted names) ----
    def flat(self) -> dict[str, Any]:
        """``{"map.voxel_size": 0.02, ...}`` for every knob."""
        return {name: value for name, value, _ in iter_knobs(self)}

    def update(self, values: dict[str, Any]) -> None:
        """Set knobs from dotted names, validating type and range; unknown names raise."""
        known = {name: meta for name, _, meta in iter_knobs(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown parameter '{name}'")
            section, key = name.split(".", 1)
            obj = getattr(self, section)
            current = getattr(obj, key)
            setattr(obj, key, _coerce(name, value, current, known[name]))

    @classmethod
    def from_yaml(cls, path: str | Path, node_name: str | None = None) -> PipelineConfig:
        """Load a ROS params file (``node: {ros__parameters: {...}}``) or a plain nested mapping."""
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        params = _flatten(_find_ros_parameters(data, node_name))
        cfg = cls()
        sections = {f.name for f in dataclasses.fields(cfg)}
        # Node-level parameters (topics, frames, rates) live in the same file; the core takes its own.
        cfg.update({k: v for k, v in params.items() if k.split(".", 1)[0] in sections})
        return cfg


def iter_knobs(cfg: PipelineConfig):
    """Yield ``(dotted_name, value, metadata)`` for every knob of a config."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            yield f"{section.name}.{f.name}", getattr(sub, f.name), f.metadata


def _coerce(name: str, value: Any, current: Any, meta: dict[str, Any]) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true/false, got {value!r}")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
    elif isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name}: must be finite, got {value!r}")
    elif isinstance(current, str) and not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    lo, hi = meta.get("range", (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{name}: {value} is outside [{lo}, {hi}]")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{name}: '{value}' is not one of {', '.join(choices)}")
    return value


def _find_ros_parameters(data: dict[str, Any], node_name: str | None) -> dict[str, Any]:
    for key, val in data.items():
        if isinstance(val, dict) and "ros__parameters" in val:
            if (
                node_name is None
                or key in (node_name, "/**", f"/{node_name}")
                or key.endswith(f"/{node_name}")
            ):
                return val["ros__parameters"] or {}
    return data


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in d.items():
        name = f"{prefix}{key}"
        if isinstance(val, dict):
            out.update(_flatten(val, name + "."))
        else:
            out[name] = val
    return out
