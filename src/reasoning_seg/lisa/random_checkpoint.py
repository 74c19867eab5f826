"""Random LISA checkpoints in the published layout: the loader's test fixtures and the benchmark's model.

No LISA weights can be downloaded where this package is built and tested, so the loader is proven on
checkpoints written here with the *same* files, tensor names, shapes (scaled down) and tokenizer kind
(SentencePiece + ``added_tokens.json`` with ``[SEG]``, ``<im_start>``, ``<im_end>``) as
``xinlai/LISA-7B-v1``, plus a separate CLIP vision-tower folder. Weights are random: these
checkpoints say nothing about accuracy; they make loading, batching and the mask path testable.

``answer="seg"`` rigs residual channels so that greedy decoding answers "[SEG]" and stops,
``answer="none"`` so that it stops at once without ``[SEG]``, and any other text that contains
``[SEG]`` (e.g. ``"Sure it is [SEG]"``) so that it answers those tokens in order, which puts the
``[SEG]`` state several decoding steps after the prompt; everything else stays random, so the
``[SEG]`` state (and thus the mask) still depends on the image.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from reasoning_seg.lisa.checkpoint import SAM_PREFIX, LisaLanguageSpec
from reasoning_seg.lisa.model import LisaModel
from reasoning_seg.lisa.prompt import IM_END, IM_START, LLAVA_V1_SYSTEM, SEG_TOKEN
from reasoning_seg.lisa.sam import SAM_VIT_H, SamArchitecture, hf_to_lisa_sam_state

_TINY_SAM = SamArchitecture(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    prompt_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


@dataclass(frozen=True)
class LisaArchitecture:
    """Sizes of a LISA model: LLaMA, CLIP vision tower, SAM and the [SEG] projection width."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    vocab_size: int = 32003  # LLaMA's 32000 + [SEG], <im_start>, <im_end>
    max_positions: int = 2048
    clip_hidden: int = 1024
    clip_intermediate: int = 4096
    clip_layers: int = 24
    clip_heads: int = 16
    clip_image_size: int = 224
    clip_patch_size: int = 14
    sam: SamArchitecture = field(default=SAM_VIT_H)

    @property
    def out_dim(self) -> int:
        """[SEG] projection width = SAM's prompt width."""
        return self.sam.prompt_dim

    def config_json(self, vision_tower: str = "openai/clip-vit-large-patch14") -> dict:
        """A ``config.json`` with the fields a published LISA config has (LLaMA + LLaVA + LISA)."""
        return {
            "architectures": ["LISAForCausalLM"],
            "model_type": "llava",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": 1e-6,
            "vocab_size": self.vocab_size,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "tie_word_embeddings": False,
            "mm_hidden_size": self.clip_hidden,
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_use_im_start_end": True,
            "mm_vision_tower": vision_tower,
            "vision_tower": vision_tower,
            "out_dim": self.out_dim,
            "train_mask_decoder": True,
            "use_mm_proj": True,
        }

    def clip_config(self):
        """``CLIPVisionConfig`` of the vision tower."""
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.clip_hidden,
            intermediate_size=self.clip_intermediate,
            num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads,
            image_size=self.clip_image_size,
            patch_size=self.clip_patch_size,
            projection_dim=min(768, self.clip_hidden),
            hidden_act="quick_gelu",
        )


LISA_7B = LisaArchitecture()
LISA_13B = replace(
    LISA_7B, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40
)
# Vocabulary: a small trained SentencePiece model (base) + the three added tokens.
_TINY_BASE_VOCAB = 200
TINY = LisaArchitecture(
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vocab_size=_TINY_BASE_VOCAB + 3,
    max_positions=1024,
    clip_hidden=32,
    clip_intermediate=64,
    clip_layers=3,
    clip_heads=2,
    sam=_TINY_SAM,
)


