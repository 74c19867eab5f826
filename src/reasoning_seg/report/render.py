"""A shaded perspective picture of the voxel map with the ceiling and the near walls cut away.

Why not a top view of every point (``visualize.py``): ceiling and floor cover the room from above,
and the objects a query is about disappear in a field of dots. A person reads a room the way an
architect's cut-away model shows it: seen from above at an angle, ceiling removed, the two walls
facing the viewer removed, the floor faded, surfaces shaded by their orientation.

Pure numpy + Pillow (no display, no OpenGL): points are splatted into a z-buffer at about their
voxel's size on screen, normals come from the depth buffer (deferred shading), depth edges are
outlined. The target's points are never cut away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND = np.array([246, 246, 243], dtype=np.float32)
TARGET_TINT = np.array([255, 90, 30], dtype=np.float32)
FLOOR_BAND = 0.05  # m above the floor level that count as floor (faded)
WALL_BAND = 0.30  # m inside a near wall's plane that are cut away
CEILING_CUT = 0.35  # m below the ceiling level where the cut-away starts


@dataclass(frozen=True)
class PinholeView:
    """A virtual camera (OpenCV convention: x right, y down, z forward) and its image size."""

    T_world_cam: np.ndarray  # (4, 4)
    f: float
    width: int
    height: int

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel (u, v) as float and depth z of (N, 3) world points (z <= 0 means behind)."""
        T_cam_world = np.linalg.inv(self.T_world_cam)
        pc = points @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        z = pc[:, 2]
        safe = np.where(z > 1e-6, z, 1e-6)
        u = self.f * pc[:, 0] / safe + (self.width - 1) / 2.0
        v = self.f * pc[:, 1] / safe + (self.height - 1) / 2.0
        return u, v, z


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, ...] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose of a camera at ``eye`` looking at ``target`` with ``up`` up on screen."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-9:  # looking straight down: any horizontal x will do
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def cutaway(points: np.ndarray, keep: np.ndarray, toward_viewer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which points to draw, and which are floor (to fade); ``keep`` (the target) is never cut.

    Levels come from robust percentiles, not the extremes, so a stray point does not move them:
    the floor is the 1st height percentile, the ceiling the 99th. Walls are the bounding box faces
    (1st/99th percentile in x and y) whose outward normal points toward the viewer.
    """
    z = points[:, 2]
    floor, ceiling = np.percentile(z, [1, 99]) if len(points) else (0.0, 0.0)
    draw = np.ones(len(points), bool)
    if ceiling - floor > 1.5:  # a room, not a table top: cut the ceiling away
        draw &= z < ceiling - CEILING_CUT
    for axis in (0, 1):
        lo, hi = np.percentile(points[:, axis], [1, 99]) if len(points) else (0.0, 0.0)
        if toward_viewer[axis] > 0.2:
            draw &= ~((points[:, axis] > hi - WALL_BAND) & (z > floor + FLOOR_BAND))
        elif toward_viewer[axis] < -0.2:
            draw &= ~((points[:, axis] < lo + WALL_BAND) & (z > floor + FLOOR_BAND))
    draw |= keep
    return draw, (z < floor + FLOOR_BAND) & ~keep


def room_view(
    points: np.ndarray,
    focus: np.ndarray | None,
    width: int = 960,
    height: int = 640,
    elevation_deg: float = 50.0,
    fov_deg: float = 50.0,
) -> PinholeView:
    """A viewpoint from above at ``elevation_deg`` on the diagonal on the side of ``focus``.

    The camera stands on the target's side of the room (so the target is in the foreground, its
    near walls cut away) and as close as it can while the map fits the image; a few stray points
    (beyond the 0.5/99.5 percentiles per axis) may fall outside.
    """
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0) if len(points) else (np.zeros(3), np.ones(3))
    centre = (lo + hi) / 2.0
    diagonals = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float) / np.sqrt(2.0)
    if focus is not None:
        d = diagonals[int(np.argmax(diagonals @ (np.asarray(focus)[:2] - centre[:2])))]
    else:
        d = diagonals[3]
    el = np.radians(elevation_deg)
    direction = np.array([np.cos(el) * d[0], np.cos(el) * d[1], np.sin(el)])
    f = (width / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    # Start where the bounding sphere surely fits, then move in until the (clipped) map fills the
    # image with a small border: scaling the distance by the overshoot converges in a few steps.
    sample = np.clip(np.asarray(points, float)[:: max(1, len(points) // 20000)], lo, hi)
    half_fov = np.radians(fov_deg) / 2.0 * min(1.0, height / width)
    dist = 0.5 * float(np.linalg.norm(hi - lo)) / np.sin(half_fov) + 1e-3
    for _ in range(6):
        view = PinholeView(look_at(centre + dist * direction, centre), float(f), width, height)
        u, v, z = view.project(sample)
        if not len(sample) or np.any(z <= 0.05):
            break
        need = max(
            np.abs(u - (width - 1) / 2).max() / (0.47 * width),
            np.abs(v - (height - 1) / 2).max() / (0.47 * height),
        )
        if 0.97 < need <= 1.0:
            break
        dist *= need if need > 1.0 else 0.5 + 0.5 * need
    return PinholeView(look_at(centre + dist * direction, centre), float(f), width, height)


def render_points(
    view: PinholeView,
    points: np.ndarray,
    colors: np.ndarray,
    voxel: float,
    target: np.ndarray | None = None,
    faded: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 shaded image of coloured points (target tinted, ``faded`` points pale)."""
    w, h = view.width, view.height
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    col = np.clip(np.asarray(colors, np.float32).reshape(-1, 3), 0, 1) * 255.0
    n = len(pts)
    target = np.zeros(n, bool) if target is None else np.asarray(target, bool)
    faded = np.zeros(n, bool) if faded is None else np.asarray(faded, bool)
    col = np.where(target[:, None], 0.25 * col + 0.75 * TARGET_TINT, col)
    col = np.where(faded[:, None], 0.35 * col + 0.65 * BACKGROUND, col)
    u, v, z = view.project(pts)
    ok = (z > 0.05) & (u > -8) & (u < w + 8) & (v > -8) & (v < h + 8)
    u, v, z, col = u[ok], v[ok], z[ok], col[ok]
    # Splat each point over about its voxel's footprint on screen (1-6 px squares).
    size = np.clip(np.ceil(1.15 * voxel * view.f / z), 1, 6).astype(np.int64)
    pix, dep, idx = [], [], []
    base_u, base_v = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    for s in np.unique(size):
        sel = np.flatnonzero(size == s)
        off = np.arange(s) - (s - 1) // 2
        for du in off:
            for dv in off:
                uu, vv = base_u[sel] + du, base_v[sel] + dv
                inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
                pix.append(vv[inside] * w + uu[inside])
                dep.append(z[sel][inside])
                idx.append(sel[inside])
    image = np.tile(BACKGROUND, (h, w, 1))
    depth = np.full(h * w, np.inf)
    if pix:
        pix_a, dep_a, idx_a = np.concatenate(pix), np.concatenate(dep), np.concatenate(idx)
        order = np.lexsort((dep_a, pix_a))  # by pixel, nearest first
        first = np.ones(len(order), bool)
        first[1:] = pix_a[order][1:] != pix_a[order][:-1]
        win = order[first]
        depth[pix_a[win]] = dep_a[win]
        image.reshape(-1, 3)[pix_a[win]] = col[idx_a[win]]
    depth = depth.reshape(h, w)
    return (np.clip(image * _shading(depth, view.f)[..., None], 0, 255)).astype(np.uint8)


