"""The LISA backend on tiny random checkpoints written in the published layout.

No real LISA weights exist here; these tests prove the loader by construction: the same files,
tensor names, tokenizer kind and prompting as ``xinlai/LISA-7B-v1``, at toy sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reasoning_seg.backends import segmenter_from_config  # noqa: E402
from reasoning_seg.config import SegmenterConfig  # noqa: E402
from reasoning_seg.lisa.checkpoint import LisaCheckpointError, WeightFiles  # noqa: E402
from reasoning_seg.lisa.model import clip_preprocess, load_lisa_model  # noqa: E402
from reasoning_seg.lisa.prompt import IM_END, IM_START, LisaTokenizer, llava_v1_prompt  # noqa: E402
from reasoning_seg.lisa.random_checkpoint import TINY, write_random_lisa_checkpoint  # noqa: E402
from reasoning_seg.lisa.segmenter import NO_SEG_LOGIT, LisaOptions, LisaSegmenter  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny LISA checkpoint (2 safetensors shards + index) and its CLIP folder."""
    return write_random_lisa_checkpoint(tmp_path_factory.mktemp("lisa") / "LISA-tiny", TINY, seed=0)


@pytest.fixture(scope="module")
def segmenter(tiny_ckpt) -> LisaSegmenter:
    path, clip = tiny_ckpt
    return LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cpu", max_batch=4))


def _images(n: int, seed: int = 0, size: tuple[int, int] = (120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_shard(folder: Path, edit) -> None:
    """Apply ``edit(state) -> state`` to the first safetensors shard and fix the index to match."""
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    state = edit(load_file(str(folder / shard)))
    save_file(state, str(folder / shard))
    wm = {k: v for k, v in index["weight_map"].items() if v != shard}
    wm.update(dict.fromkeys(state, shard))
    index["weight_map"] = wm
    index_path.write_text(json.dumps(index))


# ------------------------------------------------------------------------------------------- layout
def test_checkpoint_has_the_published_key_layout(tiny_ckpt):
    path, clip = tiny_ckpt
    keys = set(WeightFiles(path).shapes)
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.mm_projector.weight",
        "model.mm_projector.bias",
        "model.text_hidden_fcs.0.0.weight",
        "model.text_hidden_fcs.0.2.bias",
        "model.visual_model.image_encoder.patch_embed.proj.weight",
        "model.visual_model.prompt_encoder.no_mask_embed.weight",
        "model.visual_model.mask_decoder.iou_prediction_head.layers.2.weight",
    ):
        assert name in keys, name
    assert not any("vision_tower" in k for k in keys)  # LISA's merge script leaves CLIP out
    assert (path / "tokenizer.model").is_file() and (path / "added_tokens.json").is_file()
    assert any(k.startswith("vision_model.encoder.layers.") for k in WeightFiles(clip).shapes)


def test_loading_is_strict_and_puts_every_file_tensor_in_the_model(tiny_ckpt):
    path, clip = tiny_ckpt
    model = load_lisa_model(path, clip)
    files = dict(WeightFiles(path).iter_tensors())
    llm_state = model.llm.state_dict()
    for k, v in llm_state.items():
        assert torch.equal(v, files[k]), k
    from reasoning_seg.lisa.sam import hf_to_lisa_sam_state

    sam_back = hf_to_lisa_sam_state(model.sam.sam.state_dict(), "model.visual_model.")
    for k, v in sam_back.items():
        assert torch.equal(v, files[k]), k
    assert len(llm_state) + len(sam_back) == len(files)
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())


