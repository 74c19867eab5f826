"""The label-free 3D network as one object: U-Net + query head + spatial projection (§3.2, §3.3).

:class:`LabelFree3DNet` is what training produces and what the node loads: the MinkowskiNet14-style
:class:`~reasoning_seg.net.unet.SparseUNet` over the voxelised map, the learned projection of the
unified ``[SEG]`` embedding (:class:`~reasoning_seg.net.unet.QueryHead`) and the projection of point
features into SAM's feature space (:class:`~reasoning_seg.net.unet.SpatialProjection`, used by
Eq. 2 during training only). Its :class:`NetConfig` travels inside every checkpoint, so a file is
loadable without knowing how it was trained.

Inference (§3.3): map points, centred on their centroid, are voxelised at ``voxel_size`` (5 cm,
Appendix A.2), each voxel's input is its points' mean colour, the U-Net gives per-voxel features,
and a point's probability is ``sigmoid(cosine_scale * cos(f_voxel, W h))`` of its voxel; points
above ``threshold`` are the target.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from reasoning_seg.net.atomic_file import write_atomically
from reasoning_seg.net.sparse_conv import SparseTensor
from reasoning_seg.net.unet import QueryHead, SparseUNet, SpatialProjection, UNetConfig

CHECKPOINT_FORMAT = "reasoning_seg.label_free_3d_net"
CHECKPOINT_VERSION = 1

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "UNET_PRESETS",
    "CheckpointError",
    "LabelFree3DNet",
    "NetConfig",
    "VoxelInput",
    "centred",
    "voxelise",
]

UNET_PRESETS: dict[str, UNetConfig] = {
    # Appendix A.3: MinkowskiNet14, 512-d features per voxel.
    "minkunet14": UNetConfig(),
    # A narrow U-Net of the same layout for CPU tests, smoke runs and quick ablations.
    "small": UNetConfig(out_channels=64, init_dim=16, planes=(16, 32, 64, 64, 64, 32, 32, 32), stem_kernel=3),
    "tiny": UNetConfig(out_channels=32, init_dim=8, planes=(8, 16, 16, 16, 16, 16, 16, 16), stem_kernel=3),
}
"""Named U-Net shapes (``--net`` of the trainer)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, truncated, foreign or mismatched)."""


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a :class:`LabelFree3DNet` (stored in its checkpoints).

    Attributes:
        unet: U-Net shape; ``in_channels`` picks the voxel input: 3 = mean RGB, 4 = mean RGB and
            the voxel's height above the lowest occupied voxel (:func:`voxelise`).
        embed_dim: dimension of the ``[SEG]`` embedding (LISA's 256).
        image_dim: dimension of the SAM image features Eq. 2 compares with (256).
        voxel_size: voxel edge in metres the network sees (A.2: 0.05 m).
        cosine_scale: inverse temperature of the §3.3 probability ``sigmoid(scale * cos)``.
        threshold: probability above which a point is the target (§3.3).
        query_bias: bias in the ``[SEG]`` projection (off: see ``QueryHead``).
        spatial_learned: learned map of point features into SAM space (off = identity; needs
            ``unet.out_channels == image_dim``).
        color_center: subtracted from colours in [0, 1] so inputs are centred.
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    embed_dim: int = 256
    image_dim: int = 256
    voxel_size: float = 0.05
    cosine_scale: float = 10.0
    threshold: float = 0.5
    query_bias: bool = False
    spatial_learned: bool = True
    color_center: float = 0.5

    def __post_init__(self) -> None:
        if self.unet.in_channels not in (3, 4):
            raise ValueError(
                f"unet.in_channels must be 3 (mean RGB) or 4 (mean RGB + height), got {self.unet.in_channels}"
            )
        if self.embed_dim < 1 or self.image_dim < 1:
            raise ValueError("embed_dim and image_dim must be >= 1")
        if not (self.voxel_size > 0 and np.isfinite(self.voxel_size)):
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples): what checkpoints and Lightning hyper-parameters store."""
        d = dataclasses.asdict(self)
        d["unet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["unet"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`; ValueError on unknown or malformed fields."""
        if not isinstance(d, dict) or not isinstance(d.get("unet", {}), dict):
            raise ValueError("a network config must be a mapping with a 'unet' mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unet_known = {f.name for f in dataclasses.fields(UNetConfig)}
        unknown = (set(d) - known) | {f"unet.{k}" for k in set(d.get("unet", {})) - unet_known}
        if unknown:
            raise ValueError(f"unknown network config fields {sorted(unknown)}")
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("unet", {}).items()}
        try:
            return cls(**{**d, "unet": UNetConfig(**unet)})
        except TypeError as exc:
            raise ValueError(f"malformed network config: {exc}") from exc

    @property
    def height_input(self) -> bool:
        """Whether the voxel input carries the height channel (``unet.in_channels == 4``)."""
        return self.unet.in_channels == 4


class VoxelInput(NamedTuple):
    """A voxelised point cloud.

    Attributes:
        coords: (V, 3) int64 voxel indices, shifted so the minimum is 0.
        feats: (V, 3) float32 mean colour of the voxel's points minus ``color_center``, or (V, 4)
            with the height channel.
        inverse: (N,) int64 voxel row of each input point.
    """

    coords: np.ndarray
    feats: np.ndarray
    inverse: np.ndarray

    def point_mean(self, values: np.ndarray) -> np.ndarray:
        """(V,) float64 mean of a per-point value over each voxel's points.

        Why: labels live on map points (fused probability, ground truth) and the network answers
        per voxel, so training targets and evaluation need the voxel's mean of them.
        """
        n = len(self.coords)
        counts = np.bincount(self.inverse, minlength=n)
        return np.bincount(self.inverse, weights=np.asarray(values, dtype=np.float64), minlength=n) / counts


def centred(points: np.ndarray) -> np.ndarray:
    """(N, 3) float64 points minus their centroid: the frame training voxelises (and augments) in.

    Training items and :meth:`LabelFree3DNet.predict` both voxelise centred points, so a scene
    seen at inference falls on exactly the voxel grid of an un-augmented training item.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p - p.mean(axis=0) if len(p) else p


HEIGHT_OFFSET = 1.0
"""Metres subtracted from the height channel so it is roughly centred (rooms are ~2-3 m high)."""


def voxelise(
    points: np.ndarray,
    colors: np.ndarray,
    voxel_size: float,
    color_center: float = 0.5,
    height: bool = False,
) -> VoxelInput:
    """Quantise points to a ``voxel_size`` grid, one row per occupied voxel (mean colour).

    The coordinates are shifted to start at 0; a translation by a multiple of the U-Net's coarsest
    stride changes nothing, any other translation only re-aligns the grid.

    With ``height`` a fourth channel holds the voxel's height above the lowest occupied voxel
    (metres, minus :data:`HEIGHT_OFFSET`): the geometry input the issue asks for next to colour.
    Why height: in a z-up map (REP-103) it separates floor, seat, table-top and shelf objects,
    and it is unchanged by the A.2 augmentations (rotation about z, flips of x and y), so the
    network does not have to infer it from occupancy through many convolutions.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    c = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    if len(p) != len(c):
        raise ValueError(f"{len(p)} points but {len(c)} colours")
    width = 4 if height else 3
    if len(p) == 0:
        return VoxelInput(np.zeros((0, 3), np.int64), np.zeros((0, width), np.float32), np.zeros(0, np.int64))
    if not np.all(np.isfinite(p)):
        raise ValueError("points contain NaN/inf")
    q = np.floor(p / voxel_size).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    if float(span[0]) * float(span[1]) * float(span[2]) >= 2.0**62:
        raise ValueError("point cloud too large for this voxel size")
    # One int64 key per voxel, ordered like (x, y, z): a 1-D unique is ~20x faster than unique(axis=0).
    keys, inverse = np.unique((q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2], return_inverse=True)
    inverse = inverse.reshape(-1)
    coords = np.stack([keys // (span[1] * span[2]), (keys // span[2]) % span[1], keys % span[2]], axis=1)
    counts = np.bincount(inverse, minlength=len(coords)).astype(np.float32)
    feats = np.stack([np.bincount(inverse, weights=c[:, k], minlength=len(coords)) for k in range(3)], 1)
    feats = (feats / counts[:, None] - color_center).astype(np.float32)
    if height:
        z = coords[:, 2:3].astype(np.float32) * np.float32(voxel_size) - np.float32(HEIGHT_OFFSET)
        feats = np.concatenate([feats, z], axis=1)
    return VoxelInput(coords, feats, inverse.astype(np.int64))


class LabelFree3DNet(nn.Module):
    """SparseUNet + QueryHead + SpatialProjection, with voxelised inference and checkpoints.

    Args:
        config: network configuration (defaults: MinkowskiNet14, 512-d, 5 cm voxels).
    """

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        cfg = self.config
        self.backbone = SparseUNet(cfg.unet)
        self.query_head = QueryHead(cfg.embed_dim, cfg.unet.out_channels, cfg.query_bias, cfg.cosine_scale)
        self.spatial = SpatialProjection(cfg.unet.out_channels, cfg.image_dim, cfg.spatial_learned)
        self.checkpoint_meta: dict[str, Any] = {}  # what :meth:`load` read besides the weights

    @property
    def feature_dim(self) -> int:
        """Per-voxel feature dimension D."""
        return self.config.unet.out_channels

    def forward(self, x: SparseTensor) -> Tensor:
        """(N, D) per-voxel features of a (batched) voxel tensor."""
        return self.backbone(x).feats

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    @torch.no_grad()
    def voxel_probabilities(self, vox: VoxelInput, seg_embedding: np.ndarray | Tensor) -> Tensor:
        """(V,) §3.3 probabilities of the voxels of one scene."""
        dev = self.device
        coords = torch.as_tensor(vox.coords, dtype=torch.int64, device=dev)
        coords = torch.cat([torch.zeros((len(coords), 1), dtype=torch.int64, device=dev), coords], 1)
        x = SparseTensor.from_coords(coords, torch.as_tensor(vox.feats, dtype=torch.float32, device=dev))
        emb = torch.as_tensor(np.asarray(seg_embedding, dtype=np.float32), device=dev).reshape(-1)
        if emb.shape[0] != self.config.embed_dim:
            raise ValueError(
                f"[SEG] embedding is {emb.shape[0]}-d, the network expects {self.config.embed_dim}"
            )
        return self.query_head.probabilities(self(x), emb)

    def predict(self, points: np.ndarray, colors: np.ndarray, seg_embedding: np.ndarray) -> np.ndarray:
        """Per-point probability of belonging to the queried object (§3.3).

        Args:
            points: (N, 3) map points in metres (z up, as the map).
            colors: (N, 3) colours in [0, 1].
            seg_embedding: (E,) unified ``[SEG]`` embedding of the query (fusion's token attention).

        Returns:
            (N,) float32 probabilities; a point gets its voxel's value. Threshold with
            ``config.threshold`` (:meth:`predict_mask`).
        """
        if len(np.asarray(points).reshape(-1, 3)) == 0:
            return np.zeros(0, np.float32)
        was_training = self.training
        self.eval()
        try:
            c = self.config
            vox = voxelise(centred(points), colors, c.voxel_size, c.color_center, c.height_input)
            prob = self.voxel_probabilities(vox, seg_embedding)
        finally:
            self.train(was_training)
        return prob.float().cpu().numpy()[vox.inverse].astype(np.float32)

    def predict_mask(self, points: np.ndarray, colors: np.ndarray, seg_embedding: np.ndarray) -> np.ndarray:
        """(N,) bool: points whose probability exceeds ``config.threshold`` (§3.3)."""
        return self.predict(points, colors, seg_embedding) > self.config.threshold

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write weights + config (+ optional JSON-like ``meta``) atomically; returns the path.

        The file loads with ``torch.load(weights_only=True)``: only tensors and plain Python types.
        """
        path = Path(path)
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "meta": dict(meta or {}),
        }
        return write_atomically(path, lambda fh: torch.save(state, fh))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> LabelFree3DNet:
        """Read a checkpoint written by :meth:`save` (or a Lightning ``.ckpt`` of the trainer).

        Raises:
            FileNotFoundError: no such file.
            CheckpointError: unreadable (corrupt/truncated), foreign, another version, or weights
                that do not fit the stored config.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch.load raises many types (pickle, zip, EOF, runtime) for bad files
            raise CheckpointError(
                f"{path}: not a readable checkpoint (corrupt or truncated?): {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        if state.get("format") != CHECKPOINT_FORMAT and "hyper_parameters" in state:
            state = _from_lightning(state, path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {state.get('version')} is not the supported {CHECKPOINT_VERSION}"
            )
        try:
            config = NetConfig.from_dict(state["config"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad network config: {exc}") from exc
        net = cls(config)
        try:
            net.load_state_dict(state["state_dict"], strict=True)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: weights do not match the stored config: {exc}") from exc
        net.checkpoint_meta = dict(state.get("meta") or {})
        return net.to(map_location).eval()


def _from_lightning(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A trainer ``.ckpt`` (``train.LabelFreeModule``) as a :meth:`LabelFree3DNet.save` dict."""
    hp = state.get("hyper_parameters") or {}
    if not isinstance(hp, dict) or "net" not in hp or "state_dict" not in state:
        raise CheckpointError(f"{path}: a Lightning checkpoint, but not of the label-free 3D network trainer")
    prefix = "net."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": hp["net"],
        "state_dict": weights,
        "meta": {"epoch": state.get("epoch"), "global_step": state.get("global_step"), "source": "lightning"},
    }
