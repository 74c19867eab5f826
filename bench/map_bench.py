"""Benchmark of the voxel map (issue 7): speed, memory, accuracy, agreement, and an endless stream.

Sections (``--sections``, comma separated; all by default):

- ``speed``: integration ms/frame at 640x480 for each voxel size, for our map (each backend) and for
  plain Open3D ``VoxelBlockGrid`` use at the same settings (uint16 mm + uint8 colour images, as in
  Open3D's own examples); memory per m3 of observed space (bounding box of the surface).
- ``accuracy``: distance of the map's surface points to the benchmark world's meshes (mean / 95th
  percentile), exact and Kinect-like noisy depth (SIMULATED world; needs Open3D to render).
- ``sun3d``: agreement with Open3D's legacy TSDF on the real Sun3D frames. The issue names
  ``ScalableTSDFVolume`` as the reference, but in Open3D 0.20 it extracts nothing (reported below);
  the reference is therefore ``UniformTSDFVolume``, tiled into cubes so fine voxels fit in memory.
- ``stream``: a SIMULATED 30 Hz corridor walk (numpy only) of ``--minutes`` minutes replayed as fast
  as possible through the whole ingestion path (``pipeline.add_frame``), sampling RSS and blocks.

The GPU machine has PyTorch but no Open3D: there run
``python bench/map_bench.py --backends torch --device cuda --source corridor --sections speed,stream``
(or ``--frames DIR`` for a recorded sequence in the sequence_io folder format).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reasoning_seg.camera import CameraIntrinsics  # noqa: E402
from reasoning_seg.config import MapConfig, PipelineConfig  # noqa: E402
from reasoning_seg.io.sequence_io import FolderSequence  # noqa: E402
from reasoning_seg.io.synthetic_stream import CorridorStream  # noqa: E402
from reasoning_seg.mapping.frames import RGBDFrame, sanitize_frame  # noqa: E402
from reasoning_seg.mapping.voxel_map import VOXELS_PER_BLOCK, VoxelMap, open3d_available  # noqa: E402
from reasoning_seg.pipeline import ReasoningSegPipeline  # noqa: E402

CAMERA = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)
BLOCK_BYTES = VOXELS_PER_BLOCK * 20  # tsdf + weight + rgb, float32
DEFAULT_SUN3D = ROOT.parent / "shared" / "data" / "sun3d-studyroom"


def rss_mb() -> float:
    """Resident set size of this process in MB (from /proc, no psutil needed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def log(msg: str) -> None:
    print(f"[map_bench] {msg}", file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- frames
def world_frames(n: int, seed: int = 0, noise: bool = True) -> tuple[object, list[RGBDFrame]]:
    """A SIMULATED benchmark-world room loop at 640x480 (needs Open3D)."""
    from reasoning_seg.sim.scene import SyntheticScene, apply_depth_noise

    scene = SyntheticScene.generate(seed)
    rng = np.random.default_rng(seed)
    frames = []
    for i, T in enumerate(scene.trajectory(n, seed=seed)):
        view = scene._render_view(CAMERA, T, with_incidence=noise)
        depth = apply_depth_noise(view.depth, rng, view.incidence_cos) if noise else view.depth
        frames.append(RGBDFrame(view.color, depth, CAMERA, T, i / 30.0, i))
    return scene, frames


def load_frames(source: str, n: int, frames_dir: str | None) -> tuple[str, list[RGBDFrame]]:
    if frames_dir:
        seq = FolderSequence(frames_dir)
        frames = list(seq)
        name = f"{Path(frames_dir).name} ({len(frames)} real frames"
        if len(frames) < n:  # a short recording is replayed in a loop to time more frames
            frames = [frames[i % len(frames)] for i in range(n)]
            name += ", cycled"
        return name + ")", frames[:n]
    if source == "world":
        return f"benchmark world room 0, noisy depth ({n} frames)", world_frames(n)[1]
    stream = CorridorStream(CAMERA)
    return f"SIMULATED corridor ({n} frames)", list(stream.frames(n))


def clean(frames: list[RGBDFrame], cfg: MapConfig) -> tuple[list[RGBDFrame], float]:
    t0 = time.perf_counter()
    out = [sanitize_frame(f, cfg.depth_min, cfg.depth_max, cfg.min_valid_depth_fraction) for f in frames]
    return out, (time.perf_counter() - t0) / max(1, len(frames)) * 1e3


# ---------------------------------------------------------------------------------------- systems
class PlainOpen3D:
    """Plain Open3D VoxelBlockGrid use, as in Open3D's examples, at the map's settings."""

    name = "plain Open3D VoxelBlockGrid"

    def __init__(self, cfg: MapConfig) -> None:
        import open3d as o3d

        self.o3d, self.cfg = o3d, cfg
        self.dev = o3d.core.Device(cfg.device)
        f32 = o3d.core.float32
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            ("tsdf", "weight", "color"),
            (f32, f32, f32),
            ((1), (1), (3)),
            cfg.voxel_size,
            8,
            cfg.block_count,
            self.dev,
        )
        self.inputs: dict[int, tuple] = {}

    def prepare(self, i: int, f: RGBDFrame) -> None:
        """Sensor-native inputs (uint16 mm depth, uint8 colour), made before timing starts."""
        d16 = np.round(f.depth * 1000.0).astype(np.uint16)
        self.inputs[i] = (d16, np.ascontiguousarray(f.color), f.intrinsics.K, np.linalg.inv(f.T_world_cam))

    def integrate(self, i: int, f: RGBDFrame) -> None:
        o3d, c = self.o3d, self.cfg
        d16, col, K, ext = self.inputs[i]
        depth = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(d16)).to(self.dev)
        color = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(col)).to(self.dev)
        Kt, et = o3d.core.Tensor(K), o3d.core.Tensor(ext)
        blocks = self.grid.compute_unique_block_coordinates(
            depth, Kt, et, 1000.0, c.depth_max, trunc_voxel_multiplier=c.trunc_voxels
        )
        self.grid.integrate(
            blocks, depth, color, Kt, Kt, et, 1000.0, c.depth_max, trunc_voxel_multiplier=c.trunc_voxels
        )

    def sync(self) -> None:
        pass

    @property
    def num_blocks(self) -> int:
        return int(self.grid.hashmap().size())

    def surface(self) -> np.ndarray:
        pcd = self.grid.extract_point_cloud(weight_threshold=self.cfg.min_weight).cpu()
        return (
            pcd.point.positions.numpy().astype(np.float64) if "positions" in pcd.point else np.zeros((0, 3))
        )


