r"""Query latency benchmark of the core (issue 8): p50/p95 per stage and the overhead around the 2D model.

A SIMULATED corridor walk (:class:`reasoning_seg.io.synthetic_stream.CorridorStream`, numpy only, so it runs
on the GPU machines, which have no Open3D) of ``--walk-frames`` frames is fed through ``pipeline.add_frame``
(every frame is offered to the keyframe window, every 4th is integrated), once per voxel size in
``--voxels``: the same walk and keyframe window (full, 30 keyframes) give maps of about 100k, 300k and 1M
surface voxels (one surface point per zero crossing; the table gives the exact counts).

On each map, ``pipeline.query`` is timed with a SIMULATED 2D model (:class:`SimulatedColourSegmenter`:
the mask is the red pixels, the corridor's red boxes being the target; all views return one
[SEG] embedding, so fusion finds the target and the REALM local stage runs). The 2D model's time
(stage ``segmentation``) is what a real LISA would replace; everything else is the overhead the
issue bounds (<= 30 ms on GPU for 4 views on a 300k-voxel map):

    overhead = total query wall time - segmentation

Stages (``StageTimer`` names): snapshot (map surface extraction + keyframe copy), view_selection,
segmentation (2D model), fusion (global, then again with the local close-ups), local_view_selection,
3d_net (only with ``--net``), packaging. By default one frame is integrated before each query,
as on the robot, so the snapshot re-extracts the surface every time; ``--static`` keeps the map still.

Paths (``--paths``): ``numpy`` is the reference implementation of view selection and fusion; ``torch``
runs them on ``--device`` (the batched torch path in fusion.py / view_selection.py), through the
pipeline's ``fusion.device`` parameter.

``--profile-dir`` also writes, per map, a torch.profiler table of one torch-path query and the number
of PyTorch operators each stage issues (``ops_<voxels>.md``). Those counts do not depend on the
machine, which makes them the CPU-side proxy for a GPU query's overhead: there the stages are bound by
kernel launches and host<->device copies, not by arithmetic (bench/results/query.md). Operators that
only make a view of a tensor (reshape, select, ...) launch nothing and are counted apart.

    python bench/query_bench.py --voxels 0.035,0.02 --table /tmp/query_cpu.md                  # here
    python bench/query_bench.py --map-backend torch --map-device cpu --paths torch --voxels 0.02 \
        --views 4 --repeats 5 --warmup 1 --profile-dir /tmp/qprof                             # op counts
    python bench/query_bench.py --map-backend torch --map-device cuda:0 --device cuda --net \
        --table $OUT/query_gpu.md                                                              # GPU
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import reasoning_seg.pipeline as pipeline_module  # noqa: E402
from reasoning_seg.camera import CameraIntrinsics  # noqa: E402
from reasoning_seg.config import PipelineConfig  # noqa: E402
from reasoning_seg.io.synthetic_stream import CorridorStream  # noqa: E402
from reasoning_seg.mapping.frames import RGBDFrame  # noqa: E402
from reasoning_seg.pipeline import ReasoningSegPipeline  # noqa: E402
from reasoning_seg.segmenter import ViewInput, ViewSegmentation  # noqa: E402

CAMERA = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)
STAGES = (
    "snapshot",
    "view_selection",
    "segmentation",
    "fusion",
    "local_view_selection",
    "3d_net",
    "packaging",
)
QUERY = "the red box"


def log(msg: str) -> None:
    print(f"[query_bench] {msg}", file=sys.stderr, flush=True)


class SimulatedColourSegmenter:
    """A SIMULATED 2D model: the target is every red pixel (the corridor's red boxes).

    It stands in for LISA only so that fusion gets realistic inputs (a target seen by most views, one
    [SEG] embedding, soft logits); its own time is the ``segmentation`` stage, which the overhead
    excludes. Masks are logit +4 on red pixels and -4 elsewhere; the embedding is one fixed unit
    vector plus a small per-view perturbation, so token attention agrees.
    """

    name = "simulated-colour"

    def __init__(self, embedding_dim: int) -> None:
        self.embedding_dim = embedding_dim
        rng = np.random.default_rng(0)
        e = rng.normal(size=embedding_dim)
        self._target = (e / np.linalg.norm(e)).astype(np.float32)

    def segment(self, views: Sequence[ViewInput], query: str) -> list[ViewSegmentation]:
        """One segmentation per view (red = target)."""
        out = []
        for v in views:
            c = v.color.astype(np.int16)
            red = (c[..., 0] > 100) & (c[..., 0] > 2 * c[..., 1]) & (c[..., 0] > 2 * c[..., 2])
            logits = np.where(red, 4.0, -4.0).astype(np.float32)
            noise = np.random.default_rng(v.keyframe_id).normal(scale=0.05, size=self.embedding_dim)
            out.append(
                ViewSegmentation(logits, 0.9, (self._target + noise).astype(np.float32), "the red box")
            )
        return out


@contextmanager
def stage_device(pipe: ReasoningSegPipeline, device: str | None) -> Iterator[None]:
    """Run view selection and fusion of ``pipe`` on ``device`` (None: the numpy path), then restore."""
    saved = pipe.config.fusion.device
    pipe.config.fusion.device = device or "numpy"
    try:
        yield
    finally:
        pipe.config.fusion.device = saved


def synchronize(device: str | None) -> None:
    """Wait for queued GPU work (the torch map backend integrates asynchronously)."""
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def random_net_checkpoint(folder: Path, embedding_dim: int) -> str:
    """A 3D-net checkpoint with RANDOM weights: the forward pass costs the same as a trained one's."""
    import torch

    from reasoning_seg.net.model import LabelFree3DNet, NetConfig

    torch.manual_seed(0)
    net = LabelFree3DNet(NetConfig(embed_dim=embedding_dim))
    return str(net.save(folder / "random_net.pt", meta={"note": "random weights, timing only"}))


def time_queries(
    pipe: ReasoningSegPipeline,
    live_frames: Iterator[RGBDFrame],
    num_views: int,
    repeats: int,
    warmup: int,
    live: bool,
    sync_device: str | None,
) -> tuple[dict[str, list[float]], list[float], list[str]]:
    """Per-stage seconds (0 when a stage did not run), total seconds and result summaries per query."""
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    totals, notes = [], []
    for i in range(warmup + repeats):
        if live:
            pipe.add_frame(next(live_frames))
            synchronize(sync_device)
        t0 = time.perf_counter()
        r = pipe.query(QUERY, num_views=num_views)
        dt = time.perf_counter() - t0
        if not r.success:
            raise RuntimeError(f"query failed: {r.message}")
        if i < warmup:
            continue
        totals.append(dt)
        for s in STAGES:
            stages[s].append(r.timings.get(s, 0.0))
        notes.append(f"{'found' if r.found else 'not found'}, {len(r.keyframe_ids)} views, {r.method}")
    return stages, totals, notes


def live_stream(last: RGBDFrame) -> Iterator[RGBDFrame]:
    """The last frame again and again with new stamps: the map changes, the window does not."""
    k = 0
    while True:
        k += 1
        yield replace(last, stamp=last.stamp + k / 30.0, frame_id=last.frame_id + k)


def build_map(
    args: argparse.Namespace, voxel: float, stream: CorridorStream, net_checkpoint: str, sync: str | None
) -> ReasoningSegPipeline:
    """A pipeline whose map and keyframe window hold the corridor walk at ``voxel`` metres."""
    cfg = PipelineConfig()
    cfg.map.voxel_size = voxel
    cfg.map.backend = args.map_backend
    cfg.map.device = args.map_device
    cfg.map.integrate_every = args.integrate_every
    cfg.views.local_views = args.local_views
    if net_checkpoint:
        cfg.net.checkpoint = net_checkpoint
        cfg.net.device = args.net_device or args.device
    pipe = ReasoningSegPipeline(cfg, SimulatedColourSegmenter(cfg.segmenter.embedding_dim))
    if net_checkpoint:
        log(f"3D net: {pipe.load_net()}")
    t0 = time.perf_counter()
    for frame in stream.frames(args.walk_frames):
        pipe.add_frame(frame)
    synchronize(sync)
    cfg.map.integrate_every = 1  # from now on (live queries) every offered frame changes the map
    log(
        f"map at {voxel * 100:g} cm: {len(pipe.surface()):,} surface voxels, "
        f"{len(pipe.keyframes.snapshot())} keyframes ({time.perf_counter() - t0:.0f} s)"
    )
    return pipe


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, q))


