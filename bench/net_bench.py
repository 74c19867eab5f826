"""3D U-Net speed and memory: forward at 100k / 300k / 1M voxels, and a training step.

The voxels are the shells of random boxes in a room (surfaces, as a TSDF map gives), so the sparse
neighbourhoods look like real scans. Runs the default MinkowskiNet14-style network (512-d features)
with the package's own sparse convolutions, on CPU or CUDA:

    python bench/net_bench.py --device cuda --sizes 100000,300000,1000000     # GPU machine
    python bench/net_bench.py --device cpu --sizes 50000 --net small          # anywhere

The training step is forward + Eq. 3 loss (random point-view pairs, 4 per voxel) + backward + SGD.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reasoning_seg.net.losses import LabelFreeLoss, PointViewPairs
from reasoning_seg.net.model import UNET_PRESETS, LabelFree3DNet, NetConfig
from reasoning_seg.net.sparse_conv import SparseTensor


def room_voxels(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) unique integer voxel coordinates on the shells of random boxes (surface-like)."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int, int]] = set()
    chunks = []
    total = 0
    while total < n:
        lo = rng.integers(0, 400, 3)
        size = rng.integers(10, 120, 3)
        hi = lo + size
        g = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        g = g.reshape(-1, 3)
        shell = np.any((g == lo) | (g == hi - 1), axis=1)
        pts = g[shell]
        keys = [tuple(p) for p in pts.tolist()]
        fresh = [k for k in keys if k not in seen]
        seen.update(fresh)
        if fresh:
            chunks.append(np.asarray(fresh, np.int64))
            total += len(fresh)
    return np.concatenate(chunks)[:n]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Parse arguments, time forward and a training step per size, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--net", default="minkunet14", choices=sorted(UNET_PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    net = LabelFree3DNet(NetConfig(unet=UNET_PRESETS[args.net])).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss_fn = LabelFreeLoss()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        coords = torch.from_numpy(room_voxels(n)).to(device)
        feats = torch.rand(n, net.config.unet.in_channels, device=device)
        x = SparseTensor.from_batch([coords], [feats])
        emb = torch.randn(256, device=device)
        m = 4 * n
        g = torch.Generator(device="cpu").manual_seed(0)
        pairs = PointViewPairs(
            point=torch.randint(0, n, (m,), generator=g).to(device),
            mask_logit=torch.randn(m, generator=g).to(device),
            image_feat=torch.randn(m, 256, generator=g).to(device),
        )
        times_f, times_t = [], []
        for rep in range(args.repeats + 1):
            net.eval()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                f = net(x)
                net.query_head.probabilities(f, emb)
            sync(device)
            tf = time.perf_counter() - t0
            peak_f = (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            )
            net.train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=args.amp):
                f = net(x)
                loss = loss_fn(net.query_head.logits(f, emb), net.spatial(f), pairs).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            tt = time.perf_counter() - t0
            peak_t = (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            )
            if rep > 0:  # the first round warms up kernels and the allocator
                times_f.append(tf)
                times_t.append(tt)
        rows.append((n, np.median(times_f), peak_f, np.median(times_t), peak_t))
        fwd_ms, step_ms = np.median(times_f) * 1000, np.median(times_t) * 1000
        print(f"{n} voxels: forward {fwd_ms:.0f} ms, train step {step_ms:.0f} ms", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(
        f"\n3D U-Net ({args.net}, {params:.1f} M parameters, {net.feature_dim}-d features) on {name}, "
        f"torch {torch.__version__}, {'bf16 autocast' if args.amp else 'fp32'}, median of {args.repeats}\n"
    )
    print("| voxels | forward ms | forward peak GiB | train step ms | train peak GiB | voxels/s (train) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, tf, pf, tt, pt in rows:
        print(f"| {n} | {tf * 1000:.0f} | {pf:.2f} | {tt * 1000:.0f} | {pt:.2f} | {n / tt:,.0f} |")


if __name__ == "__main__":
    main()