class Ours:
    """Our VoxelMap with a given backend; ``resident``: frames uploaded to the GPU before timing."""

    def __init__(self, cfg: MapConfig, resident: bool = False) -> None:
        self.map = VoxelMap(cfg)
        self.resident = resident
        self.name = f"ours ({self.map.backend}{', frames already on the GPU' if resident else ''})"
        self.frames: dict[int, RGBDFrame] = {}

    def prepare(self, i: int, f: RGBDFrame) -> None:
        if self.resident:
            dev = self.map.grid.device
            self.frames[i] = RGBDFrame(
                color=self.map.grid._tensor(f.color).to(dev),
                depth=self.map.grid._tensor(f.depth).to(dev),
                intrinsics=f.intrinsics,
                T_world_cam=f.T_world_cam,
                stamp=f.stamp,
                frame_id=f.frame_id,
            )

    def integrate(self, i: int, f: RGBDFrame) -> None:
        self.map.integrate(self.frames.get(i, f))

    def sync(self) -> None:
        self.map.grid.synchronize()

    @property
    def num_blocks(self) -> int:
        return self.map.num_blocks

    def surface(self) -> np.ndarray:
        return self.map.surface().points


def make_systems(backends: list[str], cfg_kw: dict, resident: bool = False) -> list:
    out = []
    for b in backends:
        if b == "plain":
            out.append(PlainOpen3D(MapConfig(**cfg_kw)))
        else:
            out.append(Ours(MapConfig(backend=b, **cfg_kw)))
            if resident and b in ("torch", "triton") and "cuda" in cfg_kw["device"].lower():
                out.append(Ours(MapConfig(backend=b, **cfg_kw), resident=True))
    return out


