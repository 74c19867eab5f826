"""LISA's SAM mask head on ``transformers``' ``SamModel``: architecture, strict weight mapping, prompting.

LISA (Lai et al. 2024) puts a frozen SAM ViT (Kirillov et al. 2023) behind the language model: the
hidden state of the ``[SEG]`` token, projected to SAM's 256-d prompt space, is fed to SAM's mask decoder
as the *only* sparse prompt token, with the "no mask" dense embedding, and the single-mask output is
kept. Published checkpoints store SAM under ``model.visual_model.`` with segment-anything's own
parameter names.

Why ``transformers``' ``SamModel`` instead of segment-anything: the ``segment_anything`` package
imports torchvision from its ``__init__``, and torchvision has no working CPU build in this
environment. ``SamModel`` computes the same functions (verified against the original modules in
``tests/test_lisa_sam.py``) once two details are set right here:

- its mask-decoder transformer LayerNorms take ``layer_norm_eps`` from the config (HF's default is
  1e-6) whereas SAM's ``TwoWayAttentionBlock`` uses ``nn.LayerNorm``'s default 1e-5, so
  :func:`sam_config` sets 1e-5;
- the prompt encoder's random-Fourier matrix exists twice in ``SamModel`` (``shared_image_embedding``
  and a tied alias ``prompt_encoder.shared_embedding``), so one LISA tensor fills both HF names.

The mapping between the two name spaces is explicit and strict in both directions: every SAM tensor of
a checkpoint must match exactly one rule and every expected tensor must be present with its shape, so a
renamed, missing or mis-shaped tensor is an error that names it, never a silently random weight.

Three modules: :mod:`.sam_arch` (ViT presets, ``SamConfig``, ``build_sam``), :mod:`.sam_keys` (the
name map, key checks, the architecture read off a checkpoint) and this one (image transform, mask
post-processing, :class:`LisaSamHead`), which re-exports the public names of the other two.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf

from reasoning_seg.lisa.sam_arch import (
    LISA_SAM_PREFIX,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SAM_VIT_B,
    SAM_VIT_H,
    SAM_VIT_L,
    SamArchitecture,
    SamCheckpointError,
    build_sam,
    sam_config,
)
from reasoning_seg.lisa.sam_keys import (
    _short,
    expected_lisa_sam_keys,
    hf_to_lisa_sam_state,
    infer_sam_architecture,
    lisa_to_hf_sam_state,
)

__all__ = [
    "LISA_SAM_PREFIX",
    "LisaSamHead",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SAM_VIT_B",
    "SAM_VIT_H",
    "SAM_VIT_L",
    "SamArchitecture",
    "SamCheckpointError",
    "SamImageTransform",
    "build_sam",
    "expected_lisa_sam_keys",
    "hf_to_lisa_sam_state",
    "infer_sam_architecture",
    "lisa_to_hf_sam_state",
    "postprocess_masks",
    "sam_config",
]


# ----------------------------------------------------------------------------------------- image side
class SamImageTransform:
    """SAM's input pipeline as LISA runs it (``ResizeLongestSide`` + ``Sam.preprocess``).

    1. Resize so the longer side is ``target_length``, the other ``int(side * scale + 0.5)``, with PIL's
       bilinear filter: segment-anything resizes a PIL image with torchvision's default interpolation,
       which for PIL inputs is ``Image.resize(..., BILINEAR)`` (antialiased when shrinking).
    2. Normalise with SAM's pixel mean/std (0..255 units), in float32.
    3. Zero-pad bottom/right to ``target_length`` square, *after* normalisation (so the padding is the
       mean colour, exactly as SAM was trained).
    """

    def __init__(
        self,
        target_length: int = 1024,
        pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = SAM_PIXEL_STD,
    ) -> None:
        self.target_length = int(target_length)
        self._mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    @staticmethod
    def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
        """(h, w) after scaling the longer side to ``long_side``, rounded half up as segment-anything does."""
        scale = long_side / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """Longest-side resize of an (H, W, 3) uint8 image (PIL bilinear); returns uint8."""
        h, w = self.preprocess_shape(rgb.shape[0], rgb.shape[1], self.target_length)
        img = Image.fromarray(np.ascontiguousarray(rgb))
        return np.array(img.resize((w, h), Image.Resampling.BILINEAR))  # a writable copy

    def __call__(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB → ((3, L, L) float32 network input, (h, w) of the resized image in it)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        resized = self.resize(rgb)
        h, w = resized.shape[:2]
        x = torch.from_numpy(resized).permute(2, 0, 1).to(torch.float32)
        x = (x - self._mean) / self._std
        x = nnf.pad(x, (0, self.target_length - w, 0, self.target_length - h))
        return x, (h, w)


def postprocess_masks(
    low_res: torch.Tensor,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
    image_size: int = 1024,
) -> torch.Tensor:
    """Low-res mask logits → logits at the original image size, as ``Sam.postprocess_masks``.

    Bilinear (``align_corners=False``) up to the padded ``image_size`` square, crop the resized image's
    ``(h, w)`` (dropping the padding), bilinear to the original ``(H, W)``. Runs in float32 like LISA
    (which calls ``.float()`` first), so bf16/fp16 logits are upsampled without extra rounding.

    Args:
        low_res: (B, 1, 256, 256) or (B, 256, 256) logits.
        resized_hw: (h, w) returned by :class:`SamImageTransform`.
        original_hw: (H, W) of the input image.
        image_size: SAM's input side (1024).

    Returns:
        (B, H, W) float32 logits (threshold at 0 for the mask).
    """
    x = low_res if low_res.ndim == 4 else low_res[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (B, 1, h, w) or (B, h, w) logits, got {tuple(low_res.shape)}")
    x = nnf.interpolate(x.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    x = nnf.interpolate(x, (int(original_hw[0]), int(original_hw[1])), mode="bilinear", align_corners=False)
    return x[:, 0]


# ----------------------------------------------------------------------------------------- the head
class LisaSamHead(nn.Module):
    """SAM as LISA uses it: image encoder once per view, mask decoder prompted by one ``[SEG]`` vector.

    Holds the ``transformers`` ``SamModel`` as ``self.sam`` (frozen, eval mode). Build it for an
    architecture (inside ``with torch.device("meta"):`` to allocate nothing), then fill it with
    :meth:`load_lisa_state` or by assigning :func:`lisa_to_hf_sam_state`'s tensors.

    Args:
        arch: the SAM architecture (see :func:`infer_sam_architecture`).
        device: where to build; ``None`` = ambient default device.
        dtype: parameter dtype; ``None`` = float32.
    """

    def __init__(
        self,
        arch: SamArchitecture,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.sam = build_sam(arch, device=device, dtype=dtype)
        self.requires_grad_(False)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        """Parameter (compute) dtype."""
        return self.sam.vision_encoder.patch_embed.projection.weight.dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.sam.vision_encoder.patch_embed.projection.weight.device

    def load_lisa_state(
        self, state: Mapping[str, torch.Tensor], prefix: str = LISA_SAM_PREFIX, *, assign: bool = False
    ) -> None:
        """Load the SAM tensors of a LISA state dict strictly (see :func:`lisa_to_hf_sam_state`).

        Tensors are cast to this head's dtype. ``assign=True`` puts them in place of the current
        parameters (needed when the head was built on ``meta``); they stay on their own device.
        """
        hf = lisa_to_hf_sam_state(state, prefix, arch=self.arch)
        cast: dict[int, torch.Tensor] = {}
        dtype = self.dtype
        hf = {k: cast.setdefault(id(v), v.to(dtype=dtype)) for k, v in hf.items()}
        self.sam.load_state_dict(hf, strict=True, assign=assign)
        self.restore_computed_buffers(self.device)

    def restore_computed_buffers(self, device: str | torch.device) -> None:
        """Finish a load done by assigning tensors one by one (e.g. onto a ``meta``-built head).

        ``SamModel`` has no computed (non-persistent) buffers today, so nothing is recomputed; this
        re-ties the prompt encoder's Fourier matrix to the image-wide one (so they cannot drift apart)
        and fails loudly if a future ``SamModel`` grows a buffer that was left on ``meta``.
        """
        del device  # kept for symmetry with the other loaders: nothing to create on it today
        shared = self.sam.shared_image_embedding.positional_embedding
        self.sam.prompt_encoder.shared_embedding.positional_embedding = shared
        meta = [n for n, b in self.sam.named_buffers() if b.is_meta]
        if meta:
            raise SamCheckpointError(
                f"SamModel buffers still on the meta device: {_short(meta)}", missing=meta
            )

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, L, L) normalised, padded images → (B, prompt_dim, L/16, L/16) image embeddings.

        Runs ``SamModel``'s encoder layers directly (no output-recording wrappers). In float16 the conv
        neck runs in float32 and is cast back, as LISA's image encoder does "to prevent overflow".
        """
        enc = self.sam.vision_encoder
        h = self._backbone(pixel_values)
        if h.dtype == torch.float16:
            params = {n: p.float() for n, p in enc.neck.named_parameters()}
            return torch.func.functional_call(enc.neck, params, (h.float(),)).to(torch.float16)
        return enc.neck(h)

    def _backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + ViT blocks: (B, 3, L, L) → (B, L/16, L/16, embed_dim) tokens, before the neck."""
        size = self.arch.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"expected (B, 3, {size}, {size}) pixels, got {tuple(pixel_values.shape)}")
        enc = self.sam.vision_encoder
        h = enc.patch_embed(pixel_values.to(device=self.device, dtype=self.dtype))
        if enc.pos_embed is not None:
            h = h + enc.pos_embed
        for layer in enc.layers:
            h = layer(h)
        return h

    def decode(
        self, image_embeddings: torch.Tensor, prompt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LISA's prompting of SAM's mask decoder, for B views each with its own ``[SEG]`` prompt.

        Per LISA (Lai et al. 2024, ``model_forward``/``evaluate``): the projected ``[SEG]`` embedding is
        the only sparse token (prompt encoder called with ``text_embeds`` and no points, boxes or
        masks), the dense embedding is ``no_mask_embed`` broadcast over the grid, the image positional
        encoding is the prompt encoder's dense PE, and ``multimask_output=False`` keeps mask token 0.
        Batched here as B images with a "point batch" of 1 each, which is the same computation as
        LISA's per-image loop.

        Args:
            image_embeddings: (B, C, g, g) from :meth:`encode`.
            prompt: (B, C) projected ``[SEG]`` embeddings, one per view.

        Returns:
            (B, 4g, 4g) low-resolution mask logits and (B,) predicted IoU, in the head's dtype.
        """
        b, c, gh, gw = image_embeddings.shape
        g, c_ = self.arch.embedding_size, self.arch.prompt_dim
        if c != c_ or (gh, gw) != (g, g):
            raise ValueError(f"expected (B, {c_}, {g}, {g}) embeddings, got {tuple(image_embeddings.shape)}")
        if tuple(prompt.shape) != (b, c):
            raise ValueError(f"expected ({b}, {c}) prompts, got {tuple(prompt.shape)}")
        dev, dtype = self.device, self.dtype
        emb = image_embeddings.to(device=dev, dtype=dtype)
        # transformers' decoder wants sparse tokens as (batch, point_batch, tokens, C).
        sparse = prompt.to(device=dev, dtype=dtype).reshape(b, 1, 1, c)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1).expand(b, c, gh, gw)
        image_pe = self.sam.get_image_wide_positional_embeddings().expand(b, -1, -1, -1)
        masks, iou = self.sam.mask_decoder(
            image_embeddings=emb,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        # masks: (B, point_batch=1, 1, 4g, 4g); iou: (B, 1, 1).
        return masks[:, 0, 0], iou[:, 0, 0]

    def forward(self, pixel_values: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` then :meth:`decode`."""
        return self.decode(self.encode(pixel_values), prompt)
