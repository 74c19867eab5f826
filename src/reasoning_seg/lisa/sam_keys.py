"""Checkpoint keys of LISA's SAM: the strict name map to transformers' ``SamModel`` and back.

Also the architecture read off a checkpoint's tensor shapes (:func:`infer_sam_architecture`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from reasoning_seg.lisa.sam_arch import (
    _HF_PE,
    _HF_PE_ALIAS,
    _HYPER_MLP_DEPTH,
    LISA_SAM_PREFIX,
    SamArchitecture,
    SamCheckpointError,
    build_sam,
)

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