def test_bin_shards_load_like_safetensors(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bin_path, _ = write_random_lisa_checkpoint(tmp_path / "LISA-bin", TINY, seed=0, fmt="bin", shards=3)
    assert (bin_path / "pytorch_model.bin.index.json").is_file()
    a, b = load_lisa_model(path, clip), load_lisa_model(bin_path, clip)
    for (ka, va), (kb, vb) in zip(
        sorted(a.state_dict().items()), sorted(b.state_dict().items()), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka


# ------------------------------------------------------------------------------------------- queries
def test_query_end_to_end_shapes_and_answer(segmenter):
    imgs = _images(2) + _images(1, seed=5, size=(96, 72))
    out = segmenter.segment_images(imgs, "something I can use to cut this paper")
    assert len(out) == 3
    for img, seg in zip(imgs, out, strict=True):
        seg.validate(img.shape[0], img.shape[1], segmenter.embedding_dim)
        assert seg.answer == "[SEG]"
        assert 0.0 <= seg.confidence <= 1.0
        assert np.linalg.norm(seg.seg_embedding) > 0
        assert seg.image_features is not None and seg.image_features.shape == (TINY.out_dim, 64, 64)
        assert seg.mask_logits.std() > 0  # a real SAM output, not a constant
    # The [SEG] state depends on the image: different views, different embeddings.
    assert not np.allclose(out[0].seg_embedding, out[1].seg_embedding)


def test_deterministic(segmenter):
    imgs = _images(2, seed=1)
    a = segmenter.segment_images(imgs, "the bin closest to the door")
    b = segmenter.segment_images(imgs, "the bin closest to the door")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.mask_logits, y.mask_logits)
        assert np.array_equal(x.seg_embedding, y.seg_embedding)
        assert x.confidence == y.confidence


def test_batched_views_equal_one_by_one(tiny_ckpt, segmenter):
    imgs = _images(3, seed=2)
    batched = segmenter.segment_images(imgs, "where can I sit")
    path, clip = tiny_ckpt
    single = LisaSegmenter(segmenter.model, segmenter.tokenizer, LisaOptions(path=str(path), max_batch=1))
    one_by_one = single.segment_images(imgs, "where can I sit")
    for x, y in zip(batched, one_by_one, strict=True):
        assert x.answer == y.answer
        np.testing.assert_allclose(x.seg_embedding, y.seg_embedding, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(x.mask_logits, y.mask_logits, rtol=1e-4, atol=1e-4)
        assert abs(x.confidence - y.confidence) < 1e-5


def test_answer_without_seg_gives_no_mask(tmp_path):
    path, clip = write_random_lisa_checkpoint(tmp_path / "LISA-none", TINY, seed=1, answer="none")
    seg = LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cpu"))
    (out,) = seg.segment_images(_images(1), "a unicorn")
    assert out.answer == ""
    assert out.confidence == 0.0
    assert np.all(out.mask_logits == NO_SEG_LOGIT) and not out.mask.any()
    assert not out.seg_embedding.any()


def test_seg_embedding_is_the_state_of_the_step_that_outputs_seg(tmp_path):
    """An answer with words before [SEG]: the [SEG] prompt is the right decoding step's state.

    That is the hidden state of the step whose output is [SEG] (LISA's evaluate), checked against
    one plain full-sequence forward pass.
    """
    import sentencepiece as spm

    path, clip = write_random_lisa_checkpoint(
        tmp_path / "LISA-sentence", TINY, seed=2, answer="Sure it is [SEG] the"
    )
    seg = LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cpu", max_batch=4))
    m, tok = seg.model, seg.tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    chain = [*sp.encode("Sure it is"), tok.seg_token_id, *sp.encode("the")]
    k = chain.index(tok.seg_token_id)
    assert k >= 3
    images = _images(2, seed=3)
    prompt = tok.encode_prompt(seg.options.question_template.format(query="the chair"))
    pixels = torch.stack([clip_preprocess(img, m.clip_image_size) for img in images])
    embeds = m.prompt_embeddings(prompt, m.image_tokens(pixels))
    gen = m.generate(embeds, 16, tok.eos_token_id, tok.seg_token_id)
    assert gen.tokens == [chain, chain] and all(gen.has_seg)
    # Reference: no cache, the prompt and the answer up to (not including) [SEG] in one pass; the
    # last position is the one whose output is [SEG].
    answer = m.llm.model.embed_tokens(torch.tensor(chain[:k])).unsqueeze(0).expand(2, -1, -1)
    with torch.no_grad():
        hidden = m.llm.model(inputs_embeds=torch.cat([embeds, answer], dim=1)).last_hidden_state
    torch.testing.assert_close(gen.seg_hidden, hidden[:, -1], atol=1e-4, rtol=1e-4)
    prompt_last = hidden[:, embeds.shape[1] - 1]
    assert (gen.seg_hidden - prompt_last).abs().max() > 0.1  # a different state from the prompt's last
    out = seg.segment_images(images, "the chair")
    want = m.seg_embeddings(hidden[:, -1]).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i].seg_embedding, want[i], atol=1e-4, rtol=1e-4)
        assert "Sure" in out[i].answer and "[SEG]" in out[i].answer
    # Early stop (the default for a robot): decoding ends at [SEG] with the same state, and the
    # [SEG] probability is the softmax of the reference forward's last logits.
    stopped = m.generate(embeds, 16, tok.eos_token_id, tok.seg_token_id, stop_at_seg=True)
    assert stopped.tokens == [chain[: k + 1]] * 2 and gen.tokens == [chain, chain]
    torch.testing.assert_close(stopped.seg_hidden, gen.seg_hidden)
    want_p = torch.softmax(m.llm.lm_head(hidden[:, -1]).float(), dim=-1)[:, tok.seg_token_id]
    np.testing.assert_allclose(stopped.seg_prob, want_p.numpy(), rtol=1e-4, atol=1e-6)
    assert stopped.seg_prob == gen.seg_prob and 0.0 < stopped.seg_prob[0] <= 1.0
    assert seg.options.stop_at_seg and all(o.answer.endswith("[SEG]") for o in out)
    # The confidence can be the [SEG] probability instead of SAM's IoU head.
    seg_p = LisaSegmenter(m, tok, LisaOptions(path=str(path), confidence="seg_prob", max_batch=4))
    conf = [o.confidence for o in seg_p.segment_images(images, "the chair")]
    np.testing.assert_allclose(conf, want_p.numpy(), rtol=1e-4, atol=1e-6)


