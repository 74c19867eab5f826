"""LISA's SAM head on transformers' SamModel (reasoning_seg.lisa.sam) against segment-anything itself.

The key proof is numerical: segment-anything's *original* modules (ImageEncoderViT, PromptEncoder,
MaskDecoder, TwoWayTransformer), randomly initialised, are saved in LISA's checkpoint layout
(``model.visual_model.`` + segment-anything names), mapped with ``lisa_to_hf_sam_state``, loaded
strictly into ``LisaSamHead``, and both are run the way LISA runs SAM (``[SEG]`` embedding as the only
sparse token, ``no_mask_embed`` as dense embedding, single-mask output). Image embeddings, mask logits
and IoU must agree.

``segment_anything/__init__.py`` imports torchvision (no CPU build here), so the reference modules are
imported through a bare package object registered in ``sys.modules`` whose ``__path__`` is the installed
package directory: ``segment_anything.modeling`` then loads without ``__init__`` ever running. The
tests that need the reference skip when segment-anything (``pip install segment-anything==1.0``) is not
installed. A tiny architecture keeps everything on CPU in seconds, with the real 1024-pixel input.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from reasoning_seg.lisa.sam import (
    LISA_SAM_PREFIX,
    SAM_VIT_B,
    SAM_VIT_H,
    SAM_VIT_L,
    LisaSamHead,
    SamArchitecture,
    SamCheckpointError,
    SamImageTransform,
    build_sam,
    expected_lisa_sam_keys,
    hf_to_lisa_sam_state,
    infer_sam_architecture,
    lisa_to_hf_sam_state,
    postprocess_masks,
)

P = LISA_SAM_PREFIX
# Small but structurally complete: one windowed and one global block, decoder heads != 8 (not in any
# shape), IoU-head width distinct from the prompt width so a swapped dimension cannot go unnoticed.
TINY = SamArchitecture(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    prompt_dim=32,
    decoder_num_heads=4,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=48,
)


# ----------------------------------------------------------------------------------------- reference
def _sa_dir() -> str | None:
    """Directory of the installed segment_anything package, found on sys.path without importing it."""
    spec = importlib.machinery.PathFinder.find_spec("segment_anything")
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def _sa_modules() -> list[str]:
    return [k for k in sys.modules if k == "segment_anything" or k.startswith("segment_anything.")]


@pytest.fixture(scope="module")
def sam_modeling() -> Iterator[types.ModuleType]:
    """``segment_anything.modeling`` imported without running the package ``__init__`` (torchvision)."""
    where = _sa_dir()
    if where is None:
        pytest.skip("segment-anything is not installed (pip install segment-anything==1.0): no reference")
    saved = {k: sys.modules.pop(k) for k in _sa_modules()}
    bare = types.ModuleType("segment_anything")
    bare.__path__ = [where]
    sys.modules["segment_anything"] = bare
    try:
        yield importlib.import_module("segment_anything.modeling")
    finally:
        for k in _sa_modules():
            del sys.modules[k]
        sys.modules.update(saved)


def _reference_sam(modeling: types.ModuleType, arch: SamArchitecture) -> nn.Module:
    """segment-anything's Sam for ``arch``, assembled the way its build_sam.py / LISA's assemble it."""
    g = arch.embedding_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.encoder_embed_dim,
            depth=arch.encoder_depth,
            num_heads=arch.encoder_num_heads,
            mlp_ratio=arch.encoder_mlp_dim / arch.encoder_embed_dim,
            out_chans=arch.prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=arch.window_size,
            global_attn_indexes=arch.encoder_global_attn_indexes,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(g, g),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=arch.prompt_dim,
            transformer=modeling.TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_dim,
                num_heads=arch.decoder_num_heads,
                mlp_dim=arch.decoder_mlp_dim,
                attention_downsample_rate=arch.decoder_attention_downsample_rate,
            ),
            num_multimask_outputs=arch.num_multimask_outputs,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    ).eval()


@pytest.fixture(scope="module")
def reference(sam_modeling: types.ModuleType) -> nn.Module:
    """Tiny reference SAM with every tensor random (SAM zero-inits pos_embed/rel_pos, ones LayerNorms)."""
    torch.manual_seed(0)
    ref = _reference_sam(sam_modeling, TINY)
    gen = torch.Generator().manual_seed(1)
    norms = {f"{n}.weight" for n, m in ref.named_modules() if hasattr(m, "eps")}
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            noise = torch.randn(t.shape, generator=gen)
            if name in norms:
                t.copy_(1.0 + 0.2 * noise)
            elif "rel_pos" in name or "pos_embed" in name or name.endswith("bias"):
                t.copy_(0.2 * noise)
    return ref


@pytest.fixture(scope="module")
def lisa_state(reference: nn.Module) -> dict[str, torch.Tensor]:
    """The reference's weights in LISA's checkpoint layout (LISA's ``model.visual_model`` is a Sam)."""
    return {P + k: v.clone() for k, v in reference.state_dict().items()}


@pytest.fixture(scope="module")
def head(lisa_state: dict[str, torch.Tensor]) -> LisaSamHead:
    h = LisaSamHead(TINY, device="cpu")
    h.load_lisa_state(lisa_state)
    return h


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_decode(ref: nn.Module, emb: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """LISA's call of SAM for one image: its modified prompt encoder with text_embeds=[SEG][:, None].

    segment-anything's PromptEncoder has no ``text_embeds``; LISA's returns the text embeddings as the
    sparse tokens (concatenated to an empty (n, 0, C) tensor) and ``no_mask_embed`` broadcast as dense.
    """
    pe = ref.prompt_encoder
    n, c = prompt.shape
    sparse = torch.cat([torch.empty((n, 0, c)), prompt[:, None]], dim=1)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *pe.image_embedding_size)
    return ref.mask_decoder(
        image_embeddings=emb,
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


# ----------------------------------------------------------------------------------------- 1. equivalence
def test_matches_segment_anything_reference(reference: nn.Module, head: LisaSamHead) -> None:
    rgb = _rgb(480, 640, seed=3)
    pixels, resized_hw = SamImageTransform()(rgb)
    # Sam.preprocess (normalise + pad) on the resized image equals our transform's output.
    resized = torch.from_numpy(SamImageTransform().resize(rgb)).permute(2, 0, 1).float()
    torch.testing.assert_close(pixels, reference.preprocess(resized), atol=1e-5, rtol=0)

    prompt = torch.randn(1, TINY.prompt_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref_emb = reference.image_encoder(pixels[None])
        emb = head.encode(pixels[None])
        ref_masks, ref_iou = _reference_decode(reference, ref_emb, prompt)
        masks, iou = head.decode(emb, prompt)
    assert emb.shape == (1, TINY.prompt_dim, 64, 64) and masks.shape == (1, 256, 256) and iou.shape == (1,)
    assert ref_masks.shape == (1, 1, 256, 256) and ref_iou.shape == (1, 1)
    assert (
        ref_emb.std() > 0.5 and ref_masks.std() > 0.1
    )  # non-degenerate outputs, so closeness means something
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masks, ref_masks[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou[:, 0], atol=1e-4, rtol=1e-4)
    # Full-resolution logits, against Sam.postprocess_masks.
    ref_full = reference.postprocess_masks(ref_masks, resized_hw, rgb.shape[:2])
    full = postprocess_masks(masks, resized_hw, rgb.shape[:2])
    assert full.shape == (1, 480, 640) and full.dtype == torch.float32
    torch.testing.assert_close(full, ref_full[:, 0], atol=1e-4, rtol=1e-4)


def test_layer_norm_epsilons_match_reference(reference: nn.Module, head: LisaSamHead) -> None:
    """HF's decoder default eps (1e-6) differs from SAM's nn.LayerNorm default (1e-5): sam_config fixes it."""
    from reasoning_seg.lisa.sam_keys import _lisa_name_to_hf

    checked = 0
    for name, mod in reference.named_modules():
        if not hasattr(mod, "eps") or not hasattr(mod, "weight"):
            continue
        hf_weight = _lisa_name_to_hf(f"{name}.weight", TINY.iou_head_depth)
        hf_mod = head.sam.get_submodule(hf_weight.rsplit(".", 1)[0])
        assert hf_mod.eps == mod.eps, name
        checked += 1
    assert checked == 2 * TINY.encoder_depth + 2 + 2 + 4 * TINY.decoder_depth + 1 + 1


# ----------------------------------------------------------------------------------------- 2. mapping
def test_round_trip_is_identity(lisa_state: dict[str, torch.Tensor]) -> None:
    hf = lisa_to_hf_sam_state(lisa_state)
    assert (
        hf["shared_image_embedding.positional_embedding"]
        is hf["prompt_encoder.shared_embedding.positional_embedding"]
    )
    back = hf_to_lisa_sam_state(hf)
    assert back.keys() == lisa_state.keys()
    for k, v in lisa_state.items():
        assert back[k] is v
    again = lisa_to_hf_sam_state(back)
    assert again.keys() == hf.keys() and all(again[k] is hf[k] for k in hf)
    # And the HF model's own state dict survives the trip in the other direction.
    hf_model = build_sam(TINY, device="cpu").state_dict()
    assert lisa_to_hf_sam_state(hf_to_lisa_sam_state(hf_model)).keys() == hf_model.keys()


def test_tied_alias_must_agree() -> None:
    hf = build_sam(TINY, device="cpu").state_dict()
    hf["prompt_encoder.shared_embedding.positional_embedding"] = torch.zeros_like(
        hf["shared_image_embedding.positional_embedding"]
    )
    with pytest.raises(SamCheckpointError, match="tied"):
        hf_to_lisa_sam_state(hf)


@pytest.mark.parametrize("arch", [TINY, SAM_VIT_H], ids=["tiny", "vit_h"])
def test_expected_keys_equal_reference_state_dict(
    sam_modeling: types.ModuleType, arch: SamArchitecture
) -> None:
    with torch.device("meta"):
        ref = _reference_sam(sam_modeling, arch)
    want = {P + k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert expected_lisa_sam_keys(arch) == want
    assert expected_lisa_sam_keys(arch, "x.") == {"x." + k[len(P) :]: s for k, s in want.items()}


# ----------------------------------------------------------------------------------------- 3. inference
@pytest.mark.parametrize(
    ("arch", "heads"),
    [(TINY, 4), (SAM_VIT_B, 8), (SAM_VIT_L, 8), (SAM_VIT_H, 8)],
    ids=["tiny", "b", "l", "h"],
)
def test_infer_architecture_from_shapes(
    sam_modeling: types.ModuleType, arch: SamArchitecture, heads: int
) -> None:
    with torch.device("meta"):
        ref = _reference_sam(sam_modeling, arch)
    shapes = {P + k: tuple(v.shape) for k, v in ref.state_dict().items()}
    shapes["model.layers.0.self_attn.q_proj.weight"] = (4096, 4096)  # language-model keys are ignored
    assert infer_sam_architecture(shapes, decoder_num_heads=heads) == arch


def test_published_constants() -> None:
    assert (SAM_VIT_H.encoder_embed_dim, SAM_VIT_H.encoder_depth, SAM_VIT_H.encoder_num_heads) == (
        1280,
        32,
        16,
    )
    assert SAM_VIT_H.encoder_global_attn_indexes == (7, 15, 23, 31) and SAM_VIT_H.encoder_mlp_dim == 5120
    assert SAM_VIT_L.encoder_global_attn_indexes == (5, 11, 17, 23) and SAM_VIT_B.encoder_num_heads == 12
    assert SAM_VIT_H.prompt_dim == 256 and SAM_VIT_H.embedding_size == 64 and SAM_VIT_H.low_res_size == 256


def test_infer_rejects_non_sam_layouts() -> None:
    with pytest.raises(ValueError, match="no tensors under"):
        infer_sam_architecture({"model.layers.0.mlp.up_proj.weight": (11008, 4096)})
    shapes = expected_lisa_sam_keys(TINY)
    with pytest.raises(ValueError, match="no tensors under"):
        infer_sam_architecture(shapes, prefix="model.sam.")
    broken = dict(shapes)
    del broken[P + "image_encoder.patch_embed.proj.weight"]
    with pytest.raises(SamCheckpointError, match="patch_embed.proj.weight is missing"):
        infer_sam_architecture(broken)
    broken = dict(shapes)
    broken[P + "image_encoder.blocks.0.attn.rel_pos_h"] = (26, 16)
    with pytest.raises(SamCheckpointError, match="even length"):
        infer_sam_architecture(broken)


# ----------------------------------------------------------------------------------------- 4. strictness
_KEY = P + "mask_decoder.transformer.norm_final_attn.weight"


def _renamed(s: dict) -> tuple[dict, str]:
    s[P + "mask_decoder.transformer.norm_final.weight"] = s.pop(_KEY)
    return s, "norm_final.weight"


def _missing(s: dict) -> tuple[dict, str]:
    del s[P + "prompt_encoder.no_mask_embed.weight"]
    return s, "prompt_encoder.no_mask_embed.weight"


def _extra(s: dict) -> tuple[dict, str]:
    s[P + "image_encoder.blocks.0.attn.lora_A.weight"] = torch.zeros(4, 32)
    return s, "image_encoder.blocks.0.attn.lora_A.weight"


def _wrong_shape(s: dict) -> tuple[dict, str]:
    s[P + "mask_decoder.iou_token.weight"] = torch.zeros(1, 31)
    return s, "mask_decoder.iou_token.weight: got (1, 31), expected (1, 32)"


def _extra_mlp_layer(s: dict) -> tuple[dict, str]:
    s[P + "mask_decoder.output_hypernetworks_mlps.1.layers.3.weight"] = torch.zeros(4, 32)
    return s, "output_hypernetworks_mlps.1.layers.3.weight"


@pytest.mark.parametrize("corrupt", [_renamed, _missing, _extra, _wrong_shape, _extra_mlp_layer])
def test_strict_mapping_names_the_bad_tensor(lisa_state: dict[str, torch.Tensor], corrupt) -> None:
    state, needle = corrupt(dict(lisa_state))
    with pytest.raises(SamCheckpointError) as info:
        lisa_to_hf_sam_state(state)
    assert needle in str(info.value)
    with pytest.raises(SamCheckpointError, match=needle.split(":")[0].replace(".", r"\.")):
        LisaSamHead(TINY, device="meta").load_lisa_state(state, assign=True)


def test_extra_block_is_unexpected_for_a_given_architecture(lisa_state: dict[str, torch.Tensor]) -> None:
    state = dict(lisa_state)
    state[P + "image_encoder.blocks.2.norm1.weight"] = torch.ones(32)  # maps by name, but TINY has 2 blocks
    with pytest.raises(SamCheckpointError, match=r"unexpected.*blocks\.2\.norm1\.weight") as info:
        lisa_to_hf_sam_state(state, arch=TINY)
    assert info.value.unmapped == [P + "image_encoder.blocks.2.norm1.weight"]
    with pytest.raises(SamCheckpointError, match="missing"):  # inferred depth 3: block 2 is incomplete
        lisa_to_hf_sam_state(state)


def test_keys_outside_prefix_are_ignored(lisa_state: dict[str, torch.Tensor]) -> None:
    state = dict(lisa_state)
    state["model.embed_tokens.weight"] = torch.zeros(3, 4)
    state["lm_head.weight"] = torch.zeros(3, 4)
    assert lisa_to_hf_sam_state(state).keys() == lisa_to_hf_sam_state(lisa_state).keys()
    with pytest.raises(SamCheckpointError, match="no SAM tensors"):
        lisa_to_hf_sam_state({"lm_head.weight": torch.zeros(3, 4)})


# ----------------------------------------------------------------------------------------- 5. image side
def _load_reference_transforms(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """segment_anything/utils/transforms.py with torchvision stubbed (only the pure shape rule is used)."""
    where = _sa_dir()
    if where is None:
        pytest.skip("segment-anything is not installed (pip install segment-anything==1.0): no reference")

    def _unavailable(*_a, **_k):
        raise RuntimeError("torchvision stub: not callable in this test")

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")
    tvf.resize = tvf.to_pil_image = _unavailable
    for name, mod in (
        ("torchvision", tv),
        ("torchvision.transforms", tvt),
        ("torchvision.transforms.functional", tvf),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    path = f"{where}/utils/transforms.py"
    mod_spec = importlib.util.spec_from_file_location("_sam_reference_transforms", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def test_preprocess_shape_matches_resize_longest_side(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _load_reference_transforms(monkeypatch).ResizeLongestSide
    for h, w in [
        (480, 640),
        (640, 480),
        (968, 1296),
        (1, 1000),
        (1024, 1024),
        (2000, 3),
        (333, 777),
        (719, 1280),
    ]:
        assert SamImageTransform.preprocess_shape(h, w, 1024) == ref.get_preprocess_shape(h, w, 1024)


def test_image_transform_resize_normalise_pad() -> None:
    t = SamImageTransform()
    colour = np.array([200, 100, 30], dtype=np.uint8)
    flat = np.broadcast_to(colour, (480, 640, 3)).copy()
    x, hw = t(flat)
    assert hw == (768, 1024) and x.shape == (3, 1024, 1024) and x.dtype == torch.float32
    want = (torch.tensor([200.0, 100.0, 30.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    torch.testing.assert_close(x[:, :768, :].mean(dim=(1, 2)), want)
    assert torch.all(x[:, :768, :] == want[:, None, None])
    assert torch.all(x[:, 768:, :] == 0)  # padding is zero *after* normalisation
    # Portrait: padding on the right.
    x2, hw2 = t(np.ascontiguousarray(flat.transpose(1, 0, 2)))
    assert hw2 == (1024, 768) and torch.all(x2[:, :, 768:] == 0) and torch.all(x2[:, :, :768] != 0)
    with pytest.raises(ValueError, match="uint8"):
        t(flat.astype(np.float32))


@pytest.mark.parametrize(("hw", "resized"), [((480, 640), (768, 1024)), ((1536, 2048), (768, 1024))])
def test_resize_is_antialiased_bilinear(hw: tuple[int, int], resized: tuple[int, int]) -> None:
    """PIL bilinear (what segment-anything's resize does on PIL images) = torch's antialiased bilinear.

    On white noise the two agree to rounding (max 1 grey level) when enlarging and when shrinking,
    which pins both the filter (bicubic/nearest/Lanczos differ by tens of levels) and PIL's (w, h) order.
    """
    rgb = _rgb(*hw, seed=5)
    got = SamImageTransform().resize(rgb).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), resized, mode="bilinear", antialias=True
    )[0].permute(1, 2, 0)
    assert got.shape == (*resized, 3)
    diff = np.abs(got - ref.numpy())
    assert diff.max() <= 1.01 and diff.mean() < 0.5


def test_postprocess_puts_a_low_res_box_in_the_right_place() -> None:
    low = torch.full((2, 1, 256, 256), -10.0)
    low[:, :, 64:128, 128:192] = 10.0  # input-frame rows 256..512, cols 512..768
    out = postprocess_masks(low, (768, 1024), (480, 640))
    assert out.shape == (2, 480, 640)
    mask = (out[0] > 0).numpy()
    want = np.zeros((480, 640), bool)
    want[160:320, 320:480] = True  # x 480/768 = 0.625
    iou = (mask & want).sum() / (mask | want).sum()
    assert iou > 0.97
    assert postprocess_masks(low[:, 0], (768, 1024), (480, 640)).shape == (2, 480, 640)


# ------------------------------------------------------------------------------------ 6. batching, dtypes
def test_batched_decode_equals_single_calls(head: LisaSamHead) -> None:
    gen = torch.Generator().manual_seed(6)
    emb = torch.randn(3, TINY.prompt_dim, 64, 64, generator=gen)
    prompts = torch.randn(3, TINY.prompt_dim, generator=gen)
    with torch.no_grad():
        masks, iou = head.decode(emb, prompts)
        singles = [head.decode(emb[i : i + 1], prompts[i : i + 1]) for i in range(3)]
    assert masks.shape == (3, 256, 256) and iou.shape == (3,)
    torch.testing.assert_close(masks, torch.cat([m for m, _ in singles]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, torch.cat([s for _, s in singles]), atol=1e-5, rtol=1e-5)
    assert (masks[0] - masks[1]).abs().max() > 1e-2  # different prompts, different masks


def test_batched_encode_equals_single_calls(head: LisaSamHead) -> None:
    t = SamImageTransform()
    pixels = torch.stack([t(_rgb(300, 200, seed=7))[0], t(_rgb(240, 320, seed=8))[0]])
    with torch.no_grad():
        both = head.encode(pixels)
        one = head.encode(pixels[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tracks_float32(head: LisaSamHead, lisa_state: dict, dtype: torch.dtype) -> None:
    low = LisaSamHead(TINY, device="cpu", dtype=dtype)
    low.load_lisa_state(lisa_state)
    assert low.dtype == dtype and low.sam.shared_image_embedding.positional_embedding.dtype == dtype
    pixels, _ = SamImageTransform()(_rgb(200, 260, seed=9))
    prompt = torch.randn(1, TINY.prompt_dim, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        emb32 = head.encode(pixels[None])
        m32, iou32 = head.decode(emb32, prompt)
        emb = low.encode(pixels[None])
        m, iou = low.decode(emb, prompt)
    assert emb.dtype == dtype and m.dtype == dtype and iou.dtype == dtype
    assert torch.isfinite(m.float()).all()
    # Rounding compounds through the layers; the masks must still agree in sign almost everywhere.
    assert (emb.float() - emb32).abs().mean() < 0.1 * emb32.abs().mean()
    assert ((m.float() > 0) == (m32 > 0)).float().mean() > 0.9


def test_float16_neck_runs_in_float32(lisa_state: dict) -> None:
    """LISA's encoder runs its conv neck in float32 under fp16 to avoid overflow; so must encode().

    Scaling the neck's first conv by 1e5 pushes its output past float16's 65504, which the following
    LayerNorm2d would turn into inf/nan in float16, and normalises away in float32.
    """
    state = dict(lisa_state)
    state[P + "image_encoder.neck.0.weight"] = state[P + "image_encoder.neck.0.weight"] * 1e5
    fp16 = LisaSamHead(TINY, device="cpu", dtype=torch.float16)
    fp16.load_lisa_state(state)
    fp32 = LisaSamHead(TINY, device="cpu")
    fp32.load_lisa_state(state)
    pixels, _ = SamImageTransform()(_rgb(128, 128, seed=13))
    with torch.no_grad():
        emb = fp16.encode(pixels[None])
        ref = fp32.encode(pixels[None])
        assert not torch.isfinite(fp16.sam.vision_encoder.neck(fp16._backbone(pixels[None]))).all()
    assert torch.isfinite(emb).all()
    assert (emb.float() - ref).abs().mean() < 0.1 * ref.abs().mean()


def test_meta_build_then_assign_equals_direct_load(head: LisaSamHead, lisa_state: dict) -> None:
    """The loader's path: build on meta, assign mapped tensors one by one, restore, run."""
    with torch.device("meta"):
        lazy = LisaSamHead(TINY)
    assert lazy.device.type == "meta"
    for name, tensor in lisa_to_hf_sam_state(lisa_state).items():
        mod_path, _, leaf = name.rpartition(".")
        lazy.sam.get_submodule(mod_path)._parameters[leaf] = nn.Parameter(tensor.clone(), requires_grad=False)
    lazy.restore_computed_buffers("cpu")
    assert lazy.sam.prompt_encoder.shared_embedding.positional_embedding is (
        lazy.sam.shared_image_embedding.positional_embedding
    )
    assigned = LisaSamHead(TINY, device="meta")
    assigned.load_lisa_state(lisa_state, assign=True)
    emb = torch.randn(1, TINY.prompt_dim, 64, 64, generator=torch.Generator().manual_seed(11))
    prompt = torch.randn(1, TINY.prompt_dim, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        want = head.decode(emb, prompt)
        for h in (lazy, assigned):
            got = h.decode(emb, prompt)
            torch.testing.assert_close(got[0], want[0])
            torch.testing.assert_close(got[1], want[1])
