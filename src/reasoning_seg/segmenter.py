"""The contract between the pipeline and a frozen 2D reasoning-segmentation model (LISA-style).

LISA (LLaVA + SAM with a ``[SEG]`` token) returns, per image and query: SAM mask logits, SAM's IoU
prediction (the only calibrated-ish confidence it has), the hidden state of the ``[SEG]`` token
projected to SAM's prompt space, and the answer text. MLLM-For3D §3.1-3.2 uses all of them: masks
and confidences for fusion, the ``[SEG]`` embeddings for token attention and for the 3D network's
query, and SAM's image features for the spatial-consistency loss. Every backend (the real LISA
loader, the ground-truth-driven simulation of LISA and its failure modes) returns exactly this, so
fusion never knows which one ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from reasoning_seg.camera import CameraIntrinsics


@dataclass(frozen=True)
class ViewInput:
    """What a segmenter gets per view.

    Pose and depth are there for backends that need geometry (the simulation renders ground truth
    at the pose); a real MLLM only looks at ``color``.
    """

    keyframe_id: int
    color: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray


@dataclass
class ViewSegmentation:
    """One view's answer to the query."""

    mask_logits: np.ndarray  # (H, W) float32 at the input image's resolution; > 0 means target
    confidence: float  # SAM's predicted IoU of the mask, in [0, 1]
    seg_embedding: np.ndarray  # (D,) float32 projected [SEG] embedding
    answer: str = ""
    image_features: np.ndarray | None = None  # (C, h, w) SAM image-encoder features, when available

    @property
    def mask(self) -> np.ndarray:
        """Binary mask (logit > 0, i.e. probability > 0.5)."""
        return self.mask_logits > 0

    def validate(self, height: int, width: int, embedding_dim: int) -> None:
        """Raise ValueError if a backend returned something the fusion cannot use."""
        if self.mask_logits.shape != (height, width):
            raise ValueError(f"mask is {self.mask_logits.shape}, expected {(height, width)}")
        if self.seg_embedding.shape != (embedding_dim,):
            raise ValueError(f"[SEG] embedding is {self.seg_embedding.shape}, expected ({embedding_dim},)")
        if not np.isfinite(self.confidence) or not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is not in [0, 1]")
        if not np.all(np.isfinite(self.mask_logits)):
            raise ValueError("mask logits contain NaN/inf")


@runtime_checkable
class Segmenter(Protocol):
    """A frozen 2D reasoning-segmentation model."""

    name: str
    embedding_dim: int

    def segment(self, views: Sequence[ViewInput], query: str) -> list[ViewSegmentation]:
        """Answer ``query`` on each view (one result per view, in order)."""
        ...