def _shading(depth: np.ndarray, f: float) -> np.ndarray:
    """Per-pixel light factor: Lambert from the depth buffer's normals, dark outlines at depth jumps."""
    h, w = depth.shape
    valid = np.isfinite(depth)
    d = np.where(valid, depth, 0.0)
    vv, uu = np.mgrid[0:h, 0:w]
    x = (uu - (w - 1) / 2.0) / f * d
    y = (vv - (h - 1) / 2.0) / f * d
    P = np.stack([x, y, d], axis=-1)
    dx = np.zeros_like(P)
    dy = np.zeros_like(P)
    dx[:, 1:-1] = P[:, 2:] - P[:, :-2]
    dy[1:-1] = P[2:] - P[:-2]
    nrm = np.cross(dy, dx)
    length = np.linalg.norm(nrm, axis=-1)
    nrm = nrm / np.maximum(length, 1e-12)[..., None]
    light = np.array([-0.4, -0.7, -0.6])
    light /= np.linalg.norm(light)
    lam = np.abs(nrm @ light)  # two-sided: splats have no inside
    shade = np.where(length > 0, 0.55 + 0.45 * lam, 1.0)
    # Outlines: a neighbour much farther away (relative) means an object edge.
    pad = np.pad(d, 1, mode="edge")
    neigh = np.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
    pad_valid = np.pad(valid, 1, mode="constant")
    nvalid = np.stack([pad_valid[:-2, 1:-1], pad_valid[2:, 1:-1], pad_valid[1:-1, :-2], pad_valid[1:-1, 2:]])
    jump = np.any(nvalid & (neigh - d > 0.06 * np.maximum(d, 1e-6)), axis=0) | np.any(~nvalid, axis=0)
    shade = np.where(valid & jump, shade * 0.55, shade)
    return np.where(valid, shade, 1.0)


def shade_only(
    view: PinholeView, points: np.ndarray, colors: np.ndarray, voxel: float, faded: np.ndarray | None = None
) -> np.ndarray:
    """:func:`render_points` with the points' own colours (no target tint): for coloured overlays."""
    return render_points(view, points, colors, voxel, None, faded)
