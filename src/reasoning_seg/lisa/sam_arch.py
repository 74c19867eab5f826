"""SAM's architecture presets (ViT-B/L/H) as LISA uses them, and the transformers ``SamConfig`` for each."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import SamConfig, SamModel

LISA_SAM_PREFIX = "model.visual_model."
# SAM's input normalisation (ImageNet statistics in 0..255 units), as in LISA's chat.py / Sam.preprocess.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
# The HF name of the tied copy of the prompt encoder's Fourier matrix (see module docstring).
_HF_PE = "shared_image_embedding.positional_embedding"
_HF_PE_ALIAS = "prompt_encoder.shared_embedding.positional_embedding"
_HYPER_MLP_DEPTH = 3  # SAM's per-mask-token hypernetwork MLPs are always 3 layers (as is HF's).


class SamCheckpointError(ValueError):
    """SAM weights that do not fit the expected layout; the message names every offending tensor.

    Attributes:
        unmapped: names (with prefix) that match no mapping rule.
        missing: expected names that are absent.
        mismatched: ``"name: got (...), expected (...)"`` for tensors with the wrong shape.
    """

    def __init__(
        self,
        message: str,
        *,
        unmapped: Iterable[str] = (),
        missing: Iterable[str] = (),
        mismatched: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.unmapped = list(unmapped)
        self.missing = list(missing)
        self.mismatched = list(mismatched)


# ----------------------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class SamArchitecture:
    """Every size the SAM modules need; equal architectures build identical state-dict layouts.

    Encoder fields describe SAM's ViTDet-style image encoder (windowed attention with a few global
    blocks, decomposed relative positions, a conv neck down to ``prompt_dim`` channels). ``prompt_dim``
    is also the width of the prompt tokens, so it is the dimension LISA projects ``[SEG]`` to
    (``out_dim`` = 256 for every published checkpoint). ``encoder_mlp_dim=None`` means SAM's
    ``4 * embed_dim`` and is normalised to that number, so an inferred architecture compares equal
    to the published constants.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    image_size: int = 1024
    prompt_dim: int = 256
    encoder_mlp_dim: int | None = None
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "encoder_global_attn_indexes",
            tuple(sorted(int(i) for i in self.encoder_global_attn_indexes)),
        )
        if self.encoder_mlp_dim is None:
            object.__setattr__(self, "encoder_mlp_dim", 4 * self.encoder_embed_dim)
        problems = []
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append(
                f"encoder_embed_dim {self.encoder_embed_dim} not divisible by {self.encoder_num_heads} heads"
            )
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} not a multiple of patch_size {self.patch_size}")
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            problems.append(
                f"global_attn_indexes {self.encoder_global_attn_indexes} outside 0..{self.encoder_depth - 1}"
            )
        if self.prompt_dim % 8:
            problems.append(f"prompt_dim {self.prompt_dim} must be a multiple of 8 (mask upscaling to C/8)")
        internal = self.prompt_dim // self.decoder_attention_downsample_rate
        if self.prompt_dim % self.decoder_num_heads or internal % self.decoder_num_heads:
            problems.append(
                f"decoder widths {self.prompt_dim}/{internal} not divisible by {self.decoder_num_heads} heads"
            )
        if self.iou_head_depth < 2:
            problems.append(
                "iou_head_depth must be >= 2 (HF's SamFeedForward always has proj_in and proj_out)"
            )
        if self.mask_in_chans % 4:
            problems.append(f"mask_in_chans {self.mask_in_chans} must be a multiple of 4")
        if problems:
            raise ValueError("invalid SAM architecture: " + "; ".join(problems))

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (64 for 1024-pixel inputs and 16-pixel patches)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (two 2x transposed convs: 4 * grid = 256)."""
        return 4 * self.embedding_size


# Published SAM backbones (segment-anything build_sam.py; LISA's checkpoints use ViT-H).
SAM_VIT_H = SamArchitecture(1280, 32, 16, (7, 15, 23, 31))
SAM_VIT_L = SamArchitecture(1024, 24, 16, (5, 11, 17, 23))
SAM_VIT_B = SamArchitecture(768, 12, 12, (2, 5, 8, 11))


def sam_config(arch: SamArchitecture) -> SamConfig:
    """The ``transformers`` config whose ``SamModel`` computes exactly SAM's functions for ``arch``.

    The epsilons are SAM's, not HF's defaults: 1e-6 in the image encoder (``build_sam`` passes
    ``LayerNorm(eps=1e-6)``) and in every ``LayerNorm2d``; 1e-5 (``nn.LayerNorm``'s default) in the
    two-way transformer. The Fourier positional matrix has ``prompt_dim // 2`` frequencies.
    """
    return SamConfig(
        vision_config={
            "hidden_size": arch.encoder_embed_dim,
            "output_channels": arch.prompt_dim,
            "num_hidden_layers": arch.encoder_depth,
            "num_attention_heads": arch.encoder_num_heads,
            "num_channels": 3,
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
            "use_abs_pos": True,
            "use_rel_pos": True,
            "window_size": arch.window_size,
            "global_attn_indexes": list(arch.encoder_global_attn_indexes),
            "num_pos_feats": arch.prompt_dim // 2,
            "mlp_dim": arch.encoder_mlp_dim,
        },
        prompt_encoder_config={
            "hidden_size": arch.prompt_dim,
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "mask_input_channels": arch.mask_in_chans,
            "num_point_embeddings": 4,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
        },
        mask_decoder_config={
            "hidden_size": arch.prompt_dim,
            "hidden_act": "relu",
            "mlp_dim": arch.decoder_mlp_dim,
            "num_hidden_layers": arch.decoder_depth,
            "num_attention_heads": arch.decoder_num_heads,
            "attention_downsample_rate": arch.decoder_attention_downsample_rate,
            "num_multimask_outputs": arch.num_multimask_outputs,
            "iou_head_depth": arch.iou_head_depth,
            "iou_head_hidden_dim": arch.iou_head_hidden_dim,
            "layer_norm_eps": 1e-5,
        },
    )


def build_sam(
    arch: SamArchitecture,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> SamModel:
    """An (untrained) ``SamModel`` for ``arch``, in eval mode.

    Args:
        arch: the architecture.
        device: ``"meta"`` builds without memory (shapes only; load with assignment afterwards); ``None``
            uses the ambient default device, so building inside ``with torch.device("meta"):`` works.
        dtype: parameter dtype; ``None`` keeps torch's default (float32).
    """
    config = sam_config(arch)
    if device is None:
        model = SamModel(config)
    else:
        with torch.device(device):
            model = SamModel(config)
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval()
