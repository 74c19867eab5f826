"""Resident memory over repeated save/load cycles of the core pipeline (issue 17: does RSS grow?).

Builds a map from the SIMULATED corridor walk, then saves and loads it ``--cycles`` times into one
directory and prints the process's RSS every ``--every`` cycles as a markdown table. A leak shows as
a rising column; the allocator's high-water mark as a step that then stays flat. glibc's malloc
arenas are capped as the node caps them (``reasoning_seg.ros.node.limit_malloc_arenas``).

    python bench/saveload_bench.py --cycles 50
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from reasoning_seg.config import PipelineConfig
from reasoning_seg.io.synthetic_stream import CorridorStream
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.ros.node import limit_malloc_arenas


def rss_mib() -> float:
    """This process's resident set (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Build, then save/load repeatedly; print RSS per ``--every`` cycles."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--frames", type=int, default=90, help="corridor frames integrated before the cycles")
    ap.add_argument("--voxel", type=float, default=0.04)
    args = ap.parse_args()
    limit_malloc_arenas()
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": args.voxel})
    pipe = ReasoningSegPipeline(cfg)
    stream = CorridorStream()
    for i in range(args.frames):
        pipe.add_frame(stream[i])
    rows = [(0, rss_mib(), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "map"
        t0 = time.perf_counter()
        for k in range(1, args.cycles + 1):
            pipe.save(target, allow_empty_overwrite=True)
            pipe.load(target)
            gc.collect()
            if k % args.every == 0:
                rows.append((k, rss_mib(), (time.perf_counter() - t0) / k))
    print(
        f"\nSave/load cycles of a {pipe.map.num_blocks}-block map with {len(pipe.keyframes)} keyframes "
        f"({args.voxel} m voxels), Python {platform.python_version()}, {platform.machine()}\n"
    )
    print("| cycles | RSS MiB | s per cycle |")
    print("|---:|---:|---:|")
    for k, r, s in rows:
        print(f"| {k} | {r:.0f} | {s:.2f} |")


if __name__ == "__main__":
    main()