def run_system(system, frames: list[RGBDFrame], warmup: int = 2) -> dict:
    for i, f in enumerate(frames):
        system.prepare(i, f)
    times = []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        system.integrate(i, f)
        system.sync()
        times.append(time.perf_counter() - t0)
    t = np.array(times[warmup:] if len(times) > warmup else times) * 1e3
    t0 = time.perf_counter()
    pts = system.surface()
    extract_ms = (time.perf_counter() - t0) * 1e3
    return {
        "ms": float(t.mean()),
        "p95": float(np.percentile(t, 95)),
        "points": pts,
        "extract_ms": extract_ms,
    }


def run_interleaved(systems: list, frames: list[RGBDFrame], warmup: int = 2) -> list[dict]:
    """Like :func:`run_system` for several systems, frame by frame in rotating order.

    On a shared machine the load changes during a run; interleaving exposes every system to the
    same load, so their ratio is meaningful even when the absolute numbers drift.
    """
    for s in systems:
        for i, f in enumerate(frames):
            s.prepare(i, f)
    times: list[list[float]] = [[] for _ in systems]
    n = len(systems)
    for i, f in enumerate(frames):
        for k in [(i + j) % n for j in range(n)]:
            t0 = time.perf_counter()
            systems[k].integrate(i, f)
            systems[k].sync()
            times[k].append(time.perf_counter() - t0)
    out = []
    for s, ts in zip(systems, times, strict=True):
        t = np.array(ts[warmup:] if len(ts) > warmup else ts) * 1e3
        t0 = time.perf_counter()
        pts = s.surface()
        out.append(
            {
                "ms": float(t.mean()),
                "median": float(np.median(t)),
                "p95": float(np.percentile(t, 95)),
                "points": pts,
                "extract_ms": (time.perf_counter() - t0) * 1e3,
            }
        )
    return out


# ---------------------------------------------------------------------------------------- sections
def section_speed(args, voxels, backends) -> str:
    name, frames = load_frames(args.source, args.n_frames, args.frames)
    log(f"speed: {name}")
    rows = []
    for vs in voxels:
        cfg_kw = {"voxel_size": vs, "device": args.device, "max_blocks": 0, "block_count": args.block_count}
        frames_c, sanitize_ms = clean(frames, MapConfig(**cfg_kw))
        systems = make_systems(backends, cfg_kw, resident=True)
        for b in ("torch", "triton"):  # CUDA context, kernels and Triton's compilation, untimed
            if b in backends and "cuda" in args.device.lower():
                run_system(Ours(MapConfig(backend=b, **cfg_kw)), frames_c[:3], warmup=0)
        # Open3D-based systems are interleaved frame by frame (same load for both); torch systems run
        # on their own, because torch's CPU thread pool keeps spinning after an op and would slow
        # whichever system runs next.
        o3d_like = [s for s in systems if not s.name.startswith(("ours (torch", "ours (triton"))]
        others = [s for s in systems if s not in o3d_like]
        results = dict(
            zip(map(id, o3d_like), run_interleaved(o3d_like, frames_c) if o3d_like else [], strict=True)
        )
        for s in others:
            results[id(s)] = run_interleaved([s], frames_c)[0]
        for system in systems:
            r = results[id(system)]
            pts = r["points"]
            vol = float(np.prod(np.ptp(pts, axis=0))) if len(pts) else float("nan")
            mb = system.num_blocks * BLOCK_BYTES / 1e6
            rows.append(
                [
                    f"{vs * 100:g} cm",
                    system.name,
                    args.device,
                    r["median"],
                    r["ms"],
                    r["p95"],
                    f"{sanitize_ms:.2f}",
                    system.num_blocks,
                    mb,
                    mb / vol,
                    r["extract_ms"],
                ]
            )
            log(f"  {vs} {system.name}: median {r['median']:.2f} ms/frame")
    head = [
        "voxel",
        "system",
        "device",
        "median ms/frame",
        "mean ms",
        "p95 ms",
        "sanitize ms",
        "blocks",
        "MB in blocks",
        "MB per m3 observed",
        "extract ms",
    ]
    return f"### Integration speed and memory: {name}, 640x480\n\n" + table(head, rows)


def mesh_distance(scene, pts: np.ndarray) -> np.ndarray:
    import open3d as o3d

    return scene.raycasting_scene.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()