def test_seg_embedding_equals_a_literal_transcription_of_lisas_evaluate(tmp_path):
    """Upstream's evaluate path, transcribed independently, equals the KV-cache path.

    LISA's ``evaluate`` generates the answer, then recomputes the whole sequence once (input ids
    with LLaVA's image placeholder -200 replaced by the image features), builds ``seg_token_mask``
    from ``output_ids[:, 1:] == [SEG]`` with a zero appended and ``n_image - 1`` zeros prepended,
    and takes ``text_hidden_fcs`` of the final hidden states under that mask.
    """
    from reasoning_seg.lisa.prompt import IMAGE_TOKEN_INDEX

    path, clip = write_random_lisa_checkpoint(
        tmp_path / "LISA-eval", TINY, seed=5, answer="Sure it is [SEG] the"
    )
    seg = LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cpu", max_batch=4))
    m, tok = seg.model, seg.tokenizer
    image = _images(1, seed=11)
    prompt = tok.encode_prompt(seg.options.question_template.format(query="the door"))
    out = seg.segment_images(image, "the door")[0]
    # The answer, generated to EOS (LISA's evaluate does not stop at [SEG]).
    feats = m.image_tokens(torch.stack([clip_preprocess(image[0], m.clip_image_size)]))  # (1, n_image, H)
    gen = m.generate(m.prompt_embeddings(prompt, feats), 16, tok.eos_token_id, tok.seg_token_id)
    output_ids = torch.tensor([[*prompt.before, IMAGE_TOKEN_INDEX, *prompt.after, *gen.tokens[0]]])
    # Splice as LLaVA's prepare_inputs_labels_for_multimodal does.
    k = int((output_ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    text = m.llm.model.embed_tokens(output_ids[0].clamp(min=0))
    spliced = torch.cat([text[:k], feats[0], text[k + 1 :]]).unsqueeze(0)
    with torch.no_grad():
        hidden = m.llm.model(inputs_embeds=spliced).last_hidden_state  # output_hidden_states[-1]
    n_image = feats.shape[1]
    mask = output_ids[:, 1:] == tok.seg_token_id
    mask = torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
    mask = torch.cat([torch.zeros(1, n_image - 1, dtype=torch.bool), mask], dim=1)
    assert mask.shape[1] == hidden.shape[1] and int(mask.sum()) == 1
    want = m.llm.model.text_hidden_fcs[0](hidden[mask]).numpy()[0]
    np.testing.assert_allclose(out.seg_embedding, want, atol=1e-4, rtol=1e-4)


def test_view_confidence_kinds_by_hand():
    from reasoning_seg.lisa.segmenter import view_confidence

    logits = np.array([[-3.0, 0.0], [np.log(3.0), np.log(9.0)]], np.float32)  # sigmoids: 0.75, 0.9
    assert view_confidence("mask_margin", 0.5, 0.5, logits) == pytest.approx(2 * 0.825 - 1, abs=1e-6)
    assert view_confidence("mask_margin", 0.5, 0.5, -np.ones((2, 2), np.float32)) == 0.0
    assert view_confidence("sam_iou", 1.3, 0.2, logits) == 1.0  # clamped to [0, 1]
    assert view_confidence("seg_prob", 0.9, 0.2, logits) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown LISA confidence"):
        view_confidence("entropy", 0.5, 0.5, logits)


def test_prompt_follows_llava_v1_with_image_markers(segmenter):
    text = llava_v1_prompt("Q?")
    assert text.endswith(f"USER: {IM_START}<image>{IM_END}\nQ? ASSISTANT:")
    tok: LisaTokenizer = segmenter.tokenizer
    p = tok.encode_prompt("find the door Please output segmentation mask.")
    assert p.before[0] == tok.bos_token_id
    assert p.before[-1] == tok.tokenizer.convert_tokens_to_ids(IM_START)
    assert p.after[0] == tok.tokenizer.convert_tokens_to_ids(IM_END)
    assert tok.seg_token_id == TINY.vocab_size - 3


def test_clip_preprocessing_matches_transformers_pil_processor():
    # LLaVA (and so LISA) was trained with the PIL-based CLIPImageProcessor; transformers 5 names that
    # one CLIPImageProcessorPil (CLIPImageProcessor is the torchvision one when torchvision is
    # installed, and its antialiased tensor resize differs by a few grey levels).
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError:  # pragma: no cover - depends on the installed transformers
        pytest.skip("transformers has no PIL CLIP image processor")
    proc = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    for shape in ((480, 640), (640, 480), (300, 300)):
        img = _images(1, seed=3, size=shape)[0]
        ref = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]))
        ours = clip_preprocess(img, 224)
        assert ours.shape == ref.shape
        assert float((ours - ref).abs().max()) < 1e-4


