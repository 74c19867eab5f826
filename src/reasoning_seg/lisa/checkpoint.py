"""Reading a LISA checkpoint folder: its config, its weight shards, and a strict check of its keys.

A published LISA folder (what ``merge_lora_weights_and_save_hf_model.py`` of the LISA repository
writes, e.g. ``xinlai/LISA-7B-v1``) holds ``config.json`` (a LLaMA config plus LLaVA's ``mm_*`` and
LISA's ``out_dim`` fields), the tokenizer (``tokenizer.model`` + ``added_tokens.json`` with
``[SEG]``, ``<im_start>``, ``<im_end>``) and the weights as ``pytorch_model*.bin`` or
``model*.safetensors`` shards with an index. The CLIP vision tower is *not* in the shards (the merge
script drops every ``vision_tower`` key); it is an ordinary HF CLIP folder named by ``vision_tower``
in the config (``openai/clip-vit-large-patch14``).

Everything here works on tensor *shapes* first: a folder is checked completely (missing, unexpected
and mis-shaped tensors, all reported at once) before a single weight is read, so a wrong file fails in
milliseconds with a message that names the problem instead of half-loading a 14 GB model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
_WEIGHT_FILES = (
    ("model.safetensors.index.json", "safetensors"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin"),
    ("pytorch_model.bin", "bin"),
)
SAM_PREFIX = "model.visual_model."
VISION_TOWER_PREFIX = "model.vision_tower."
# Keys older LLaMA exports carried (a recomputed rotary buffer, not a weight): accepted and not loaded.
_IGNORED_SUFFIXES = (".self_attn.rotary_emb.inv_freq",)


class LisaCheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says which file or tensor and why."""


@dataclass(frozen=True)
class LisaLanguageSpec:
    """The parts of ``config.json`` the loader needs (LLaMA + LLaVA + LISA fields)."""

    raw: dict
    hidden_size: int
    vocab_size: int
    out_dim: int  # [SEG] projection width = SAM prompt width (256 for every published LISA)
    mm_hidden_size: int  # CLIP width (1024 for ViT-L/14)
    mm_vision_select_layer: int  # LLaVA takes this CLIP layer's patch tokens (-2)
    mm_use_im_start_end: bool
    vision_tower: str  # name or path of the CLIP vision tower

    @classmethod
    def from_config(cls, cfg: Mapping) -> LisaLanguageSpec:
        """Validate a parsed ``config.json``; raises :class:`LisaCheckpointError` naming the field."""

        def need(key: str, kind: type = int) -> object:
            if key not in cfg:
                raise LisaCheckpointError(f"{CONFIG_FILE} has no '{key}': not a LISA/LLaVA-LLaMA config")
            value = cfg[key]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise LisaCheckpointError(f"{CONFIG_FILE}: '{key}' must be a positive integer, got {value!r}")
            return value

        for key in ("num_hidden_layers", "num_attention_heads", "intermediate_size"):
            need(key)
        tower = cfg.get("vision_tower") or cfg.get("mm_vision_tower")
        if not isinstance(tower, str) or not tower:
            raise LisaCheckpointError(
                f"{CONFIG_FILE} names no vision tower ('vision_tower'/'mm_vision_tower')"
            )
        return cls(
            raw=dict(cfg),
            hidden_size=int(need("hidden_size")),
            vocab_size=int(need("vocab_size")),
            out_dim=int(cfg.get("out_dim", 256)),
            mm_hidden_size=int(need("mm_hidden_size")),
            mm_vision_select_layer=int(cfg.get("mm_vision_select_layer", -2)),
            mm_use_im_start_end=bool(cfg.get("mm_use_im_start_end", True)),
            vision_tower=tower,
        )


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a :class:`LisaCheckpointError` saying what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LisaCheckpointError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LisaCheckpointError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LisaCheckpointError(f"{path} does not hold a JSON object")
    return data


