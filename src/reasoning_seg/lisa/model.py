"""LISA's module tree (LLaMA + CLIP + LLaVA projector + ``[SEG]`` MLP + SAM) and its batched forward.

Layout follows the published checkpoints so that loading is strict:

- ``llm`` is ``transformers``' ``LlamaForCausalLM``; LLaVA's projector and LISA's ``[SEG]`` MLP are
  attached to its inner model, so ``llm.state_dict()`` has exactly the checkpoint's names
  (``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*``, ``lm_head.*``,
  ``model.mm_projector.*``, ``model.text_hidden_fcs.0.{0,2}.*``);
- ``vision_tower`` is ``CLIPVisionModel`` loaded from its own folder (LISA leaves it out of its shards);
- ``sam`` is :class:`~reasoning_seg.lisa.sam.LisaSamHead`; SAM's ``model.visual_model.*`` weights
  are renamed onto ``transformers``' ``SamModel`` by an explicit one-to-one map (the original
  ``segment-anything`` package imports torchvision, which has no working CPU build here).

Inference (LISA's ``evaluate``): CLIP patch features of layer ``mm_vision_select_layer`` → projector
→ spliced between the prompt's text embeddings → greedy generation; the last-layer hidden state that
*produces* the ``[SEG]`` token → ``text_hidden_fcs`` → SAM prompt → mask logits and SAM's IoU
prediction. Generation uses a KV cache (LISA recomputes the whole sequence per token; the hidden
states are the same up to float rounding).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from reasoning_seg.lisa.checkpoint import (
    CONFIG_FILE,
    SAM_PREFIX,
    VISION_TOWER_PREFIX,
    LisaCheckpointError,
    LisaLanguageSpec,
    WeightFiles,
    check_keys,
    is_ignored_key,
    read_json,
)
from reasoning_seg.lisa.prompt import PromptTokens
from reasoning_seg.lisa.sam import (
    LisaSamHead,
    SamArchitecture,
    expected_lisa_sam_keys,
    infer_sam_architecture,
    lisa_to_hf_sam_state,
)
from reasoning_seg.lisa.static_decode import StaticDecoder, round_capacity

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_DECODERS = 4  # static decoders (KV buffer + CUDA graph) kept for reuse, by (views, capacity)
_LLAMA_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def llama_config(spec: LisaLanguageSpec):
    """``LlamaConfig`` from a LISA ``config.json`` (LLaVA/LISA fields dropped, embeddings untied)."""
    from transformers import LlamaConfig

    kwargs = {k: spec.raw[k] for k in _LLAMA_KEYS if k in spec.raw and spec.raw[k] is not None}
    return LlamaConfig(**kwargs, tie_word_embeddings=False)


def seg_projection(hidden_size: int, out_dim: int) -> nn.ModuleList:
    """LISA's ``text_hidden_fcs``: one MLP (Linear, ReLU, Linear, Dropout(0)) from LLM width to SAM's."""
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.Linear(hidden_size, hidden_size),
                nn.ReLU(),
                nn.Linear(hidden_size, out_dim),
                nn.Dropout(0.0),
            )
        ]
    )


def clip_preprocess(rgb: np.ndarray, size: int) -> torch.Tensor:
    """CLIP's preprocessing, as ``CLIPImageProcessor`` does it for LLaVA; returns (3, size, size).

    Short side to ``size`` (PIL bicubic), centre crop to ``size``², scale to [0, 1], normalise with
    CLIP's mean/std. LLaVA-v1 (and so LISA) squashes nothing and pads nothing: it crops.
    """
    h, w = rgb.shape[:2]
    if w <= h:  # the short side becomes ``size``, the long one keeps the aspect ratio (truncated)
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    img = img[top : top + size, left : left + size].astype(np.float32) / 255.0
    x = (img - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass
class Generation:
    """Greedy generation for a batch of views sharing one prompt."""

    tokens: list[list[int]]  # generated ids per view, up to and excluding EOS
    seg_hidden: torch.Tensor  # (B, hidden) last-layer state that produced the first [SEG] (zeros if none)
    has_seg: list[bool]
    seg_prob: list[float]  # softmax probability of [SEG] at the step that produced it (0 if none)


class LisaModel(nn.Module):
    """The frozen LISA model; build with :func:`build_lisa_model` or load with :func:`load_lisa_model`."""

    def __init__(self, spec: LisaLanguageSpec, clip_config, sam_arch: SamArchitecture) -> None:
        from transformers import CLIPVisionModel, LlamaForCausalLM

        super().__init__()
        self.spec = spec
        self.sam_arch = sam_arch
        self.llm = LlamaForCausalLM(llama_config(spec))
        self.llm.model.mm_projector = nn.Linear(spec.mm_hidden_size, spec.hidden_size)
        self.llm.model.text_hidden_fcs = seg_projection(spec.hidden_size, spec.out_dim)
        if clip_config.hidden_size != spec.mm_hidden_size:
            raise LisaCheckpointError(
                f"the vision tower is {clip_config.hidden_size} wide but the checkpoint's projector expects "
                f"mm_hidden_size {spec.mm_hidden_size}: wrong vision tower for this LISA checkpoint"
            )
        if sam_arch.prompt_dim != spec.out_dim:
            raise LisaCheckpointError(
                f"SAM takes {sam_arch.prompt_dim}-d prompts but out_dim is {spec.out_dim} in {CONFIG_FILE}"
            )
        self.vision_tower = CLIPVisionModel(clip_config)
        self.clip_image_size = int(clip_config.image_size)
        self.sam = LisaSamHead(sam_arch)
        # Decoding on CUDA replays one captured graph per token (static_decode.py); decoders (their KV
        # buffers and graphs) are kept per (views, capacity) and reused by later queries.
        self.cuda_graphs = True
        self._decoders: OrderedDict[tuple[int, int], StaticDecoder] = OrderedDict()
        self.eval()
        self.requires_grad_(False)

    # ---------------------------------------------------------------- placement
    @property
    def llm_device(self) -> torch.device:
        """Device of the language side (CLIP, projector, LLaMA, [SEG] MLP)."""
        return self.llm.lm_head.weight.device

    @property
    def sam_device(self) -> torch.device:
        """Device of SAM (may differ from the LLM's, e.g. to split a model over two GPUs)."""
        return next(self.sam.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the language side."""
        return self.llm.lm_head.weight.dtype

    def place(
        self, llm_device: str | torch.device, sam_device: str | torch.device, dtype: torch.dtype
    ) -> LisaModel:
        """Move the language side and SAM to their devices, all in ``dtype``."""
        self.llm.to(device=llm_device, dtype=dtype)
        self.vision_tower.to(device=llm_device, dtype=dtype)
        self.sam.to(device=sam_device, dtype=dtype)
        return self

    # ---------------------------------------------------------------- language side
    @torch.no_grad()
    def image_tokens(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) → (B, N, hidden): CLIP patch tokens of the selected layer, projected (LLaVA)."""
        out = self.vision_tower(clip_pixels.to(self.llm_device, self.dtype), output_hidden_states=True)
        patches = out.hidden_states[self.spec.mm_vision_select_layer][:, 1:]  # drop CLS ("patch" features)
        return self.llm.model.mm_projector(patches)

    def prompt_embeddings(self, prompt: PromptTokens, image_tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings with each view's image tokens spliced in at the image placeholder."""
        embed = self.llm.model.embed_tokens
        dev = self.llm_device
        b = image_tokens.shape[0]
        before = embed(torch.tensor(prompt.before, device=dev)).unsqueeze(0).expand(b, -1, -1)
        after = embed(torch.tensor(prompt.after, device=dev)).unsqueeze(0).expand(b, -1, -1)
        return torch.cat([before, image_tokens.to(before.dtype), after], dim=1)

    @torch.no_grad()
    def prefill(self, inputs_embeds: torch.Tensor):
        """Run the prompt through the LLM; returns (KV cache, last position's final hidden state (B, H))."""
        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.llm.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True)
        return cache, out.last_hidden_state[:, -1]

    @torch.no_grad()
    def feed_token(self, cache, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) to the cached sequence; returns the new final hidden state (B, H)."""
        out = self.llm.model(
            inputs_embeds=self.llm.model.embed_tokens(tokens[:, None]), past_key_values=cache, use_cache=True
        )
        return out.last_hidden_state[:, -1]

    def start_decoding(
        self, inputs_embeds: torch.Tensor, max_new_tokens: int
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Prefill; returns the last hidden state (B, H) and ``step(tokens) -> hidden`` for decoding.

        On CUDA with :attr:`cuda_graphs`, the static-cache decoder (one graph replay per token);
        otherwise ``transformers``' forward with a dynamic cache.
        """
        if self.cuda_graphs and self.llm_device.type == "cuda":
            b, t = inputs_embeds.shape[:2]
            key = (b, round_capacity(t + max_new_tokens + 1))
            dec = self._decoders.pop(key, None) or StaticDecoder(self.llm.model, b, key[1], use_graph=True)
            self._decoders[key] = dec
            while len(self._decoders) > _MAX_DECODERS:
                self._decoders.popitem(last=False)
            return dec.prefill(inputs_embeds), dec.step
        cache, h = self.prefill(inputs_embeds)
        return h, lambda tokens: self.feed_token(cache, tokens)

    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int,
        eos_id: int,
        seg_id: int,
        stop_at_seg: bool = False,
    ) -> Generation:
        """Greedy decoding of all views at once (every row has the same length: no padding needed).

        ``stop_at_seg``: a view is finished at its first ``[SEG]`` (all SAM needs is the hidden
        state that produced it; the rest of the answer is text for people). Decoding stops when
        every view is finished, so a robot's query costs the ~5 tokens of "Sure, [SEG]" rather than
        ``max_new_tokens``.
        """
        b = inputs_embeds.shape[0]
        h, step = self.start_decoding(inputs_embeds, max_new_tokens)
        tokens: list[list[int]] = [[] for _ in range(b)]
        seg_hidden = torch.zeros_like(h)
        has_seg = [False] * b
        seg_prob = [0.0] * b
        done = [False] * b
        for _ in range(max_new_tokens):
            logits = self.llm.lm_head(h)
            nxt = logits.argmax(dim=-1)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if t == eos_id:
                    done[i] = True
                    continue
                tokens[i].append(t)
                if t == seg_id and not has_seg[i]:
                    # LISA's evaluate: the hidden state whose output is [SEG] becomes the prompt.
                    seg_hidden[i] = h[i]
                    has_seg[i] = True
                    seg_prob[i] = float(torch.softmax(logits[i].float(), dim=-1)[seg_id])
                    done[i] = done[i] or stop_at_seg
            if all(done):
                break
            h = step(nxt)
        return Generation(tokens, seg_hidden, has_seg, seg_prob)

    @torch.no_grad()
    def seg_embeddings(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """(B, hidden) → (B, out_dim): LISA's ``text_hidden_fcs`` projection into SAM's prompt space."""
        return self.llm.model.text_hidden_fcs[0](seg_hidden)


# -------------------------------------------------------------------------------------------- loading
def expected_language_keys(model: LisaModel) -> dict[str, tuple[int, ...]]:
    """Checkpoint names and shapes of everything but SAM (LLaMA, lm_head, projector, [SEG] MLP)."""
    return {k: tuple(v.shape) for k, v in model.llm.state_dict().items()}


def computed_buffer_keys(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Names (with ``prefix``) and shapes of the module tree's non-persistent buffers.

    Those are values the model computes (rotary frequencies, CLIP's ``position_ids``) and
    ``state_dict`` leaves out; published checkpoints saved with older transformers still carry some
    (openai/clip-vit-large-patch14 has ``vision_model.embeddings.position_ids``).
    """
    out: dict[str, tuple[int, ...]] = {}
    for mod_name, mod in module.named_modules():
        for leaf in mod._non_persistent_buffers_set:
            buf = mod._buffers.get(leaf)
            if buf is not None:
                out[f"{prefix}{mod_name}.{leaf}" if mod_name else f"{prefix}{leaf}"] = tuple(buf.shape)
    return out


def _assign(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of the (meta) parameter or buffer ``name`` without copying twice."""
    mod_path, _, leaf = name.rpartition(".")
    mod = root.get_submodule(mod_path) if mod_path else root
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in mod._buffers:
        mod._buffers[leaf] = value
    else:
        raise LisaCheckpointError(f"the model has no tensor named {name}")


def _restore_computed_buffers(model: LisaModel, device: torch.device) -> None:
    """Recreate buffers that are computed, not stored (rotary frequencies, CLIP position ids)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("cpu"):  # built outside the meta context; frequencies stay float32, as HF keeps them
        rotary = LlamaRotaryEmbedding(model.llm.config)
    model.llm.model.rotary_emb = rotary.to(device)
    emb = _clip_tower(model).embeddings
    if "position_ids" in emb._buffers:
        emb._buffers["position_ids"] = torch.arange(emb.num_positions, device=device).expand((1, -1))


def _clip_tower(model: LisaModel) -> nn.Module:
    """The module whose tensors are a CLIP checkpoint's ``vision_model.*`` (transformers 4 nests it)."""
    return getattr(model.vision_tower, "vision_model", model.vision_tower)


def _meta_leftovers(model: nn.Module) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.is_meta]
    return names + [n for n, b in model.named_buffers() if b.is_meta]


def resolve_vision_tower(spec: LisaLanguageSpec, folder: Path, vision_tower: str | Path | None) -> Path:
    """The CLIP folder: the one given, else ``config.json``'s ``vision_tower`` if it is a local folder."""
    candidates = (
        [Path(vision_tower)] if vision_tower else [Path(spec.vision_tower), folder / spec.vision_tower]
    )
    for c in candidates:
        if (c / CONFIG_FILE).is_file():
            return c
    raise FileNotFoundError(
        f"the CLIP vision tower '{vision_tower or spec.vision_tower}' is not a local folder with "
        f"{CONFIG_FILE}; "
        "download it (e.g. openai/clip-vit-large-patch14) and set segmenter.lisa_vision_tower to its path"
    )


def load_lisa_model(
    folder: str | Path,
    vision_tower: str | Path | None = None,
    llm_device: str | torch.device = "cpu",
    sam_device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LisaModel:
    """Load a published LISA checkpoint strictly, one shard at a time, straight onto its devices.

    Every tensor name and shape is checked against the architecture from the headers before any weight
    is read. The module tree is built on the ``meta`` device, so peak host memory is one shard, not
    the whole model twice.
    """
    from transformers import CLIPVisionConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"LISA checkpoint folder {folder} does not exist")
    spec = LisaLanguageSpec.from_config(read_json(folder / CONFIG_FILE))
    weights = WeightFiles(folder)
    shapes = weights.shapes
    sam_shapes = {k: s for k, s in shapes.items() if k.startswith(SAM_PREFIX)}
    if not sam_shapes:
        raise LisaCheckpointError(f"{folder} has no SAM weights ({SAM_PREFIX}*): not a LISA checkpoint")
    try:
        sam_arch = infer_sam_architecture(sam_shapes, SAM_PREFIX)
    except ValueError as exc:
        raise LisaCheckpointError(f"{folder}: {exc}") from exc
    tower_dir = resolve_vision_tower(spec, folder, vision_tower)
    try:
        clip_config = CLIPVisionConfig.from_pretrained(str(tower_dir))
    except Exception as exc:
        raise LisaCheckpointError(f"{tower_dir} has no CLIP vision config: {exc}") from exc

    with torch.device("meta"):
        model = LisaModel(spec, clip_config, sam_arch)
    language_shapes = expected_language_keys(model)
    expected = language_shapes | expected_lisa_sam_keys(sam_arch, SAM_PREFIX)
    language_computed = computed_buffer_keys(model.llm)
    check_keys(
        shapes,
        expected,
        str(folder),
        allowed_extra_prefixes=(VISION_TOWER_PREFIX,),
        computed=language_computed,
    )
    clip_files = WeightFiles(tower_dir)
    # Published CLIP folders name the tower's tensors ``vision_model.*``; transformers 5's
    # CLIPVisionModel holds them without that prefix.
    clip_expected = {f"vision_model.{k}": tuple(v.shape) for k, v in _clip_tower(model).state_dict().items()}
    clip_shapes = clip_files.shapes
    if not any(k.startswith("vision_model.") for k in clip_shapes):
        raise LisaCheckpointError(f"{tower_dir} holds no CLIP vision weights (vision_model.*)")
    # A full CLIPModel folder also holds the text tower: declared, not loaded.
    check_keys(
        clip_shapes,
        clip_expected,
        str(tower_dir),
        allowed_extra_prefixes=("text_model.", "logit_scale", "text_projection.", "visual_projection."),
        computed=computed_buffer_keys(_clip_tower(model), "vision_model."),
    )

    sam_device = sam_device if sam_device is not None else llm_device
    llm_dev, sam_dev = torch.device(llm_device), torch.device(sam_device)
    sam_state: dict[str, torch.Tensor] = {}
    language_keys = set(language_shapes)
    for name, tensor in weights.iter_tensors():
        if name in language_keys:
            _assign(model.llm, name, tensor.to(device=llm_dev, dtype=dtype))
        elif name.startswith(SAM_PREFIX):
            sam_state[name] = tensor
        elif not (is_ignored_key(name) or name.startswith(VISION_TOWER_PREFIX) or name in language_computed):
            raise LisaCheckpointError(f"unexpected tensor {name}")  # check_keys already excludes this
    for name, tensor in clip_files.iter_tensors(set(clip_expected)):
        _assign(
            _clip_tower(model), name.removeprefix("vision_model."), tensor.to(device=llm_dev, dtype=dtype)
        )
    hf_sam = lisa_to_hf_sam_state(sam_state, SAM_PREFIX)
    del sam_state
    for name, tensor in hf_sam.items():
        _assign(model.sam.sam, name, tensor.to(device=sam_dev, dtype=dtype))
    _restore_computed_buffers(model, llm_dev)
    model.sam.restore_computed_buffers(sam_dev)
    leftovers = _meta_leftovers(model)
    if leftovers:
        raise LisaCheckpointError(f"these tensors were never loaded: {leftovers[:8]}")
    return model.eval()
