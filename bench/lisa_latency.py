"""LISA per-view latency and peak memory for 1, 4 and 8 views, by stage.

Instantiates the *full-size* LISA-7B (or 13B) architecture with RANDOM weights (no checkpoint can be
downloaded here; latency does not depend on the weights' values) and runs the backend's own stages,
the ones :class:`reasoning_seg.lisa.segmenter.LisaSegmenter` calls, with every view of a query in one
batch: CLIP + projector, LLM prefill, greedy decoding of a FIXED number of tokens (EOS ignored so every
run generates the same amount), the ``[SEG]`` MLP, SAM's image encoder, SAM's mask decoder and mask
upsampling to 640x480.

    python bench/lisa_latency.py --arch lisa7b --device cuda --dtype bf16          # GPU machine
    python bench/lisa_latency.py --arch tiny --device cpu --dtype fp32             # anywhere

Prompt length: LISA's LLaVA-v1 prompt is ~41 tokens before the image (BOS, system text, "USER:",
<im_start>) and ~26 after it (<im_end>, a 15-word question with "Please output segmentation mask.",
"ASSISTANT:"), plus 256 image tokens; the bench uses random ids of those lengths.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reasoning_seg.lisa.prompt import PromptTokens
from reasoning_seg.lisa.random_checkpoint import LISA_7B, LISA_13B, TINY, build_random_lisa
from reasoning_seg.lisa.sam import SamImageTransform, postprocess_masks
from reasoning_seg.lisa.segmenter import preprocess_views, resolve_dtype

ARCHS = {"lisa7b": LISA_7B, "lisa13b": LISA_13B, "tiny": TINY}
STAGES = ("preprocess", "clip", "prefill", "decode", "seg_mlp", "sam_encoder", "sam_decoder", "upsample")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_once(model, images, prompt, new_tokens, device) -> dict[str, float]:
    """One query over ``len(images)`` views; seconds per stage."""
    t: dict[str, float] = {}

    def mark(stage: str, t0: float) -> float:
        _sync(device)
        now = time.perf_counter()
        t[stage] = t.get(stage, 0.0) + now - t0
        return now

    t0 = time.perf_counter()
    clip, sam_in = preprocess_views(
        images, model.clip_image_size, SamImageTransform(model.sam_arch.image_size)
    )
    pixels = torch.stack([p for p, _ in sam_in]).to(device, model.dtype)
    t0 = mark("preprocess", t0)
    tokens = model.image_tokens(clip.to(device))
    embeds = model.prompt_embeddings(prompt, tokens)
    t0 = mark("clip", t0)
    h, step = model.start_decoding(embeds, new_tokens)  # the decoder LisaModel.generate uses
    t0 = mark("prefill", t0)
    # LisaModel.generate's steps for an answer whose [SEG] is token ``new_tokens`` (stop_at_seg,
    # the default): random weights never say [SEG], so the stop is forced at that length.
    for _ in range(new_tokens):
        h = step(model.llm.lm_head(h).argmax(-1))
    t0 = mark("decode", t0)
    seg = model.seg_embeddings(h)
    t0 = mark("seg_mlp", t0)
    feats = model.sam.encode(pixels)
    t0 = mark("sam_encoder", t0)
    low, _iou = model.sam.decode(feats, seg.to(model.dtype))
    t0 = mark("sam_decoder", t0)
    for i, im in enumerate(images):
        postprocess_masks(low[i : i + 1], sam_in[i][1], im.shape[:2], model.sam_arch.image_size).cpu()
    mark("upsample", t0)
    return t


def main() -> None:
    """Parse arguments, build the model, time every view count, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="lisa7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 on CUDA, fp32 on CPU",
    )
    ap.add_argument("--views", default="1,4,8")
    ap.add_argument(
        "--new-tokens",
        type=int,
        default=6,
        help="decoding steps: where [SEG] comes in the answer with stop_at_seg ('Sure, [SEG]' is ~5-8)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--eager-too",
        action="store_true",
        help="also time decoding without CUDA graphs (transformers' forward + dynamic cache), same run",
    )
    ap.add_argument("--size", default="640x480", help="image WxH")
    ap.add_argument("--out", type=Path, default=None, help="write results.json and results.md here")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    arch = ARCHS[args.arch]
    w, h = (int(x) for x in args.size.split("x"))
    t_build = time.perf_counter()
    model = build_random_lisa(arch, seed=0, device=device, dtype=dtype)
    _sync(device)
    build_s = time.perf_counter() - t_build
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    vocab = arch.vocab_size
    prompt = PromptTokens(
        before=[1, *rng.integers(3, vocab - 3, 40).tolist()], after=rng.integers(3, vocab - 3, 26).tolist()
    )
    rows = []
    modes = [True, False] if args.eager_too and device.type == "cuda" else [device.type == "cuda"]
    for n, graphs in ((int(v), g) for v in args.views.split(",") for g in modes):
        model.cuda_graphs = graphs
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        run_once(model, images, prompt, args.new_tokens, device)  # warm-up (kernels, allocator, graph)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs = [run_once(model, images, prompt, args.new_tokens, device) for _ in range(args.repeats)]
        med = {s: float(np.median([r[s] for r in runs])) for s in STAGES}
        total = sum(med.values())
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append(
            {
                "views": n,
                "decoding": "CUDA graphs" if graphs else "eager",
                "total_s": total,
                "per_view_s": total / n,
                "peak_gib": peak,
                "stages_s": med,
            }
        )
        print(
            f"views={n}: {total * 1000:.0f} ms total, {total / n * 1000:.0f} ms/view, peak {peak:.1f} GiB",
            flush=True,
        )

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    head = (
        f"LISA latency, {args.arch} architecture with random weights ({n_params / 1e9:.2f} B parameters), "
        f"{str(dtype).removeprefix('torch.')} on {dev_name}, torch {torch.__version__}; {w}x{h} images, "
        f"{args.new_tokens} generated tokens, median of {args.repeats} after 1 warm-up; "
        f"model built in {build_s:.1f} s."
    )
    lines = [
        head,
        "",
        "| views | decoding | total ms | ms / view | peak GPU GiB | " + " | ".join(STAGES) + " |",
        "|---:|---|---:|---:|---:|" + "---:|" * len(STAGES),
    ]
    for r in rows:
        stages = " | ".join(f"{r['stages_s'][s] * 1000:.1f}" for s in STAGES)
        lines.append(
            f"| {r['views']} | {r['decoding']} | {r['total_s'] * 1000:.0f} | {r['per_view_s'] * 1000:.0f} "
            f"| {r['peak_gib']:.1f} | {stages} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(table + "\n")
        (args.out / "results.json").write_text(json.dumps({"head": head, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