def cell(x: list[float]) -> str:
    if not any(x):
        return "-"
    return f"{pct(x, 50):.1f} / {pct(x, 95):.1f}"


def main(argv: list[str] | None = None) -> int:
    """Walk the corridor, time queries at each map size, print (and write) the markdown table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxels", default="0.035,0.02,0.011", help="voxel sizes (m): ~100k, 300k, 1M voxels")
    p.add_argument("--walk-frames", type=int, default=240, help="frames of the corridor walk (30 Hz)")
    p.add_argument("--views", default="4,8", help="global views per query (num_views)")
    p.add_argument("--paths", default="numpy,torch", help="numpy (reference) and/or torch")
    p.add_argument("--device", default="cpu", help="torch device of the torch path (cpu, cuda, cuda:0)")
    p.add_argument("--map-backend", default="auto", help="auto | open3d | torch | triton")
    p.add_argument("--map-device", default="CPU:0", help="CPU:0, or cuda:0 with the torch or triton backend")
    p.add_argument("--local-views", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--integrate-every", type=int, default=4, help="integrate every Nth frame of the walk")
    p.add_argument("--static", action="store_true", help="do not integrate a frame before each query")
    p.add_argument("--net", action="store_true", help="also run the 3D net (RANDOM weights, timing only)")
    p.add_argument("--net-device", default="", help="device of the 3D net (default: --device)")
    p.add_argument("--table", help="also write the markdown to this file (after every row)")
    p.add_argument("--profile-dir", help="write a torch.profiler table of one torch-path query per map here")
    args = p.parse_args(argv)

    voxels = [float(v) for v in args.voxels.split(",") if v]
    views = [int(v) for v in args.views.split(",") if v]
    paths = [s for s in args.paths.split(",") if s]
    tmp = tempfile.TemporaryDirectory()
    net_checkpoint = ""
    if args.net:
        net_checkpoint = random_net_checkpoint(Path(tmp.name), PipelineConfig().segmenter.embedding_dim)
    map_sync = args.map_device.lower() if args.map_device.lower().startswith("cuda") else None
    stream = CorridorStream(CAMERA)
    rows: list[list[str]] = []
    for voxel in voxels:
        pipe = build_map(args, voxel, stream, net_checkpoint, map_sync)
        live = live_stream(stream[args.walk_frames - 1])
        n = len(pipe.surface())
        for nv in views:
            for path in paths:
                device = None if path == "numpy" else args.device
                with stage_device(pipe, device):
                    stages, totals, notes = time_queries(
                        pipe, live, nv, args.repeats, args.warmup, not args.static, map_sync
                    )
                overhead = [t - s for t, s in zip(totals, stages["segmentation"], strict=True)]
                no_net = [o - s for o, s in zip(overhead, stages["3d_net"], strict=True)]
                label = "numpy" if device is None else f"torch ({device})"
                rows.append(
                    [f"{n:,}", f"{voxel * 100:g}", str(nv), label]
                    + [cell(stages[s]) for s in STAGES]
                    + [cell(totals), f"**{cell(overhead)}**"]
                    + ([cell(no_net)] if args.net else [])
                    + [notes[-1]]
                )
                log(" | ".join(rows[-1]))
                render(args, argv, rows)
                if args.profile_dir and device is not None and nv == views[0]:
                    out = Path(args.profile_dir) / f"profile_{n}.txt"
                    profile_query(pipe, device, nv, out, None if args.static else live)
    tmp.cleanup()
    print(render(args, argv, rows))
    return 0


def render(args: argparse.Namespace, argv: list[str] | None, rows: list[list[str]]) -> str:
    """The markdown of the rows so far (also written to ``--table``, so a cut-off run keeps its rows)."""
    header = ["voxels", "voxel cm", "views", "fusion/view path"] + [s.replace("_", " ") for s in STAGES]
    header += ["total", "overhead (total - 2D model)"]
    header += ["overhead without 3D net"] if args.net else []
    header += ["last result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(
        [
            _machine(),
            "",
            f"Command: `python bench/query_bench.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "",
            f"ms, p50 / p95 of {args.repeats} queries after {args.warmup} warm-up; "
            f"{'static map' if args.static else 'live map (one frame integrated before each query)'}; "
            f"map {args.map_backend} on {args.map_device}, {args.walk_frames}-frame walk; "
            f"{args.local_views} REALM local views; 2D model SIMULATED (red pixels)"
            + ("; 3D net with RANDOM weights" if args.net else "")
            + ".",
            "",
            *lines,
        ]
    )
    if args.table:
        Path(args.table).write_text(text + "\n")
    return text


VIEW_OPS = {
    "aten::" + n
    for n in (
        "select slice unsqueeze squeeze reshape view unbind transpose permute expand t alias as_strided "
        "detach detach_ resolve_conj resolve_neg lift_fresh"
    ).split()
}
"""Operators that only make a view of a tensor: no kernel launch (counted apart in the op table)."""


def profile_query(
    pipe: ReasoningSegPipeline, device: str, num_views: int, out: Path, live: Iterator[RGBDFrame] | None
) -> None:
    """torch.profiler over one query on the torch path: where the overhead goes (``--profile-dir``).

    The stage functions (and the map's surface extraction) are wrapped in ``record_function``
    ranges (stage_*), so the table's 'CPU total' of those rows is each stage's wall time inside the
    profile; ``ops_<n>.md`` next to it counts the operators each stage issued (see the docstring).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled(name: str, fn):
        def run(*a, **k):
            with record_function(f"stage_{name}"):
                return fn(*a, **k)

        return run

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    saved = pipeline_module.package_result
    if live is not None:  # a changed map, as in the timed queries: the snapshot extracts
        pipe.add_frame(next(live))
        synchronize(device)
    with stage_device(pipe, device):
        names = ("select_views", "select_local_views", "fuse")
        inner = {n: getattr(pipeline_module, n) for n in names}
        for n in names:
            setattr(pipeline_module, n, labelled(n, inner[n]))
        pipeline_module.package_result = labelled("package_result", saved)
        pipe.map.surface = labelled("surface", pipe.map.surface)
        try:
            with profile(activities=acts) as prof:
                pipe.query(QUERY, num_views=num_views)
        finally:
            pipeline_module.package_result = saved
            for n in names:
                setattr(pipeline_module, n, inner[n])
            del pipe.map.surface
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40))
    (out.parent / out.name.replace("profile_", "ops_").replace(".txt", ".md")).write_text(op_counts(prof))


def op_counts(prof) -> str:
    """Markdown: per stage, the top-level PyTorch operators it issued (launching / view-only)."""
    counts: dict[str, list[int]] = {}
    for e in prof.events():
        parent = e.cpu_parent
        if not e.name.startswith("aten::") or (parent is not None and parent.name.startswith("aten::")):
            continue
        while parent is not None and not parent.name.startswith("stage_"):
            parent = parent.cpu_parent
        row = counts.setdefault(parent.name.removeprefix("stage_") if parent else "(other)", [0, 0])
        row[e.name in VIEW_OPS] += 1
    lines = ["| stage | operators that launch | view-only operators |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in counts.items()]
    total = [sum(v[i] for v in counts.values()) for i in (0, 1)]
    return "\n".join([*lines, f"| **total** | **{total[0]}** | **{total[1]}** |", ""])


def _machine() -> str:
    parts = [f"Machine: {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    import os

    parts.append(f"{os.cpu_count()} CPUs")
    return ", ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