def section_accuracy(args, voxels, backends) -> str:
    rows = []
    for noise in (False, True):
        scene, frames = world_frames(args.n_frames, seed=0, noise=noise)
        for vs in voxels:
            cfg_kw = {
                "voxel_size": vs,
                "device": args.device,
                "max_blocks": 0,
                "block_count": args.block_count,
            }
            frames_c, _ = clean(frames, MapConfig(**cfg_kw))
            for system in make_systems(backends, cfg_kw):
                pts = run_system(system, frames_c)["points"]
                d = mesh_distance(scene, pts) * 1e3
                rows.append(
                    [
                        "noisy" if noise else "exact",
                        f"{vs * 100:g} cm",
                        system.name,
                        len(pts),
                        float(np.median(d)),
                        float(d.mean()),
                        float(np.percentile(d, 95)),
                    ]
                )
                log(f"  accuracy {rows[-1]}")
    head = ["depth", "voxel", "system", "points", "median mm", "mean mm", "p95 mm"]
    return (
        "### Surface accuracy against the benchmark world's meshes "
        f"(SIMULATED room 0, {args.n_frames}-frame loop)\n\n" + table(head, rows)
    )


def reference_uniform_tsdf(frames: list[RGBDFrame], cfg: MapConfig, tile_voxels: int = 192) -> np.ndarray:
    """Open3D legacy UniformTSDFVolume surface, tiled (overlapping by one voxel) to bound memory."""
    import open3d as o3d

    vs, trunc = cfg.voxel_size, cfg.trunc_voxels * cfg.voxel_size
    intr = frames[0].intrinsics
    pin = o3d.camera.PinholeCameraIntrinsic(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)
    rgbd = [
        o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(f.color)),
            o3d.geometry.Image(np.ascontiguousarray(f.depth)),
            depth_scale=1.0,
            depth_trunc=cfg.depth_max,
            convert_rgb_to_intensity=False,
        )
        for f in frames
    ]
    pts_all = []
    for f in frames:
        p = f.intrinsics.unproject(f.depth)[0]
        pts_all.append(p @ f.T_world_cam[:3, :3].T + f.T_world_cam[:3, 3])
    pts = np.concatenate(pts_all)
    # Legacy voxels sit at origin + (i + 0.5) * vs: this origin puts them on our lattice (i * vs).
    lo = (np.floor((pts.min(0) - 2 * trunc) / vs) - 0.5) * vs
    hi = pts.max(0) + 2 * trunc
    step = (tile_voxels - 1) * vs
    out = []
    for x in np.arange(lo[0], hi[0], step):
        for y in np.arange(lo[1], hi[1], step):
            for z in np.arange(lo[2], hi[2], step):
                vol = o3d.pipelines.integration.UniformTSDFVolume(
                    length=tile_voxels * vs,
                    resolution=tile_voxels,
                    sdf_trunc=trunc,
                    color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
                    origin=np.array([x, y, z]),
                )
                for f, r in zip(frames, rgbd, strict=True):
                    vol.integrate(r, pin, np.linalg.inv(f.T_world_cam))
                p = np.asarray(vol.extract_point_cloud().points)
                if len(p):
                    out.append(p)
                del vol
    ref = np.concatenate(out) if out else np.zeros((0, 3))
    return np.unique(np.round(ref / (vs * 1e-3)).astype(np.int64), axis=0) * (vs * 1e-3)


def scalable_point_count(frames: list[RGBDFrame], cfg: MapConfig) -> int:
    import open3d as o3d

    intr = frames[0].intrinsics
    pin = o3d.camera.PinholeCameraIntrinsic(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)
    vol = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=cfg.voxel_size,
        sdf_trunc=cfg.trunc_voxels * cfg.voxel_size,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8,
    )
    for f in frames:
        r = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(f.color)),
            o3d.geometry.Image(np.ascontiguousarray(f.depth)),
            depth_scale=1.0,
            depth_trunc=cfg.depth_max,
            convert_rgb_to_intensity=False,
        )
        vol.integrate(r, pin, np.linalg.inv(f.T_world_cam))
    return len(vol.extract_point_cloud().points)


