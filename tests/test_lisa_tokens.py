"""LISA's prompt token ids against the real LLaMA SentencePiece vocabulary (issue 19).

No LLaMA tokenizer can be downloaded here, but llama.cpp ships the real LLaMA-1/2 vocabulary
(32,000 pieces with their scores and types) and tokenizer test vectors inside PyPI's
``llama-cpp-python`` source distribution. The file is fetched at test time into ``.cache/`` (never
committed); the test skips with the reason only when no registry is reachable.

1. A SentencePiece model is built from the vocabulary and must reproduce llama.cpp's ``.out``
   vectors: proof that it is the real LLaMA tokenizer, not an approximation.
2. LISA's tokens are added the way its merge script does (``[SEG]``, then ``<im_start>`` /
   ``<im_end>``: ids 32000-32002), the folder is saved as a checkpoint's tokenizer files, and the
   project's ``LisaTokenizer.encode_prompt`` must equal an independent encoding of upstream's rule:
   BOS, the system text and ``USER:``, ``<im_start>``, the image, ``<im_end>``, the question and
   ``ASSISTANT:``, each text run SentencePiece-encoded on its own without special tokens.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import urllib.request
from pathlib import Path

import pytest

from reasoning_seg.lisa.prompt import IM_END, IM_START, LLAVA_V1_SYSTEM, SEG_TOKEN, LisaTokenizer

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "llama-vocab"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
INDEX = "https://pypi.org/simple/llama-cpp-python/"
MEMBER = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
FILES = ("ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-spm.gguf.inp", "ggml-vocab-llama-spm.gguf.out")


def _fetch() -> Path:
    """The three vocabulary files in the cache, downloaded (and checked) once."""
    if all((CACHE / f).is_file() for f in FILES):
        return CACHE
    try:
        page = urllib.request.urlopen(INDEX, timeout=30).read().decode()
        url = next(u for u in re.findall(r'href="([^"#]+)', page) if u.endswith(SDIST))
        data = urllib.request.urlopen(url, timeout=300).read()
    except (OSError, StopIteration) as exc:
        pytest.skip(f"PyPI is not reachable, cannot fetch {SDIST} for the LLaMA vocabulary: {exc}")
    assert hashlib.sha256(data).hexdigest() == SDIST_SHA256, "the sdist on PyPI changed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in FILES:
            member = tar.extractfile(MEMBER.rsplit("/", 1)[0] + "/" + name)
            (CACHE / name).write_bytes(member.read())
    return CACHE


@pytest.fixture(scope="module")
def llama_sp_model() -> bytes:
    """A serialized SentencePiece model of the real LLaMA vocabulary (from llama.cpp's GGUF)."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(_fetch() / FILES[0])

    def array(key: str) -> list:
        field = reader.fields[key]
        return [field.parts[i] for i in field.data]

    assert bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
    model.trainer_spec.pad_id = -1
    # LLaMA's normaliser: no NFKC, a "▁" prefix, spaces kept as they are and written as "▁".
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    pieces = zip(
        array("tokenizer.ggml.tokens"),
        array("tokenizer.ggml.scores"),
        array("tokenizer.ggml.token_type"),
        strict=True,
    )
    for text, score, kind in pieces:  # GGUF's token types are SentencePiece's piece types
        p = model.pieces.add()
        p.piece, p.score, p.type = bytes(text).decode("utf-8"), float(score[0]), int(kind[0])
    model.trainer_spec.vocab_size = len(model.pieces)
    assert len(model.pieces) == 32000
    return model.SerializeToString()


def test_the_vocabulary_reproduces_llama_cpp_tokenizer_vectors(llama_sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=llama_sp_model)
    texts = (CACHE / FILES[1]).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    wanted = (CACHE / FILES[2]).read_text(encoding="utf-8").split("\n")
    assert len(texts) >= 40
    for text, want in zip(texts, wanted, strict=False):
        assert sp.encode(text) == [int(t) for t in want.split()], repr(text)


def _lisa_tokenizer_folder(tmp: Path, sp_model: bytes, legacy: bool, keep_model_file: bool) -> Path:
    """The tokenizer files of a LISA checkpoint: LLaMA's, plus the tokens LISA's merge script adds."""
    import json

    from transformers import AutoTokenizer

    base = tmp / "llama"
    base.mkdir()
    (base / "tokenizer.model").write_bytes(sp_model)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True, **special}
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.pad_token = tok.unk_token
    assert tok.add_tokens(SEG_TOKEN) == 1
    assert tok.add_tokens([IM_START, IM_END], special_tokens=True) == 2
    out = tmp / "lisa"
    tok.save_pretrained(str(out))
    if keep_model_file:  # the published LISA folders carry it; a re-saved one may not
        (out / "tokenizer.model").write_bytes(sp_model)
    return out


QUESTIONS = [
    "Where is the cup? Please output segmentation mask.",
    "something I can use to cut this paper Please output segmentation mask.",
    "the bin closest to the door, 2 m away (left) Please output segmentation mask.",
    "Où est la chaise ½? Please output segmentation mask.",
]


@pytest.mark.parametrize("keep_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json only"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "not legacy"])
def test_prompt_ids_are_lisas_with_the_real_llama_vocabulary(
    llama_sp_model, tmp_path, legacy, keep_model_file
):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=llama_sp_model)
    folder = _lisa_tokenizer_folder(tmp_path, llama_sp_model, legacy, keep_model_file)
    tok = LisaTokenizer(folder)
    assert (tok.seg_token_id, tok.bos_token_id, tok.eos_token_id) == (32000, 1, 2)
    im_start, im_end = 32001, 32002
    for q in QUESTIONS:
        p = tok.encode_prompt(q)
        # Independent encoding of upstream's rule (see the module docstring).
        assert p.before == [1, *sp.encode(f"{LLAVA_V1_SYSTEM} USER:"), im_start], q
        assert p.after == [im_end, *sp.encode(f"{q} ASSISTANT:")], q
    # The ids issue 19 read off upstream LISA with the real tokenizer: ':' then <im_start>;
    # <im_end> then '▁Where' (no lone '▁' 29871, no newline 13).
    p = tok.encode_prompt(QUESTIONS[0])
    assert p.before[-2:] == [29901, im_start] and p.after[:2] == [im_end, 6804]
    assert 29871 not in p.before[-3:] and 13 not in p.after
