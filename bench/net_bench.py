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
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reasoning_seg.net.losses import LabelFreeLoss, PointViewPairs
from reasoning_seg.net.model import UNET_PRESETS, LabelFree3DNet, NetConfig
from reasoning_seg.net.sparse_conv import SparseTensor, set_backend


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


def time_backend(net, backend, sizes, args, device, loss_fn) -> tuple[list[tuple], dict[int, torch.Tensor]]:
    """Forward and training-step times of ``net`` with sparse-conv ``backend``, fresh sites per repeat.

    The sites (and so every kernel map and spconv pair table) are rebuilt for every repeat, as for
    every new scene or query; the first round (kernel compilation, Triton autotuning) is reported
    apart. Returns the rows and the eval-mode output of each size (for the agreement column).
    """
    set_backend(net, backend, device)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.0)  # lr 0: weights stay comparable
    rows, outputs = [], {}
    for n in sizes:
        coords = torch.from_numpy(room_voxels(n)).to(device)
        feats = torch.rand(n, net.config.unet.in_channels, device=device)
        emb = torch.randn(256, device=device)
        m = 4 * n
        g = torch.Generator(device="cpu").manual_seed(0)
        pairs = PointViewPairs(
            point=torch.randint(0, n, (m,), generator=g).to(device),
            mask_logit=torch.randn(m, generator=g).to(device),
            image_feat=torch.randn(m, 256, generator=g).to(device),
        )
        times_f, times_t, first = [], [], 0.0
        for rep in range(args.repeats + 1):
            x = SparseTensor.from_batch([coords], [feats])
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
            if rep == 0:
                outputs[n] = f.float()
            peak_f = (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            )
            x = SparseTensor.from_batch([coords], [feats])
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
            if rep == 0:  # the first round compiles kernels and warms up the allocator
                first = tf + tt
            else:
                times_f.append(tf)
                times_t.append(tt)
        rows.append((backend, n, np.median(times_f), peak_f, np.median(times_t), peak_t, first))
        fwd_ms, step_ms = np.median(times_f) * 1000, np.median(times_t) * 1000
        print(
            f"{backend} {n} voxels: forward {fwd_ms:.1f} ms, train step {step_ms:.1f} ms "
            f"(first {first:.1f} s)",
            flush=True,
        )
    return rows, outputs


def main() -> None:
    """Parse arguments, time forward and a training step per size and backend, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--net", default="minkunet14", choices=sorted(UNET_PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--backends", default="torch", help="comma-separated: torch,spconv (same weights)")
    ap.add_argument(
        "--spconv-candidates",
        type=int,
        default=0,
        help="cut spconv-triton's autotuning to this many tile candidates per kernel (0: its full sweep)",
    )
    args = ap.parse_args()
    if args.spconv_candidates > 0 and "spconv" in args.backends:
        from reasoning_seg.net.spconv_backend import limit_autotune

        cut = limit_autotune(args.spconv_candidates)
        print(f"spconv autotuning cut to {args.spconv_candidates} candidate(s) in {cut} kernels")
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = LabelFree3DNet(NetConfig(unet=UNET_PRESETS[args.net])).to(device)
    loss_fn = LabelFreeLoss()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, outs = [], {}
    state = copy.deepcopy(net.state_dict())
    for backend in args.backends.split(","):
        net.load_state_dict(state)  # every backend starts from the same weights and BatchNorm statistics
        torch.manual_seed(1)
        r, outs[backend] = time_backend(net, backend, sizes, args, device, loss_fn)
        rows += r
    ref = outs.get("torch")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(
        f"\n3D U-Net ({args.net}, {params:.1f} M parameters, {net.feature_dim}-d features) on {name}, "
        f"torch {torch.__version__}, {'bf16 autocast' if args.amp else 'fp32'}, median of {args.repeats}; "
        "sites rebuilt every repeat (kernel maps included); 'first s': the untimed first forward + step "
        "(compilation, autotuning); 'rel. diff': max |out - out_torch| / max |out_torch| of the forward\n"
    )
    print(
        "| backend | voxels | forward ms | forward peak GiB | train step ms | train peak GiB | first s "
        "| rel. diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, n, tf, pf, tt, pt, first in rows:
        diff = (
            ""
            if ref is None or backend == "torch"
            else (f"{float((outs[backend][n] - ref[n]).abs().max() / ref[n].abs().max()):.1e}")
        )
        print(
            f"| {backend} | {n} | {tf * 1000:.1f} | {pf:.2f} | {tt * 1000:.1f} | {pt:.2f} | {first:.1f} "
            f"| {diff} |"
        )


if __name__ == "__main__":
    main()
