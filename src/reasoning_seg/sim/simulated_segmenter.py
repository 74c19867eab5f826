"""SIMULATION of a LISA-style 2D reasoning-segmentation model, driven by ground truth.

No LISA/SAM/LLaVA weights can be downloaded where this package is developed and tested, so the
accuracy of everything downstream of the 2D model is measured against this stand-in. It knows the
synthetic scene (meshes + which object each scripted query refers to), renders the ground-truth
instance image at the view's pose, and answers with what LISA returns: mask logits, a SAM-style
confidence, a ``[SEG]`` embedding and answer text. In this form it is a *perfect oracle* (it never
hallucinates or confuses objects); the benchmark world adds LISA's failure modes on top.

It is never a model of the real world: on a real camera stream use a real backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from reasoning_seg.segmenter import ViewInput, ViewSegmentation
from reasoning_seg.sim.scene import SyntheticScene

_LOGIT = 8.0  # |logit| of a confident SAM mask pixel (sigmoid(8) ~ 0.9997)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".?!")


def instance_embedding(scene_key: str, instance_id: int, dim: int) -> np.ndarray:
    """Deterministic unit vector per (scene, object): the simulated ``[SEG]`` embedding.

    LISA's ``[SEG]`` embeddings for the same object agree across views and differ between objects;
    seeded random unit vectors in high dimension have exactly that property (near-orthogonal).
    """
    seed = int.from_bytes(hashlib.sha256(f"{scene_key}:{instance_id}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class SimulatedSegmenter:
    """Ground-truth oracle with LISA's output format (see module docstring: a simulation)."""

    def __init__(
        self, scene: SyntheticScene, embedding_dim: int = 256, min_visible_fraction: float = 1e-4
    ) -> None:
        self.scene = scene
        self.embedding_dim = embedding_dim
        # LISA misses objects covering only a handful of pixels; 1e-4 is ~30 px at 640x480.
        self.min_visible_fraction = min_visible_fraction
        self.name = "simulated-oracle"
        self._targets = {_normalise(q.text): q.target_instance_id for q in scene.queries}
        self._key = f"scene-{getattr(scene, 'seed', 0)}"

    def target_of(self, query: str) -> int | None:
        """Instance id the scripted query refers to (None: the simulated model does not understand it)."""
        return self._targets.get(_normalise(query))

    def segment(self, views: Sequence[ViewInput], query: str) -> list[ViewSegmentation]:
        """Render ground truth at each view's pose and segment the query's target."""
        target = self.target_of(query)
        out: list[ViewSegmentation] = []
        for v in views:
            _, _, instance = self.scene.render(v.intrinsics, v.T_world_cam)
            mask = (instance == target) if target is not None else np.zeros(instance.shape, dtype=bool)
            visible = int(mask.sum()) >= max(1, int(self.min_visible_fraction * mask.size))
            if not visible:
                mask[:] = False
            logits = np.where(mask, _LOGIT, -_LOGIT).astype(np.float32)
            emb = instance_embedding(
                self._key, target if (visible and target is not None) else 0, self.embedding_dim
            )
            answer = "Sure, it is [SEG]." if visible else "I cannot see it in this image."
            out.append(ViewSegmentation(logits, 0.95 if visible else 0.05, emb, answer))
        return out
