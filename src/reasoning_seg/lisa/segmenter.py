"""The LISA backend of :class:`~reasoning_seg.segmenter.Segmenter`: several keyframes per call.

Views of one query share the prompt, so they are batched end to end: CLIP and the projector over all
views, the LLM prefill and greedy decoding as one batch (equal lengths, no padding), SAM's image
encoder and mask decoder over all views. ``max_batch`` bounds the views per forward for memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reasoning_seg.config import SegmenterConfig
from reasoning_seg.lisa.model import LisaModel, clip_preprocess, load_lisa_model
from reasoning_seg.lisa.prompt import DEFAULT_QUESTION_TEMPLATE, LisaTokenizer
from reasoning_seg.lisa.sam import SamImageTransform, postprocess_masks
from reasoning_seg.segmenter import ViewInput, ViewSegmentation

NO_SEG_LOGIT = -20.0  # mask logit everywhere when the model answered without [SEG] (sigmoid ~ 2e-9)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else CPU; anything else as given."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 on CUDA (LISA's own inference precision), fp32 on CPU; fp16/bf16 need CUDA."""
    if name in ("", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype '{name}' is not one of auto, {', '.join(_DTYPES)}")
    if name != "fp32" and device.type == "cpu":
        raise ValueError(f"dtype '{name}' is for CUDA devices; use fp32 on CPU")
    return _DTYPES[name]


@dataclass(frozen=True)
class LisaOptions:
    """How to load and run LISA (mirrors the ``segmenter.lisa_*`` parameters)."""

    path: str
    vision_tower: str = ""
    device: str = "auto"
    sam_device: str = ""
    dtype: str = "auto"
    max_new_tokens: int = 32
    question_template: str = DEFAULT_QUESTION_TEMPLATE
    max_batch: int = 4
    image_features: bool = True
    stop_at_seg: bool = True
    confidence: str = "sam_iou"


def preprocess_views(
    images: Sequence[np.ndarray], clip_size: int, sam_transform: SamImageTransform
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, tuple[int, int]]]]:
    """CLIP pixels (B, 3, S, S) and SAM inputs of every view, the views in parallel threads.

    PIL's resizes release the GIL; done one view after the other they were the largest CPU cost of
    a 4-view query on a GPU machine (about 35 ms per 640x480 view).
    """

    def one(img: np.ndarray):
        return clip_preprocess(img, clip_size), sam_transform(img)

    workers = min(len(images), os.cpu_count() or 1, 8)
    if workers <= 1:
        done = [one(img) for img in images]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(one, images))
    return torch.stack([c for c, _ in done]), [s for _, s in done]


#: View confidences the LISA backend can report (``segmenter.lisa_confidence``); see the README.
CONFIDENCES = ("sam_iou", "seg_prob", "mask_margin")


def view_confidence(kind: str, sam_iou: float, seg_prob: float, mask_logits: np.ndarray) -> float:
    """The view's confidence in [0, 1] by ``kind``.

    ``sam_iou``: SAM's predicted IoU for the [SEG]-prompted mask (LISA never trains that head for
    [SEG] prompts: a risk, kept as the default for continuity); ``seg_prob``: the language model's
    probability of [SEG] where it produced it (how sure it was there is a target); ``mask_margin``:
    how far the mask's foreground logits are from the decision boundary, 2 * mean(sigmoid) - 1 over
    the foreground (0 for an empty mask).
    """
    if kind == "sam_iou":
        return float(np.clip(sam_iou, 0.0, 1.0))
    if kind == "seg_prob":
        return float(np.clip(seg_prob, 0.0, 1.0))
    if kind == "mask_margin":
        fg = mask_logits[mask_logits > 0]
        if fg.size == 0:
            return 0.0
        return float(np.clip(2.0 * np.mean(1.0 / (1.0 + np.exp(-fg.astype(np.float64)))) - 1.0, 0.0, 1.0))
    raise ValueError(f"unknown LISA confidence {kind!r}; choose one of {CONFIDENCES}")


