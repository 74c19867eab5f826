"""LISA's prompt: the LLaVA-v1 conversation, the image placeholder, and the ``[SEG]`` token.

LISA was fine-tuned on questions of the form "<question> Please output segmentation mask." inside
LLaVA's v1 conversation ("USER: ... ASSISTANT:") with the image given as
``<im_start><image><im_end>`` before the question; it answers e.g. "Sure, [SEG]." and the hidden
state that produces ``[SEG]`` becomes SAM's prompt. Asking in the same form as training matters for
a frozen model, so the template is fixed here and only the question wording is configurable.
"""

from __future__ import annotations

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
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/ImportError variously
            raise LisaCheckpointError(f"no usable tokenizer in {folder}: {exc}") from exc
        self.use_im_start_end = use_im_start_end
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
        """Tokenise the conversation around the image placeholder, as LLaVA's ``tokenizer_image_token``.

        Each side is tokenised on its own (that is how LLaVA built its training inputs), with one BOS
        at the very start, whatever the tokenizer's own BOS setting is.
        """
        text = llava_v1_prompt(question, self.use_im_start_end)
        head, tail = text.split(IMAGE_PLACEHOLDER)
        enc = self.tokenizer
        before = [self.bos_token_id, *enc(head, add_special_tokens=False).input_ids]
        after = list(enc(tail, add_special_tokens=False).input_ids)
        return PromptTokens(before, after)

    def decode(self, ids: list[int]) -> str:
        """Answer text of generated ids, without BOS/EOS, with ``[SEG]`` kept (it is part of the answer)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.replace("\n", " ").split())