def section_sun3d(args, voxels, backends) -> str:
    from scipy.spatial import cKDTree

    seq = FolderSequence(args.sun3d)
    raw = list(seq)
    rows = []
    scalable = None
    for vs in voxels:
        cfg = MapConfig(voxel_size=vs, max_blocks=0, device=args.device, block_count=args.block_count)
        frames, _ = clean(raw, cfg)
        t0 = time.perf_counter()
        ref = reference_uniform_tsdf(frames, cfg)
        log(f"  sun3d reference {vs}: {len(ref)} points in {time.perf_counter() - t0:.1f} s")
        if scalable is None:
            scalable = scalable_point_count(frames, cfg)
        tree_ref = cKDTree(ref)
        for system in make_systems(
            backends,
            {"voxel_size": vs, "device": args.device, "max_blocks": 0, "block_count": args.block_count},
        ):
            pts = run_system(system, frames, warmup=0)["points"]
            d_or, _ = tree_ref.query(pts)
            d_ro, _ = cKDTree(pts).query(ref)
            rows.append(
                [
                    f"{vs * 100:g} cm",
                    system.name,
                    len(pts),
                    len(ref),
                    float(d_or.mean() * 1e3),
                    float(np.percentile(d_or, 95) * 1e3),
                    float(d_ro.mean() * 1e3),
                    float(np.percentile(d_ro, 95) * 1e3),
                    float(np.mean(d_or <= vs) * 100),
                    float(np.mean(d_ro <= vs) * 100),
                ]
            )
            log(f"  sun3d {rows[-1]}")
    head = [
        "voxel",
        "system",
        "points",
        "ref points",
        "ours->ref mean mm",
        "ours->ref p95 mm",
        "ref->ours mean mm",
        "ref->ours p95 mm",
        "ours within 1 voxel %",
        "ref within 1 voxel %",
    ]
    return (
        f"### Agreement with Open3D's UniformTSDFVolume on the real Sun3D frames ({len(raw)} frames)\n\n"
        f"Open3D 0.20's ScalableTSDFVolume, the reference the issue names, extracted {scalable} points "
        "from the same frames (it extracts nothing in this version), so the legacy UniformTSDFVolume is the "
        "reference "
        "(same voxel size, truncation and depth range; tiled in 192^3-voxel cubes).\n\n" + table(head, rows)
    )