class LisaSegmenter:
    """Published LISA checkpoints as the pipeline's frozen 2D reasoning-segmentation model."""

    def __init__(
        self, model: LisaModel, tokenizer: LisaTokenizer, options: LisaOptions, name: str = "lisa"
    ) -> None:
        """Wrap a loaded model; use :meth:`load` to read one from disk."""
        if "{query}" not in options.question_template:
            raise ValueError("segmenter.lisa_question_template must contain '{query}'")
        if options.confidence not in CONFIDENCES:
            raise ValueError(
                f"segmenter.lisa_confidence must be one of {CONFIDENCES}, got {options.confidence!r}"
            )
        if len(tokenizer) > model.spec.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                f"{model.spec.vocab_size}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.name = name
        self.embedding_dim = model.spec.out_dim
        self.sam_transform = SamImageTransform(model.sam_arch.image_size)

    @classmethod
    def load(cls, options: LisaOptions) -> LisaSegmenter:
        """Load tokenizer and weights (strictly) onto the configured devices."""
        folder = Path(options.path)
        if not options.path or not folder.is_dir():
            raise FileNotFoundError(f"LISA checkpoint folder '{options.path}' does not exist")
        llm_device = resolve_device(options.device)
        sam_device = resolve_device(options.sam_device) if options.sam_device else llm_device
        dtype = resolve_dtype(options.dtype, llm_device)
        model = load_lisa_model(folder, options.vision_tower or None, llm_device, sam_device, dtype)
        tokenizer = LisaTokenizer(folder, model.spec.mm_use_im_start_end)
        return cls(model, tokenizer, options, name=f"lisa:{folder.name}")

    def segment(self, views: Sequence[ViewInput], query: str) -> list[ViewSegmentation]:
        """Answer ``query`` on each view; only the colour image is used."""
        return self.segment_images([v.color for v in views], query)

    def segment_images(self, images: Sequence[np.ndarray], query: str) -> list[ViewSegmentation]:
        """Answer ``query`` on RGB images (H, W, 3) uint8, batched ``max_batch`` at a time."""
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"view {i}: expected an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}"
                )
        prompt = self.tokenizer.encode_prompt(self.options.question_template.format(query=query))
        out: list[ViewSegmentation] = []
        step = max(1, self.options.max_batch)
        for start in range(0, len(images), step):
            out.extend(self._segment_batch(images[start : start + step], prompt))
        return out

    @torch.no_grad()
    def _segment_batch(self, images: Sequence[np.ndarray], prompt) -> list[ViewSegmentation]:
        m = self.model
        # 1. Language side: CLIP patch tokens → projector → spliced into the prompt → greedy answer.
        clip, sam_in = preprocess_views(images, m.clip_image_size, self.sam_transform)
        embeds = m.prompt_embeddings(prompt, m.image_tokens(clip))
        gen = m.generate(
            embeds,
            self.options.max_new_tokens,
            self.tokenizer.eos_token_id,
            self.tokenizer.seg_token_id,
            stop_at_seg=self.options.stop_at_seg,
        )
        seg = m.seg_embeddings(gen.seg_hidden)  # (B, out_dim): the [SEG] embedding fusion and the 3D net use
        # 2. SAM: image features once per view, prompted with that view's [SEG] embedding.
        pixels = torch.stack([p for p, _ in sam_in]).to(m.sam_device, m.dtype)
        features = m.sam.encode(pixels)
        low_res, iou = m.sam.decode(features, seg.to(m.sam_device, m.dtype))
        results = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            if gen.has_seg[i]:
                logits = postprocess_masks(low_res[i : i + 1], sam_in[i][1], (h, w), m.sam_arch.image_size)[0]
                mask_logits = logits.cpu().numpy().astype(np.float32)
                confidence = view_confidence(
                    self.options.confidence, float(iou[i].float()), gen.seg_prob[i], mask_logits
                )
                embedding = seg[i].float().cpu().numpy()
            else:  # the model answered without [SEG]: no mask, and nothing for token attention to weigh
                mask_logits = np.full((h, w), NO_SEG_LOGIT, np.float32)
                confidence = 0.0
                embedding = np.zeros(self.embedding_dim, np.float32)
            results.append(
                ViewSegmentation(
                    mask_logits=mask_logits,
                    confidence=confidence,
                    seg_embedding=embedding,
                    answer=self.tokenizer.decode(gen.tokens[i]),
                    image_features=features[i].float().cpu().numpy() if self.options.image_features else None,
                )
            )
        return results


def from_config(config: SegmenterConfig) -> LisaSegmenter:
    """``segmenter.backend: lisa`` (:mod:`reasoning_seg.backends`): the ``lisa_*`` fields."""
    if not config.lisa_path:
        raise ValueError("segmenter.backend 'lisa' needs segmenter.lisa_path (a LISA checkpoint folder)")
    seg = LisaSegmenter.load(
        LisaOptions(
            path=config.lisa_path,
            vision_tower=config.lisa_vision_tower,
            device=config.lisa_device,
            sam_device=config.lisa_sam_device,
            dtype=config.lisa_dtype,
            max_new_tokens=config.lisa_max_new_tokens,
            question_template=config.lisa_question_template,
            max_batch=config.lisa_max_batch,
            stop_at_seg=config.lisa_stop_at_seg,
            confidence=config.lisa_confidence,
        )
    )
    if seg.embedding_dim != config.embedding_dim:
        raise ValueError(
            f"the LISA checkpoint's [SEG] embedding is {seg.embedding_dim}-d but "
            f"segmenter.embedding_dim is {config.embedding_dim}; set it to {seg.embedding_dim}"
        )
    return seg
