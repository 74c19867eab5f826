"""A SIMULATED endless RGB-D stream (numpy only): a camera walking down an infinite corridor.

Why it exists: bounded memory has to be shown on a stream that never ends and keeps entering new
space, at 30 Hz, on machines without Open3D (the GPU machines) and without a recording. The
benchmark world (:mod:`reasoning_seg.sim`) needs Open3D to render, and a room loop revisits the same
space. This corridor is a SIMULATION: floor, ceiling, two walls and box-shaped obstacles repeating
every ``period`` metres along +x; the camera advances at ``speed`` m/s, sways its heading and height,
and renders exact z-depth (no sensor noise) by ray casting against the planes and boxes.

Because the world and the camera's sway repeat every ``period`` metres, the images of frame ``i``
equal those of frame ``i mod frames_per_period``; only the pose moves on. :class:`CorridorStream`
renders one period once and replays it with shifted poses, so a 30-minute stream costs the
integration only, which is what a replay "faster than real time" has to measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.mapping.frames import RGBDFrame

MAX_RANGE = 10.0
"""Metres: farther surfaces read as 'no return', as on a real RGB-D sensor."""


class CorridorStream:
    """Frames of the SIMULATED corridor walk; index with ``stream[i]`` or iterate ``stream.frames(n)``."""

    def __init__(
        self,
        intrinsics: CameraIntrinsics | None = None,
        fps: float = 30.0,
        speed: float = 0.6,
        period: float = 2.4,
        width: float = 3.0,
        height: float = 2.6,
        cache: bool = True,
    ) -> None:
        self.intrinsics = intrinsics or CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)
        self.fps = float(fps)
        self.speed = float(speed)
        self.period = float(period)
        self.width = float(width)
        self.height = float(height)
        step = self.speed / self.fps
        self.frames_per_period = max(1, round(self.period / step))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._rays = self.intrinsics.pixel_rays().reshape(-1, 3)

    # ------------------------------------------------------------------ camera path
    def pose(self, index: int) -> np.ndarray:
        """``T_world_cam`` of frame ``index``: period-exact sway on top of a steady walk along +x."""
        n = self.frames_per_period
        phase = (index % n) / n
        x = (index // n) * self.period + phase * self.period
        a = 2 * math.pi * phase
        y = 0.35 * math.sin(a)
        z = 1.4 + 0.1 * math.sin(2 * a)
        heading = 0.6 * math.sin(a + 0.5)  # radians: looks at both walls within a period
        target = np.array([x + 2.0 * math.cos(heading), y + 2.0 * math.sin(heading), 0.9 + 0.2 * math.cos(a)])
        return look_at(np.array([x, y, z]), target)

    # ------------------------------------------------------------------ world
    def _boxes(self, x_lo: float, x_hi: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Obstacles (min corner, max corner, rgb) whose period copy overlaps [x_lo, x_hi]."""
        out = []
        half = self.width / 2
        base = [  # (x offset in the period, y centre, size xyz, colour)
            (0.6, -half + 0.3, (0.5, 0.6, 0.9), (200, 60, 50)),
            (1.7, half - 0.25, (0.4, 0.5, 1.3), (50, 90, 200)),
            (1.1, -half + 0.2, (0.8, 0.4, 0.05), (230, 200, 60)),  # a shelf board on the wall
        ]
        k0, k1 = math.floor(x_lo / self.period) - 1, math.floor(x_hi / self.period) + 1
        for k in range(k0, k1 + 1):
            for xo, yc, size, rgb in base:
                c = np.array([k * self.period + xo, yc, size[2] / 2 if size[2] > 0.1 else 1.2])
                s = np.array(size) / 2
                out.append((c - s, c + s, np.array(rgb, dtype=np.float64)))
        return out

    def _render(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact z-depth (rays have unit camera z, so the hit parameter is the depth) and colour."""
        R, o = T[:3, :3], T[:3, 3]
        d = (self._rays @ R.T).astype(np.float32)  # world directions, one row per pixel
        n = len(d)
        t_best = np.full(n, np.inf, dtype=np.float32)
        rgb = np.zeros((n, 3), dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = (1.0 / d).astype(np.float32)
            half = self.width / 2
            planes = [  # (axis, value, colour)
                (2, 0.0, (120, 110, 100)),
                (2, self.height, (235, 235, 230)),
                (1, -half, (170, 190, 170)),
                (1, half, (190, 170, 160)),
            ]
            for axis, value, col in planes:
                t = (value - o[axis]) * inv[:, axis]
                hit = (t > 1e-6) & (t < t_best)
                t_best[hit] = t[hit]
                rgb[hit] = col
            # Slab test per box. The camera always faces +x (heading within +-0.6 rad), so only
            # copies from just behind it to MAX_RANGE ahead can be seen.
            for lo, hi, col in self._boxes(o[0] - 1.5, o[0] + MAX_RANGE):
                t_near = np.full(n, -np.inf, dtype=np.float32)
                t_far = np.full(n, np.inf, dtype=np.float32)
                for ax in range(3):
                    a1 = (lo[ax] - o[ax]) * inv[:, ax]
                    a2 = (hi[ax] - o[ax]) * inv[:, ax]
                    np.maximum(t_near, np.minimum(a1, a2), out=t_near)
                    np.minimum(t_far, np.maximum(a1, a2), out=t_far)
                hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_best)
                t_best[hit] = t_near[hit]
                rgb[hit] = col
        p = o + d * t_best[:, None]
        # Periodic texture (stripes every 0.3 m along x, a finer one along z) so colour varies.
        xs = np.mod(p[:, 0], self.period)
        shade = 0.8 + 0.2 * (np.floor(xs / 0.3) % 2) - 0.1 * (np.floor(p[:, 2] / 0.1) % 2)
        color = np.clip(rgb * shade[:, None], 0, 255).astype(np.uint8)
        depth = np.where(np.isfinite(t_best) & (t_best < MAX_RANGE), t_best, 0.0).astype(np.float32)
        h, w = self.intrinsics.height, self.intrinsics.width
        return color.reshape(h, w, 3), depth.reshape(h, w)

    def __getitem__(self, index: int) -> RGBDFrame:
        if index < 0:
            raise IndexError("the stream has no negative frames")
        phase = index % self.frames_per_period
        images = self._cache.get(phase) if self._cache is not None else None
        if images is None:
            images = self._render(self.pose(phase))
            if self._cache is not None:
                self._cache[phase] = images
        color, depth = images
        return RGBDFrame(color, depth, self.intrinsics, self.pose(index), index / self.fps, index)

    def frames(self, n: int, start: int = 0) -> Iterator[RGBDFrame]:
        """Frames ``start .. start + n - 1``."""
        for i in range(start, start + n):
            yield self[i]