# ------------------------------------------------------------------------------------------- failures
def test_renamed_tensor_fails_loudly(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bad = _copy(path, tmp_path / "renamed")

    def rename(state):
        k = next(k for k in state if k.startswith("model.layers."))
        state[k.replace("model.layers.", "model.layer.")] = state.pop(k)
        return state

    _rewrite_shard(bad, rename)
    with pytest.raises(
        LisaCheckpointError, match=r"1 missing .*model\.layers.*1 unexpected .*model\.layer\."
    ):
        load_lisa_model(bad, clip)


def test_clip_folder_as_published_loads_and_stays_strict(tmp_path, tiny_ckpt):
    """A CLIP folder with the computed ``position_ids`` loads; other extras are still refused.

    openai/clip-vit-large-patch14 carries ``vision_model.embeddings.position_ids``, a buffer
    transformers 5 computes and does not store: accepted by rule (the model's non-persistent
    buffers, shape checked), while any other extra or mis-shaped tensor is still refused.
    """
    from safetensors.torch import load_file, save_file

    path, clip = tiny_ckpt
    (shard,) = sorted(clip.glob("*.safetensors"))
    assert "vision_model.embeddings.position_ids" in load_file(str(shard))  # as published
    model = load_lisa_model(path, clip)
    emb = getattr(model.vision_tower, "vision_model", model.vision_tower).embeddings
    assert emb.position_ids.tolist() == [list(range(emb.num_positions))]

    def variant(name: str, edit) -> Path:
        out = _copy(clip, tmp_path / name)
        state = load_file(str(out / shard.name))
        edit(state)
        save_file(state, str(out / shard.name))
        return out

    def widen(state):
        state["vision_model.embeddings.position_ids"] = torch.arange(7).unsqueeze(0)

    with pytest.raises(LisaCheckpointError, match=r"wrong shape .*position_ids"):
        load_lisa_model(path, variant("wide", widen))

    def extra(state):
        state["vision_model.embeddings.position_bias"] = torch.zeros(3)

    with pytest.raises(LisaCheckpointError, match=r"1 unexpected .*position_bias"):
        load_lisa_model(path, variant("extra", extra))


def test_missing_tensor_fails_loudly(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bad = _copy(path, tmp_path / "missing")

    def drop(state):
        state.pop(next(k for k in state if "visual_model" in k))
        return state

    _rewrite_shard(bad, drop)
    with pytest.raises(LisaCheckpointError, match="1 missing"):
        load_lisa_model(bad, clip)


def test_wrong_shape_and_wrong_architecture_fail_loudly(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bad = _copy(path, tmp_path / "shape")

    def widen(state):
        k = next(k for k in state if k.endswith("mm_projector.weight") or k.endswith("q_proj.weight"))
        state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])
        return state

    _rewrite_shard(bad, widen)
    with pytest.raises(LisaCheckpointError, match="wrong shape"):
        load_lisa_model(bad, clip)
    # A config that disagrees with the weights (another model size) is refused before loading.
    other = _copy(path, tmp_path / "arch")
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LisaCheckpointError, match="missing"):
        load_lisa_model(other, clip)


