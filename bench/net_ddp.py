"""1 GPU vs N GPUs (DDP): the same label-free training, the same loss curve (issue 6's scaling proof).

Trains the 3D network twice on the same pseudo-labels with ``python -m reasoning_seg.net.train``:
once on one GPU, once with Lightning's DDP strategy on ``--gpus`` GPUs, with the same total batch
(A.2: the batch is split over the devices), seed and schedule; then prints (and with ``--table``
writes) the mean loss terms per window of steps side by side. Rank 0 logs the loss of its share of
the batch, so the DDP curve is the noisier one; the windows average that out.

    python bench/net_ddp.py --pseudo-labels out/pseudo/seed0000.npz --gpus 2 --steps 300
    python bench/net_ddp.py --compare DIR   # only the table, from DIR/metrics_gpus{1,N}.csv

Needs CUDA for the training part (the ``device`` tool's nvidia-h200-x2 machine in this project).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TERMS = ("train/loss", "train/align", "train/spatial")


def read_curve(path: Path) -> dict[str, np.ndarray]:
    """Step and loss terms of the rows of a Lightning CSV log that hold a training loss."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    if not rows:
        raise ValueError(f"{path} has no train/loss rows")
    out = {"step": np.array([float(r["step"]) for r in rows])}
    for k in (*TERMS, "time/step_s"):
        out[k] = np.array([float(r[k]) if r.get(k) else np.nan for r in rows])
    return out


def compare(curves: dict[int, dict[str, np.ndarray]], window: int = 50) -> str:
    """Markdown table: mean of each loss term per window of steps, one column per GPU count."""
    gpus = sorted(curves)
    last = int(max(c["step"].max() for c in curves.values()))
    head = ["steps"] + [f"{t.split('/')[1]} ({g} GPU)" for t in TERMS for g in gpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lo in range(0, last + 1, window):
        cells = [f"{lo}-{lo + window - 1}"]
        for t in TERMS:
            for g in gpus:
                c = curves[g]
                m = (c["step"] >= lo) & (c["step"] < lo + window)
                cells.append(f"{np.nanmean(c[t][m]):.3f}" if m.any() else "–")
        lines.append("| " + " | ".join(cells) + " |")
    speed = ", ".join(f"{g} GPU: median step {np.nanmedian(curves[g]['time/step_s']):.3f} s" for g in gpus)
    return "\n".join(lines) + f"\n\n{speed}\n"


def train(pseudo: list[str], gpus: int, steps: int, out: Path, args: argparse.Namespace) -> float:
    """One training run; returns its wall time in seconds."""
    cmd = [
        sys.executable, "-m", "reasoning_seg.net.train", "--pseudo-labels", *pseudo, "--out", str(out),
        "--net", args.net, "--voxel-size", str(args.voxel_size), "--max-steps", str(steps),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", "0", "--log-every", "5",
        "--no-progress", "--num-workers", str(args.workers), "--accelerator", "gpu",
        "--devices", str(gpus), "--strategy", "ddp" if gpus > 1 else "auto",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pseudo-labels", nargs="*", default=[])
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--net", default="small")
    p.add_argument("--voxel-size", type=float, default=0.08)
    p.add_argument("--batch-size", type=int, default=8, help="total over the GPUs")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default="out/net_ddp")
    p.add_argument("--compare", default="", help="only build the table from DIR/metrics_gpus*.csv")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--table", default="", help="also write the table here")
    a = p.parse_args(argv)
    if a.compare:
        folder = Path(a.compare)
        files = sorted(folder.glob("metrics_gpus*.csv"))
        curves = {int(f.stem.removeprefix("metrics_gpus")): read_curve(f) for f in files}
    else:
        if not a.pseudo_labels:
            p.error("--pseudo-labels is required unless --compare is given")
        folder = Path(a.out)
        folder.mkdir(parents=True, exist_ok=True)
        curves = {}
        for g in (1, a.gpus):
            run = folder / f"gpus{g}"
            shutil.rmtree(run, ignore_errors=True)
            secs = train(a.pseudo_labels, g, a.steps, run, a)
            log = next(run.rglob("metrics.csv"))
            shutil.copy(log, folder / f"metrics_gpus{g}.csv")
            curves[g] = read_curve(log)
            print(f"{g} GPU(s): {secs:.0f} s")
    table = compare(curves, a.window)
    print(table)
    if a.table:
        Path(a.table).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