def section_stream(args) -> str:
    stream = CorridorStream(CAMERA)
    n = int(round(args.minutes * 60 * stream.fps))
    backend = args.stream_backend
    cfg = PipelineConfig()
    cfg.update(
        {
            "map.voxel_size": args.stream_voxel,
            "map.keep_radius": args.keep_radius,
            "map.max_blocks": args.max_blocks,
            "map.backend": backend,
            "map.device": args.device,
        }
    )
    pipe = ReasoningSegPipeline(cfg)
    log(f"stream: rendering one {stream.period} m period ({stream.frames_per_period} frames) ...")
    for i in range(stream.frames_per_period):  # fill the render cache outside the timed run
        stream[i]
    samples = []
    every = int(10 * stream.fps)  # every 10 s of stream time
    t_start = time.perf_counter()
    times = np.zeros(n)
    for i in range(n):
        f = stream[i]
        t0 = time.perf_counter()
        pipe.add_frame(f)
        pipe.map.grid.synchronize()
        times[i] = time.perf_counter() - t0
        if i % every == 0 or i == n - 1:
            gpu = ""
            on_gpu = "cuda" in str(getattr(pipe.map.grid, "device", ""))
            if pipe.map.backend in ("torch", "triton") and on_gpu:
                import torch

                gpu = f"{torch.cuda.memory_allocated() / 1e6:.0f}"
            samples.append(
                (
                    i / stream.fps / 60,
                    pipe.map.num_blocks,
                    rss_mb(),
                    pipe.map.memory_bytes() / 1e6,
                    len(pipe.keyframes),
                    gpu,
                )
            )
    wall = time.perf_counter() - t_start
    warm = max(1, len(samples) // 5)
    after = np.array([s[2] for s in samples[warm:]])
    blocks_after = [s[1] for s in samples[warm:]]
    shown = (
        samples
        if len(samples) <= 13
        else [samples[int(round(k))] for k in np.linspace(0, len(samples) - 1, 13)]
    )
    rows = [[f"{s[0]:.1f}", s[1], s[2], s[3], s[4], s[5] or "-"] for s in shown]
    summary = table(
        [
            "stream minutes",
            "frames",
            "wall s",
            "x real time",
            "ms/frame (add_frame)",
            "p95 ms",
            "blocks after warm-up (min-max)",
            "RSS drift after warm-up MB",
        ],
        [
            [
                f"{args.minutes:g}",
                n,
                wall,
                n / stream.fps / wall,
                float(times.mean() * 1e3),
                float(np.percentile(times, 95) * 1e3),
                f"{min(blocks_after)}-{max(blocks_after)}",
                float(after.max() - after[0]) if len(after) else 0.0,
            ]
        ],
    )
    return (
        f"### Endless stream: SIMULATED corridor, 640x480 at 30 Hz, {args.minutes:g} min, "
        "replayed as fast as possible\n\n"
        f"Whole ingestion path (`pipeline.add_frame`: sanitize, map, keyframe window); map backend "
        f"{pipe.map.backend} on {args.device}, {args.stream_voxel * 100:g} cm voxels, keep_radius "
        f"{args.keep_radius} m, max_blocks {args.max_blocks}; warm-up = first {warm} sample(s).\n\n"
        + summary
        + "\n\n"
        + table(["stream min", "blocks", "RSS MB", "voxel storage MB", "keyframes", "GPU MB"], rows)
    )


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    has_o3d = open3d_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="speed,accuracy,sun3d,stream")
    p.add_argument("--voxels", default="0.01,0.02,0.05", help="voxel sizes in metres")
    p.add_argument("--backends", default="", help="open3d,torch,triton,plain (default: what is installed)")
    p.add_argument("--device", default="CPU:0", help="CPU:0, CUDA:0 / cuda (torch backend)")
    p.add_argument("--source", choices=("world", "corridor"), default="world" if has_o3d else "corridor")
    p.add_argument("--frames", help="time a recorded sequence (sequence_io folder format) instead")
    p.add_argument("--n-frames", type=int, default=60)
    p.add_argument("--block-count", type=int, default=10000, help="initial block capacity (all systems)")
    p.add_argument("--sun3d", default=str(DEFAULT_SUN3D))
    p.add_argument("--minutes", type=float, default=1.0, help="stream length in minutes of 30 Hz video")
    p.add_argument("--stream-voxel", type=float, default=0.05)
    p.add_argument("--stream-backend", default="auto")
    p.add_argument("--keep-radius", type=float, default=4.0)
    p.add_argument("--max-blocks", type=int, default=4000)
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument(
        "--record",
        help="write the benchmark-world loop (--n-frames, 640x480, noisy) to this folder in the sequence "
        "format and exit: carry it to a machine without Open3D and time it there with --frames",
    )
    args = p.parse_args(argv)
    if args.record:
        from reasoning_seg.io.sequence_io import write_frame, write_intrinsics_txt

        out = Path(args.record)
        out.mkdir(parents=True, exist_ok=True)
        write_intrinsics_txt(out / "camera-intrinsics.txt", CAMERA)
        for f in world_frames(args.n_frames)[1]:
            write_frame(out, f)
        log(f"wrote {args.n_frames} frames to {out}")
        return 0

    voxels = [float(v) for v in args.voxels.split(",") if v]
    if args.backends:
        backends = [b for b in args.backends.split(",") if b]
    else:
        backends = (["open3d", "plain"] if has_o3d else []) + (["torch"] if _has_torch() else [])
    sections = [s for s in args.sections.split(",") if s]
    parts = []
    for s in sections:
        t0 = time.perf_counter()
        if s == "speed":
            parts.append(section_speed(args, voxels, backends))
        elif s == "accuracy":
            parts.append(section_accuracy(args, voxels, backends))
        elif s == "sun3d":
            parts.append(section_sun3d(args, voxels, backends))
        elif s == "stream":
            parts.append(section_stream(args))
        else:
            raise SystemExit(f"unknown section {s!r}")
        log(f"section {s} took {time.perf_counter() - t0:.0f} s")
    versions = [f"numpy {np.__version__}"]
    if has_o3d:
        import open3d

        versions.append(f"open3d {open3d.__version__}")
    if _has_torch():
        import torch

        versions.append(
            f"torch {torch.__version__}"
            + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
        )
    head = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}, "
        + ", ".join(versions)
        + f". Command: `python bench/map_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
    )
    text = head + "\n\n" + "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