class WeightFiles:
    """The weight shards of an HF-format folder, read lazily (shapes first, tensors shard by shard).

    ``.safetensors`` shards are memory-mapped by ``safe_open``; ``.bin`` shards are opened with
    ``torch.load(mmap=True, weights_only=True)`` so neither format reads data until a tensor is
    used and no pickle code runs.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {self.folder} does not exist")
        for name, fmt in _WEIGHT_FILES:
            path = self.folder / name
            if path.is_file():
                self.format = fmt
                if name.endswith(".index.json"):
                    index = read_json(path)
                    weight_map = index.get("weight_map")
                    if not isinstance(weight_map, dict) or not weight_map:
                        raise LisaCheckpointError(f"{path} has no 'weight_map'")
                    self.key_to_file = {str(k): str(v) for k, v in weight_map.items()}
                else:
                    self.key_to_file = {}
                    self._single = name
                break
        else:
            raise FileNotFoundError(
                f"{self.folder} holds no weights (looked for {', '.join(n for n, _ in _WEIGHT_FILES)})"
            )
        if not self.key_to_file:
            self._shapes = self._read_shapes(self._single)
            self.key_to_file = dict.fromkeys(self._shapes, self._single)
        else:
            missing = sorted({f for f in self.key_to_file.values() if not (self.folder / f).is_file()})
            if missing:
                raise LisaCheckpointError(
                    f"{self.folder}: the index names shards that are missing: {missing}"
                )
            self._shapes = {}
            for shard in sorted(set(self.key_to_file.values())):
                shapes = self._read_shapes(shard)
                listed = {k for k, f in self.key_to_file.items() if f == shard}
                if not listed <= shapes.keys():
                    absent = sorted(listed - shapes.keys())[:5]
                    raise LisaCheckpointError(f"{shard} lacks tensors its index lists, e.g. {absent}")
                self._shapes.update({k: shapes[k] for k in listed})

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name with its shape, read from the shard headers."""
        return dict(self._shapes)

    def _open(self, shard: str) -> Mapping[str, torch.Tensor] | object:
        path = self.folder / shard
        try:
            if self.format == "safetensors":
                from safetensors import safe_open

                return safe_open(str(path), framework="pt", device="cpu")
            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:
            raise LisaCheckpointError(f"{path} is not a readable {self.format} weight file: {exc}") from exc
        if not isinstance(state, Mapping):
            raise LisaCheckpointError(f"{path} does not hold a state dict")
        return state

    def _read_shapes(self, shard: str) -> dict[str, tuple[int, ...]]:
        handle = self._open(shard)
        if self.format == "safetensors":
            with handle as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return {k: tuple(v.shape) for k, v in handle.items() if isinstance(v, torch.Tensor)}

    def iter_tensors(self, keys: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` shard by shard, so at most one shard's tensors are touched at once."""
        for shard in sorted(set(self.key_to_file.values())):
            wanted = [k for k, f in self.key_to_file.items() if f == shard and (keys is None or k in keys)]
            if not wanted:
                continue
            handle = self._open(shard)
            try:
                if self.format == "safetensors":
                    with handle as f:
                        for k in wanted:
                            yield k, f.get_tensor(k)
                else:
                    for k in wanted:
                        yield k, handle[k]
            except LisaCheckpointError:
                raise
            except Exception as exc:
                raise LisaCheckpointError(f"{self.folder / shard} could not be read: {exc}") from exc


def is_ignored_key(key: str) -> bool:
    """Keys that older exports carried but that hold no weights (e.g. LLaMA's rotary ``inv_freq``)."""
    return key.endswith(_IGNORED_SUFFIXES)


def check_keys(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    where: str,
    allowed_extra_prefixes: tuple[str, ...] = (),
    computed: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise :class:`LisaCheckpointError` listing every missing, unexpected and mis-shaped tensor.

    Strict loading is the point: a checkpoint of another architecture or with renamed tensors must
    not load "mostly", leaving random weights that produce confident nonsense on a robot.
    ``computed`` are the model's non-persistent buffers (values it computes itself, such as CLIP's
    ``position_ids``): a file saved by another transformers version may carry them, so they are
    accepted when the shape agrees, by that rule rather than by name, and never loaded.
    """
    problems = []
    computed = computed or {}
    expected = {**computed, **expected}  # a computed buffer, when present, must have its shape
    missing = sorted(set(expected) - set(computed) - set(found))
    extra = set(found) - set(expected)
    unexpected = sorted(
        k for k in extra if not is_ignored_key(k) and not k.startswith(allowed_extra_prefixes)
    )
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
    if wrong:
        problems.append(
            f"{len(wrong)} with the wrong shape (e.g. "
            + ", ".join(f"{k}: {tuple(found[k])} != {tuple(expected[k])}" for k in wrong[:3])
            + ")"
        )
    if problems:
        raise LisaCheckpointError(f"{where} does not match the expected architecture: " + "; ".join(problems))
