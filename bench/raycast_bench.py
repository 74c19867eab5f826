"""Benchmark of the SIMULATED rooms' renderer: Open3D ray casting against the torch slab test.

Why: the full-scale 3D-net experiment renders its pseudo-label recordings on the GPU machine, which
has no Open3D; this measures what the torch caster (``reasoning_seg.sim.raycast``) costs there and
here, per 640x480 frame, and how closely its renders agree with Open3D's.

For each room (``--seeds``) and backend (``open3d``, ``torch-cpu``, ``torch-cuda``; those that are
available) it renders ``--frames`` poses of the room's recorded trajectory and reports the median
milliseconds per frame of the ray cast alone and of the whole render (cast + shading + texture,
which is the same numpy code for every backend), plus the agreement of depth / instance / colour
with the reference backend (Open3D where it imports, else torch-cpu).

Usage: ``python bench/raycast_bench.py [--seeds 0,3,7] [--frames 8] [--threads N]``. On the GPU
machine (no Open3D) only the torch rows appear.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reasoning_seg.camera import CameraIntrinsics  # noqa: E402
from reasoning_seg.sim.scene import (  # noqa: E402
    RAYCAST_DEVICE_ENV,
    RAYCAST_ENV,
    SyntheticScene,
    _camera_rays,
)

FULL = CameraIntrinsics(640, 480, 570.342205, 570.342205, 320.0, 240.0)  # Kinect-like, as in sun3d


def available_backends() -> list[str]:
    out = []
    try:
        import open3d  # noqa: F401

        out.append("open3d")
    except ImportError:
        pass
    import torch

    out.append("torch-cpu")
    if torch.cuda.is_available():
        out.append("torch-cuda")
    return out


def fresh_scene(doc: dict, backend: str) -> SyntheticScene:
    """A scene whose renderer uses ``backend`` (the choice is read from the environment once per scene)."""
    name, _, device = backend.partition("-")
    os.environ[RAYCAST_ENV] = name
    if device:
        os.environ[RAYCAST_DEVICE_ENV] = device
    scene = SyntheticScene.from_dict(doc)
    scene.render(FULL, np.eye(4))  # builds the caster (and, for CUDA, warms the kernels)
    return scene


def world_rays(pose: np.ndarray) -> np.ndarray:
    """(H*W, 6) float32 rays of one frame, laid out as the renderer passes them to its caster."""
    cam = _camera_rays(FULL)
    rays = np.empty((cam.shape[0], 6), dtype=np.float32)
    rays[:, :3] = pose[:3, 3]
    np.matmul(cam, pose[:3, :3].T.astype(np.float32), out=rays[:, 3:])
    return rays


def time_backend(scene: SyntheticScene, poses: list[np.ndarray]) -> tuple[float, float, list]:
    """(median cast ms, median render ms, renders) over ``poses``."""
    cast = scene._caster()[1]
    cast_ms, render_ms, renders = [], [], []
    for pose in poses:
        rays = world_rays(pose)
        t0 = time.perf_counter()
        cast(rays)
        cast_ms.append(1e3 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        renders.append(scene.render(FULL, pose))
        render_ms.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(cast_ms), statistics.median(render_ms), renders


def agreement(ref: list, out: list) -> tuple[float, float, float]:
    """Worst frame's pixel fractions: equal instance, depth within 1e-4 m (or 1e-5 rel.), equal colour."""
    inst, depth, colour = [], [], []
    for (c0, d0, i0), (c1, d1, i1) in zip(ref, out, strict=True):
        inst.append(np.mean(i0 == i1))
        depth.append(np.mean(np.abs(d1 - d0) <= np.maximum(1e-4, 1e-5 * d0)))
        colour.append(np.mean(np.all(c0 == c1, axis=2)))
    return min(inst), min(depth), min(colour)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,3,7", help="rooms (SyntheticScene.generate seeds), comma separated")
    ap.add_argument("--frames", type=int, default=8, help="poses per room (its recorded trajectory)")
    ap.add_argument("--backends", default="", help="comma separated subset of open3d,torch-cpu,torch-cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backends = available_backends()
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        missing = sorted(set(wanted) - set(backends))
        if missing:
            raise SystemExit(f"backends not available here: {missing} (available: {backends})")
        backends = wanted
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"# raycast bench: {FULL.width}x{FULL.height}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), gpu {gpu}"
    )
    print(f"# reference for agreement: {backends[0]}")
    print("| room | boxes | backend | cast ms | render ms | instance eq | depth ok | colour eq |")
    print("|---|---|---|---|---|---|---|---|")
    saved = {k: os.environ.get(k) for k in (RAYCAST_ENV, RAYCAST_DEVICE_ENV)}
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            room = SyntheticScene.generate(seed)
            doc, poses = room.to_dict(), room.trajectory(args.frames, seed=seed)
            ref = None
            for backend in backends:
                scene = fresh_scene(doc, backend)
                cast_ms, render_ms, renders = time_backend(scene, poses)
                ref = renders if ref is None else ref
                inst, depth, colour = agreement(ref, renders)
                cells = [seed, len(room.boxes()), scene.raycast_backend, f"{cast_ms:.1f}", f"{render_ms:.1f}"]
                cells += [f"{inst:.5f}", f"{depth:.5f}", f"{colour:.5f}"]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    main()
