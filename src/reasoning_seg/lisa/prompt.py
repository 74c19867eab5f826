"""LISA's prompt: the LLaVA-v1 conversation, the image placeholder, and the ``[SEG]`` token.

LISA was fine-tuned on questions of the form "<question> Please output segmentation mask." inside
LLaVA's v1 conversation ("USER: ... ASSISTANT:") with the image given as
``<im_start><image><im_end>`` before the question; it answers e.g. "Sure, [SEG]." and the hidden
state that produces ``[SEG]`` becomes SAM's prompt. Asking in the same form as training matters for
a frozen model, so the template is fixed here and only the question wording is configurable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEG_TOKEN = "[SEG]"
IMAGE_PLACEHOLDER = "<image>"
IM_START, IM_END = "<im_start>", "<im_end>"
IMAGE_TOKEN_INDEX = -200  # LLaVA's marker in input ids where the image features go (never embedded)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
DEFAULT_QUESTION_TEMPLATE = "{query} Please output segmentation mask."
#: Tokens LISA's merge script adds to LLaMA's vocabulary ([SEG] first, then the image markers).
ADDED_TOKENS = (SEG_TOKEN, IM_START, IM_END)
_ADDED_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in ADDED_TOKENS) + ")")


def llava_v1_prompt(question: str, use_im_start_end: bool = True) -> str:
    """The full text LISA sees: system, user turn with the image placeholder, open assistant turn."""
    image = f"{IM_START}{IMAGE_PLACEHOLDER}{IM_END}" if use_im_start_end else IMAGE_PLACEHOLDER
    return f"{LLAVA_V1_SYSTEM} USER: {image}\n{question} ASSISTANT:"


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of a prompt split at the image: ``before`` + image features + ``after``."""

    before: list[int]  # starts with BOS
    after: list[int]


class LisaTokenizer:
    """The checkpoint's tokenizer plus the ids LISA needs (``[SEG]``, BOS, EOS)."""

    def __init__(self, folder: str | Path, use_im_start_end: bool = True) -> None:
        from transformers import AutoTokenizer

        from reasoning_seg.lisa.checkpoint import LisaCheckpointError

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:
            raise LisaCheckpointError(f"no usable tokenizer in {folder}: {exc}") from exc
        self.use_im_start_end = use_im_start_end
        # LISA tokenised with the slow LLaMA tokenizer, i.e. SentencePiece on the checkpoint's
        # tokenizer.model; use exactly that for prompt text where the file is there (the fast
        # tokenizer's handling of whitespace around added tokens differs between settings).
        self._sp = None
        model_file = Path(folder) / "tokenizer.model"
        if model_file.is_file():
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        ids = self.tokenizer(SEG_TOKEN, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise LisaCheckpointError(
                f"the tokenizer in {folder} has no single {SEG_TOKEN} token (it splits into {ids}); "
                "is this a LISA checkpoint?"
            )
        self.seg_token_id = int(ids[0])
        if self.tokenizer.bos_token_id is None or self.tokenizer.eos_token_id is None:
            raise LisaCheckpointError(f"the tokenizer in {folder} defines no BOS/EOS token")
        self.bos_token_id = int(self.tokenizer.bos_token_id)
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        if use_im_start_end:
            for tok in (IM_START, IM_END):
                if len(self.tokenizer(tok, add_special_tokens=False).input_ids) != 1:
                    raise LisaCheckpointError(f"the tokenizer in {folder} has no single {tok} token")

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_prompt(self, question: str) -> PromptTokens:
        r"""Token ids of the conversation around the image, exactly as LISA built its inputs.

        LLaVA's ``tokenizer_image_token`` tokenises the text on each side of ``<image>`` on its
        own, one BOS at the very start. LISA's slow LLaMA tokenizer then splits each side at the
        added tokens (``<im_start>``, ``<im_end>``, ``[SEG]``), drops the whitespace next to them
        and SentencePiece-encodes every text run separately (each run gets SentencePiece's leading
        "▁"): "USER: <im_start>" ends in ":" then <im_start>, and "<im_end>\nWhere" is <im_end>
        then "▁Where" -- no lone "▁" or newline token (issue 19).
        """
        text = llava_v1_prompt(question, self.use_im_start_end)
        head, tail = text.split(IMAGE_PLACEHOLDER)
        return PromptTokens([self.bos_token_id, *self.encode_text(head)], self.encode_text(tail))

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS, by the slow tokenizer's rule for added tokens (above)."""
        parts = _ADDED_SPLIT.split(text)
        out: list[int] = []
        for k, part in enumerate(parts):
            if part in ADDED_TOKENS:
                out.append(int(self.tokenizer.convert_tokens_to_ids(part)))
                continue
            if k > 0:  # after an added token
                part = part.lstrip()
            if k < len(parts) - 1:  # before an added token
                part = part.rstrip()
            if part:
                out.extend(self._encode_run(part))
        return out

    def _encode_run(self, text: str) -> list[int]:
        if self._sp is not None:
            return [int(i) for i in self._sp.encode(text)]
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        """Answer text of generated ids, without BOS/EOS, with ``[SEG]`` kept (it is part of the answer)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.replace("\n", " ").split())