def build_random_lisa(
    arch: LisaArchitecture,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LisaModel:
    """A randomly initialised LISA model built directly on ``device`` in ``dtype`` (benchmarks, fixtures)."""
    spec = LisaLanguageSpec.from_config(arch.config_json())
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LisaModel(spec, arch.clip_config(), arch.sam)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _rig_answer(model: LisaModel, chain: list[int], eos_id: int) -> None:
    """Make greedy decoding answer the tokens ``chain`` in order, then EOS (``[]``: EOS at once).

    Residual channels ``0..len(chain)`` are fixed by the token embeddings alone (every layer's output
    projections and the image projector write nothing into them): channel 0 is large for every token
    outside the chain, channel ``k + 1`` only for ``chain[k]``. ``lm_head`` reads ``chain[0]`` from
    channel 0, ``chain[k + 1]`` from channel ``k + 1`` and EOS from the last one, so after the prompt
    the model says ``chain[0]``, after that ``chain[1]``, and so on.
    """
    if len(set(chain)) != len(chain) or eos_id in chain:
        raise ValueError(f"a rigged answer needs distinct non-EOS tokens, got {chain}")
    n = len(chain) + 1  # rigged channels
    with torch.no_grad():
        llm = model.llm.model
        if n + 1 > llm.embed_tokens.weight.shape[1]:
            raise ValueError(f"a {len(chain)}-token answer needs more than the model's hidden width")
        for layer in llm.layers:
            layer.self_attn.o_proj.weight[:n] = 0
            layer.mlp.down_proj.weight[:n] = 0
        llm.embed_tokens.weight[:, :n] = 0
        llm.embed_tokens.weight[:, 0] = 10.0
        for k, tok in enumerate(chain):
            llm.embed_tokens.weight[tok, 0] = 0.0
            llm.embed_tokens.weight[tok, k + 1] = 10.0
        llm.mm_projector.weight[:n] = 0
        llm.mm_projector.bias[:n] = 0
        llm.mm_projector.bias[0] = 10.0
        llm.norm.weight[:n] = 1.0
        head = model.llm.lm_head.weight
        head[:, :n] = 0
        for k, tok in enumerate([*chain, eos_id]):
            head[tok, k] = 100.0


def _answer_chain(folder: Path, answer: str, seg_id: int) -> list[int]:
    """Token ids of a rigged answer: "seg", "none", or a text with one ``[SEG]`` (tokenized around it)."""
    if answer == "seg":
        return [seg_id]
    if answer == "none":
        return []
    if answer.count(SEG_TOKEN) != 1:
        raise ValueError(f"a rigged answer must contain {SEG_TOKEN} once, got {answer!r}")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    before, after = answer.split(SEG_TOKEN)
    ids = lambda text: sp.encode(text.strip()) if text.strip() else []  # noqa: E731
    return [*ids(before), seg_id, *ids(after)]


def _write_tokenizer(folder: Path, words: list[str]) -> dict[str, int]:
    """Train a small SentencePiece BPE model (LLaMA's ids: unk 0, BOS 1, EOS 2); add LISA's tokens."""
    import sentencepiece as spm

    sentences = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 4),
        model_writer=buf,
        vocab_size=_TINY_BASE_VOCAB,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    added = {SEG_TOKEN: _TINY_BASE_VOCAB, IM_START: _TINY_BASE_VOCAB + 1, IM_END: _TINY_BASE_VOCAB + 2}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "model_max_length": 512, "legacy": False, **special},
            indent=2,
        )
    )
    return added


_WORDS = (
    (
        LLAVA_V1_SYSTEM + " USER ASSISTANT Please output segmentation mask Sure it is the a of in on to by "
        "something I can use cut this paper bin closest door chair table where sit browse web store books"
    )
    .replace(".", " ")
    .replace(",", " ")
    .replace("'", " ")
    .split()
)


def _save_shards(state: dict[str, torch.Tensor], folder: Path, fmt: str, shards: int) -> None:
    names = sorted(state)
    groups = [names[i::shards] for i in range(shards)]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in group}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(folder / fname), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update(dict.fromkeys(group, fname))
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))


def write_random_lisa_checkpoint(
    folder: str | Path,
    arch: LisaArchitecture = TINY,
    seed: int = 0,
    fmt: str = "safetensors",
    shards: int = 2,
    answer: str = "seg",
    vision_tower_folder: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write a random LISA checkpoint folder and its CLIP vision-tower folder; returns both paths.

    ``fmt`` is ``safetensors`` or ``bin`` (the published LISA-7B-v1 uses ``.bin`` shards); the CLIP
    folder defaults to ``<folder>-clip``. ``config.json`` names the vision tower as the published
    configs do (``openai/clip-vit-large-patch14``), so a loader must be told where the CLIP folder is.
    """
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    if answer not in ("seg", "none", "free") and SEG_TOKEN not in answer:
        raise ValueError(f"answer must be 'seg', 'none', 'free' or a text with {SEG_TOKEN}, not {answer!r}")
    if arch.vocab_size != _TINY_BASE_VOCAB + 3:
        raise ValueError(
            "only architectures with the tiny vocabulary can be written with a trained tokenizer"
        )
    folder = Path(folder)
    clip_folder = (
        Path(vision_tower_folder) if vision_tower_folder else folder.with_name(folder.name + "-clip")
    )
    folder.mkdir(parents=True, exist_ok=True)
    clip_folder.mkdir(parents=True, exist_ok=True)
    added = _write_tokenizer(folder, _WORDS)
    model = build_random_lisa(arch, seed)
    if answer != "free":
        _rig_answer(model, _answer_chain(folder, answer, added[SEG_TOKEN]), eos_id=2)
    state = {k: v.detach().clone() for k, v in model.llm.state_dict().items()}
    state.update(hf_to_lisa_sam_state(model.sam.sam.state_dict(), SAM_PREFIX))
    _save_shards(state, folder, fmt, shards)
    (folder / "config.json").write_text(json.dumps(arch.config_json(), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    model.vision_tower.config.save_pretrained(str(clip_folder))
    tower = getattr(model.vision_tower, "vision_model", model.vision_tower)
    clip_state = {f"vision_model.{k}": v.detach().clone() for k, v in tower.state_dict().items()}
    # As in openai/clip-vit-large-patch14 (saved by an older transformers): the computed position
    # ids are in the file although transformers 5 does not store them.
    emb = tower.embeddings
    clip_state["vision_model.embeddings.position_ids"] = torch.arange(emb.num_positions).unsqueeze(0)
    _save_shards(clip_state, clip_folder, "safetensors", 1)
    return folder, clip_folder
