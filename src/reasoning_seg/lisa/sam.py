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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf
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


# ----------------------------------------------------------------------------------------- name mapping
_PLACEHOLDERS = {
    "i": r"\d+",
    "p": r"weight|bias",
    "n": r"[1-4]",
    "rel": r"rel_pos_h|rel_pos_w",
    "lin": r"lin1|lin2",
    "att": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
}
# (segment-anything name under the prefix, SamModel name); {x} are the placeholders above.
_RULES = (
    # Image encoder (ViTDet backbone + conv neck).
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm1.{p}", "vision_encoder.layers.{i}.layer_norm1.{p}"),
    ("image_encoder.blocks.{i}.norm2.{p}", "vision_encoder.layers.{i}.layer_norm2.{p}"),
    ("image_encoder.blocks.{i}.attn.qkv.{p}", "vision_encoder.layers.{i}.attn.qkv.{p}"),
    ("image_encoder.blocks.{i}.attn.proj.{p}", "vision_encoder.layers.{i}.attn.proj.{p}"),
    ("image_encoder.blocks.{i}.attn.{rel}", "vision_encoder.layers.{i}.attn.{rel}"),
    ("image_encoder.blocks.{i}.mlp.{lin}.{p}", "vision_encoder.layers.{i}.mlp.{lin}.{p}"),
    ("image_encoder.neck.0.weight", "vision_encoder.neck.conv1.weight"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    # Prompt encoder (the point/box/mask parts are unused by LISA but present in every checkpoint).
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", _HF_PE),
    ("prompt_encoder.point_embeddings.{i}.weight", "prompt_encoder.point_embed.{i}.weight"),
    ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
    ("prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    # Mask decoder (two-way transformer, upscaling, hypernetwork MLPs and IoU head: the latter two below).
    ("mask_decoder.iou_token.weight", "mask_decoder.iou_token.weight"),
    ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    (
        "mask_decoder.transformer.layers.{i}.{att}.{proj}.{p}",
        "mask_decoder.transformer.layers.{i}.{att}.{proj}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.norm{n}.{p}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.mlp.{lin}.{p}",
        "mask_decoder.transformer.layers.{i}.mlp.{lin}.{p}",
    ),
    (
        "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}",
        "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}",
    ),
    ("mask_decoder.transformer.norm_final_attn.{p}", "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
)
# SAM's MLP keeps its linears in one list ``layers.0 .. layers.{d-1}``; HF's SamFeedForward splits them
# into ``proj_in``, ``layers.0 .. layers.{d-3}`` and ``proj_out``, so the index depends on the depth.
_LISA_MLP = re.compile(
    r"(?P<mlp>mask_decoder\.output_hypernetworks_mlps\.\d+|mask_decoder\.iou_prediction_head)"
    r"\.layers\.(?P<j>\d+)\.(?P<p>weight|bias)"
)
_HF_MLP = re.compile(
    r"(?P<mlp>mask_decoder\.output_hypernetworks_mlps\.\d+|mask_decoder\.iou_prediction_head)"
    r"\.(?:(?P<end>proj_in|proj_out)|layers\.(?P<k>\d+))\.(?P<p>weight|bias)"
)
_HF_IOU_LAYERS = re.compile(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight")
_LISA_IOU_LAYERS = re.compile(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight")


def _compile(template: str) -> re.Pattern[str]:
    """Regex for a rule template: literal text escaped, each ``{x}`` a named group."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if k % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
        for k, part in enumerate(parts)
    )
    return re.compile(regex)


_LISA_TO_HF = tuple((_compile(lisa), hf) for lisa, hf in _RULES)
_HF_TO_LISA = tuple((_compile(hf), lisa) for lisa, hf in _RULES)


def _mlp_depth(name: str, iou_head_depth: int) -> int:
    return _HYPER_MLP_DEPTH if "output_hypernetworks_mlps" in name else iou_head_depth


def _lisa_name_to_hf(name: str, iou_head_depth: int) -> str | None:
    """SamModel name for a segment-anything name (without prefix), or None if no rule matches."""
    for regex, hf in _LISA_TO_HF:
        m = regex.fullmatch(name)
        if m:
            return hf.format(**m.groupdict())
    m = _LISA_MLP.fullmatch(name)
    if m:
        depth = _mlp_depth(name, iou_head_depth)
        j = int(m["j"])
        if j >= depth:
            return None
        if j == 0:
            middle = "proj_in"
        elif j == depth - 1:
            middle = "proj_out"
        else:
            middle = f"layers.{j - 1}"
        return f"{m['mlp']}.{middle}.{m['p']}"
    return None


def _hf_name_to_lisa(name: str, iou_head_depth: int) -> str | None:
    """segment-anything name (without prefix) for a SamModel name, or None if no rule matches."""
    if name == _HF_PE_ALIAS:
        name = _HF_PE
    for regex, lisa in _HF_TO_LISA:
        m = regex.fullmatch(name)
        if m:
            return lisa.format(**m.groupdict())
    m = _HF_MLP.fullmatch(name)
    if m:
        depth = _mlp_depth(name, iou_head_depth)
        if m["end"] == "proj_in":
            j = 0
        elif m["end"] == "proj_out":
            j = depth - 1
        else:
            j = int(m["k"]) + 1
            if j >= depth - 1:
                return None
        return f"{m['mlp']}.layers.{j}.{m['p']}"
    return None


def _short(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _under_prefix(names: Iterable[str], prefix: str) -> list[str]:
    return [n for n in names if n.startswith(prefix)]


def expected_lisa_sam_keys(
    arch: SamArchitecture, prefix: str = LISA_SAM_PREFIX
) -> dict[str, tuple[int, ...]]:
    """Every SAM tensor a LISA checkpoint of architecture ``arch`` must hold: full name → shape.

    Derived from the ``SamModel`` that will receive the weights (built on the meta device, no memory),
    mapped back to segment-anything's names, so "the checkpoint matches these keys" and "the weights
    load strictly" are the same statement. Lets a loader check a checkpoint's headers before reading
    any tensor data.
    """
    model = build_sam(arch, device="meta")
    out: dict[str, tuple[int, ...]] = {}
    unmapped = []
    for hf_name, tensor in model.state_dict().items():
        lisa = _hf_name_to_lisa(hf_name, arch.iou_head_depth)
        if lisa is None:
            unmapped.append(hf_name)
            continue
        out[prefix + lisa] = tuple(tensor.shape)
    if unmapped:  # a transformers version with a different SamModel layout: fail loudly, never guess
        raise SamCheckpointError(
            f"this transformers SamModel has tensors with no segment-anything name: {_short(unmapped)}",
            unmapped=unmapped,
        )
    return out


def _check_shapes(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], prefix: str
) -> None:
    """Raise :class:`SamCheckpointError` listing unmapped, missing and mis-shaped tensors under ``prefix``."""
    got = {k: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    unexpected = sorted(set(got) - set(expected))
    missing = sorted(set(expected) - set(got))
    mismatched = sorted(
        f"{k}: got {got[k]}, expected {expected[k]}"
        for k in set(got) & set(expected)
        if got[k] != expected[k]
    )
    if unexpected or missing or mismatched:
        parts = []
        if unexpected:
            parts.append(f"unexpected/unmapped SAM tensors: {_short(unexpected)}")
        if missing:
            parts.append(f"missing SAM tensors: {_short(missing)}")
        if mismatched:
            parts.append(f"mis-shaped SAM tensors: {_short(mismatched)}")
        raise SamCheckpointError(
            "; ".join(parts), unmapped=unexpected, missing=missing, mismatched=mismatched
        )


def lisa_to_hf_sam_state(
    state: Mapping[str, torch.Tensor],
    prefix: str = LISA_SAM_PREFIX,
    *,
    arch: SamArchitecture | None = None,
) -> dict[str, torch.Tensor]:
    """Rename the SAM tensors of a LISA state dict (keys under ``prefix``) to ``SamModel``'s names.

    Keys outside ``prefix`` (the language model, projector, ...) are ignored. Under the prefix the
    mapping is strict: the architecture is inferred from the shapes (unless given) and the key set must
    equal :func:`expected_lisa_sam_keys` exactly, shapes included; otherwise
    :class:`SamCheckpointError` names every unmapped, missing or mis-shaped tensor. No tensor needs
    reshaping (only the MLP layer indices move); the prompt encoder's Fourier matrix is emitted under
    both of ``SamModel``'s tied names, as the same tensor object.

    Returns:
        ``{SamModel state-dict name: tensor}``, loadable with ``load_state_dict(strict=True)``.
    """
    shapes = {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}
    if not shapes:
        raise SamCheckpointError(f"no SAM tensors under the prefix '{prefix}'")
    if arch is None:
        arch = infer_sam_architecture(shapes, prefix)
    _check_shapes(shapes, expected_lisa_sam_keys(arch, prefix), prefix)
    out: dict[str, torch.Tensor] = {}
    for key in shapes:
        hf = _lisa_name_to_hf(key[len(prefix) :], arch.iou_head_depth)
        if hf is None or hf in out:  # unreachable after _check_shapes; kept as a guard against rule edits
            raise SamCheckpointError(f"SAM tensor {key} has no unique SamModel name", unmapped=[key])
        out[hf] = state[key]
    out[_HF_PE_ALIAS] = out[_HF_PE]
    return out


def hf_to_lisa_sam_state(
    hf_state: Mapping[str, torch.Tensor], prefix: str = LISA_SAM_PREFIX
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`lisa_to_hf_sam_state`: ``SamModel`` names → LISA checkpoint names (with prefix).

    Used to write SAM weights in LISA's published layout (tests, random checkpoints). The tied alias of
    the Fourier matrix is dropped after checking that it equals the primary copy.
    """
    iou_layers = [int(m.group(1)) for k in hf_state if (m := _HF_IOU_LAYERS.fullmatch(k))]
    iou_depth = (max(iou_layers) + 3) if iou_layers else 2
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in hf_state.items():
        if name == _HF_PE_ALIAS and _HF_PE in hf_state:
            primary = hf_state[_HF_PE]
            if not (tensor.is_meta or primary.is_meta) and not torch.equal(tensor, primary):
                raise SamCheckpointError(f"{_HF_PE_ALIAS} differs from its tied twin {_HF_PE}")
            continue
        lisa = _hf_name_to_lisa(name, iou_depth)
        if lisa is None:
            unmapped.append(name)
            continue
        out[prefix + lisa] = tensor
    if unmapped:
        raise SamCheckpointError(f"SamModel tensors with no LISA name: {_short(unmapped)}", unmapped=unmapped)
    return out


# ----------------------------------------------------------------------------------------- inference
def _need(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise SamCheckpointError(f"not a SAM layout: {key} is missing", missing=[key])
    shape = tuple(shapes[key])
    if len(shape) != ndim:
        raise SamCheckpointError(
            f"not a SAM layout: {key} has shape {shape}, expected {ndim} dimensions", mismatched=[key]
        )
    return shape


def _indices(shapes: Iterable[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := regex.match(k))})


def infer_sam_architecture(
    shapes: Mapping[str, tuple[int, ...]],
    prefix: str = LISA_SAM_PREFIX,
    *,
    decoder_num_heads: int = 8,
) -> SamArchitecture:
    """Recover a :class:`SamArchitecture` from tensor shapes alone (checkpoint headers suffice).

    Embed dim and patch size come from the patch-embedding conv, the grid from ``pos_embed``, depth from
    the block indices, per-head width from ``rel_pos_h``'s last dim (heads = embed / head_dim), and
    each block's kind from ``rel_pos_h``'s length: ``2 * grid - 1`` is a global block, ``2 * window - 1``
    a windowed one. Decoder sizes come from its tensors likewise. The decoder's head count changes no
    shape, so it cannot be read from a checkpoint; it is ``decoder_num_heads`` (8 in every published SAM).

    Raises:
        SamCheckpointError (a ValueError): the tensors under ``prefix`` are not laid out like SAM.
    """
    s = {k[len(prefix) :]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if not s:
        raise SamCheckpointError(f"not a SAM layout: no tensors under the prefix '{prefix}'")

    def need(key: str, ndim: int) -> tuple[int, ...]:
        try:
            return _need(s, key, ndim)
        except SamCheckpointError as exc:
            raise SamCheckpointError(str(exc).replace(key, prefix + key), missing=[prefix + key]) from None

    embed, in_ch, ph, pw = need("image_encoder.patch_embed.proj.weight", 4)
    if in_ch != 3 or ph != pw:
        raise SamCheckpointError(f"not a SAM layout: patch embedding of shape {(embed, in_ch, ph, pw)}")
    _, gh, gw, pos_dim = need("image_encoder.pos_embed", 4)
    if gh != gw or pos_dim != embed:
        raise SamCheckpointError(f"not a SAM layout: pos_embed of shape {s['image_encoder.pos_embed']}")
    grid = gh
    blocks = _indices(s, r"image_encoder\.blocks\.(\d+)\.")
    if not blocks:
        raise SamCheckpointError(f"not a SAM layout: no image_encoder.blocks.* under '{prefix}'")
    depth = blocks[-1] + 1
    head_dim = None
    global_idx, windows = [], set()
    for b in range(depth):
        length, hd = need(f"image_encoder.blocks.{b}.attn.rel_pos_h", 2)
        if head_dim is None:
            head_dim = hd
        elif hd != head_dim:
            raise SamCheckpointError(f"not a SAM layout: block {b} has head width {hd}, block 0 {head_dim}")
        if length == 2 * grid - 1:
            global_idx.append(b)
        elif length % 2 == 1:
            windows.add((length + 1) // 2)
        else:
            raise SamCheckpointError(f"not a SAM layout: block {b}'s rel_pos_h has even length {length}")
    if len(windows) > 1:
        raise SamCheckpointError(f"not a SAM layout: blocks use several window sizes {sorted(windows)}")
    if head_dim is None or embed % head_dim:
        raise SamCheckpointError(f"not a SAM layout: head width {head_dim} does not divide embed dim {embed}")
    mlp_dim = need("image_encoder.blocks.0.mlp.lin1.weight", 2)[0]
    prompt_dim = need("image_encoder.neck.0.weight", 4)[0]
    mask_in_chans = need("prompt_encoder.mask_downscaling.3.weight", 4)[0]
    n_mask_tokens = need("mask_decoder.mask_tokens.weight", 2)[0]
    dec_layers = _indices(s, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    if not dec_layers:
        raise SamCheckpointError(f"not a SAM layout: no mask_decoder.transformer.layers.* under '{prefix}'")
    dec_mlp = need("mask_decoder.transformer.layers.0.mlp.lin1.weight", 2)[0]
    internal = need("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight", 2)[0]
    iou_layers = sorted({int(m.group(1)) for k in s if (m := _LISA_IOU_LAYERS.fullmatch(k))})
    if not iou_layers:
        raise SamCheckpointError(f"not a SAM layout: no mask_decoder.iou_prediction_head.* under '{prefix}'")
    iou_hidden = need("mask_decoder.iou_prediction_head.layers.0.weight", 2)[0]
    if internal <= 0 or prompt_dim % internal:
        raise SamCheckpointError(
            f"not a SAM layout: cross-attention width {internal} vs prompt dim {prompt_dim}"
        )
    try:
        return SamArchitecture(
            encoder_embed_dim=embed,
            encoder_depth=depth,
            encoder_num_heads=embed // head_dim,
            encoder_global_attn_indexes=tuple(global_idx),
            window_size=windows.pop() if windows else 14,
            patch_size=ph,
            image_size=grid * ph,
            prompt_dim=prompt_dim,
            encoder_mlp_dim=mlp_dim,
            mask_in_chans=mask_in_chans,
            decoder_depth=dec_layers[-1] + 1,
            decoder_num_heads=decoder_num_heads,
            decoder_mlp_dim=dec_mlp,
            decoder_attention_downsample_rate=prompt_dim // internal,
            num_multimask_outputs=n_mask_tokens - 1,
            iou_head_depth=iou_layers[-1] + 1,
            iou_head_hidden_dim=iou_hidden,
        )
    except ValueError as exc:
        raise SamCheckpointError(f"not a usable SAM layout: {exc}") from exc


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