def test_truncated_shard_and_corrupt_config_fail_loudly(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bad = _copy(path, tmp_path / "trunc")
    shard = sorted(bad.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(LisaCheckpointError, match="not a readable safetensors"):
        load_lisa_model(bad, clip)
    cfg = _copy(path, tmp_path / "cfg")
    (cfg / "config.json").write_text("{not json")
    with pytest.raises(LisaCheckpointError, match="not readable JSON"):
        load_lisa_model(cfg, clip)


def test_missing_folder_or_vision_tower_says_what_to_do(tmp_path, tiny_ckpt):
    path, _ = tiny_ckpt
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lisa_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lisa_vision_tower"):
        load_lisa_model(path)  # config names openai/clip-vit-large-patch14, not a local folder
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        load_lisa_model(empty)


def test_tokenizer_without_seg_is_refused(tmp_path, tiny_ckpt):
    path, clip = tiny_ckpt
    bad = _copy(path, tmp_path / "noseg")
    (bad / "added_tokens.json").write_text(json.dumps({"<im_start>": 201, "<im_end>": 202}))
    with pytest.raises(LisaCheckpointError, match=r"\[SEG\]"):
        LisaTokenizer(bad)


# ------------------------------------------------------------------------------------------- config
def test_segmenter_from_config_builds_lisa_and_checks_embedding_width(tiny_ckpt):
    path, clip = tiny_ckpt
    cfg = SegmenterConfig(
        backend="lisa", lisa_path=str(path), lisa_vision_tower=str(clip), embedding_dim=TINY.out_dim
    )
    seg = segmenter_from_config(cfg)
    assert seg.name == "lisa:LISA-tiny" and seg.embedding_dim == TINY.out_dim
    with pytest.raises(ValueError, match="embedding_dim"):
        segmenter_from_config(
            SegmenterConfig(backend="lisa", lisa_path=str(path), lisa_vision_tower=str(clip))
        )
    with pytest.raises(ValueError, match="fp32 on CPU"):
        segmenter_from_config(
            SegmenterConfig(
                backend="lisa",
                lisa_path=str(path),
                lisa_vision_tower=str(clip),
                lisa_device="cpu",
                lisa_dtype="bf16",
            )
        )


def test_static_decoder_equals_transformers_forward(segmenter):
    """The CUDA-graph decoder's arithmetic (run eagerly here) is transformers' LLaMA forward."""
    from reasoning_seg.lisa.static_decode import CAPACITY_STEP, StaticDecoder

    m, tok = segmenter.model, segmenter.tokenizer
    prompt = tok.encode_prompt("the chair Please output segmentation mask.")
    pixels = torch.stack([clip_preprocess(img, m.clip_image_size) for img in _images(2, seed=8)])
    embeds = m.prompt_embeddings(prompt, m.image_tokens(pixels))
    cache, h_ref = m.prefill(embeds)
    dec = StaticDecoder(m.llm.model, 2, embeds.shape[1] + 4, use_graph=True)  # no graph on CPU
    assert dec.capacity % CAPACITY_STEP == 0 and not dec.use_graph
    for _ in range(2):  # a decoder is reused by later queries: prefill starts over
        torch.testing.assert_close(dec.prefill(embeds), h_ref, atol=1e-4, rtol=1e-4)
    for t in ([5, 9], [13, 13], [tok.seg_token_id, 7]):
        step = torch.tensor(t)
        torch.testing.assert_close(dec.step(step), m.feed_token(cache, step), atol=1e-4, rtol=1e-4)
    assert dec.length == embeds.shape[1] + 3
    with pytest.raises(ValueError, match="does not fit"):
        dec.prefill(embeds[:1])


# ------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)"
)


@cuda
def test_cuda_bf16_agrees_with_cpu_fp32(tiny_ckpt, segmenter):
    path, clip = tiny_ckpt
    gpu = LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cuda", dtype="bf16"))
    assert gpu.model.dtype == torch.bfloat16 and gpu.model.llm_device.type == "cuda"
    imgs = _images(3, seed=4)
    for a, b in zip(
        segmenter.segment_images(imgs, "the chair"), gpu.segment_images(imgs, "the chair"), strict=True
    ):
        assert a.answer == b.answer
        cos = float(a.seg_embedding @ b.seg_embedding) / (
            np.linalg.norm(a.seg_embedding) * np.linalg.norm(b.seg_embedding)
        )
        assert cos > 0.99
        assert (a.mask == b.mask).mean() > 0.95


@cuda
def test_sam_and_llm_on_different_devices(tiny_ckpt, segmenter):
    path, clip = tiny_ckpt
    split = LisaSegmenter.load(
        LisaOptions(path=str(path), vision_tower=str(clip), device="cuda", sam_device="cpu", dtype="fp32")
    )
    assert split.model.llm_device.type == "cuda" and split.model.sam_device.type == "cpu"
    imgs = _images(2, seed=6)
    for a, b in zip(
        segmenter.segment_images(imgs, "the bin"), split.segment_images(imgs, "the bin"), strict=True
    ):
        np.testing.assert_allclose(a.seg_embedding, b.seg_embedding, rtol=1e-3, atol=1e-4)
        assert (a.mask == b.mask).mean() > 0.99


@cuda
def test_cuda_graph_decoding_equals_eager_decoding(tiny_ckpt):
    path, clip = tiny_ckpt
    seg = LisaSegmenter.load(LisaOptions(path=str(path), vision_tower=str(clip), device="cuda", dtype="fp32"))
    m, tok = seg.model, seg.tokenizer
    for query, n in (("the chair", 3), ("the bin closest to the door", 2), ("the chair", 3)):
        prompt = tok.encode_prompt(f"{query} Please output segmentation mask.")
        pixels = torch.stack([clip_preprocess(img, m.clip_image_size) for img in _images(n, seed=9)])
        embeds = m.prompt_embeddings(prompt, m.image_tokens(pixels))
        m.cuda_graphs = False
        eager = m.generate(embeds, 8, tok.eos_token_id, tok.seg_token_id)
        m.cuda_graphs = True
        graph = m.generate(embeds, 8, tok.eos_token_id, tok.seg_token_id)
        assert graph.tokens == eager.tokens and graph.has_seg == eager.has_seg
        torch.testing.assert_close(graph.seg_hidden, eager.seg_hidden, atol=1e-3, rtol=1e-3)
    assert 1 <= len(m._decoders) <= 2  # reused across queries of similar length
