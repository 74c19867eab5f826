"""Pinhole camera model and the (un)projection every pipeline stage shares.

Conventions (used everywhere in the package, ROS REP-103 optical frame):
- camera frame: x right, y down, z forward (optical axis); units are metres;
- ``T_world_cam`` is a 4x4 rigid transform mapping camera-frame points into the world (map) frame;
- depth images are float32 metres with 0 or NaN meaning "no reading" (16-bit millimetre images are
  converted at the boundary, see :mod:`reasoning_seg.io.image_codec`);
- pixel (u, v) = (column, row); the centre of pixel (0, 0) is at (0.0, 0.0).

One module owns this so that projection in fusion, rendering in the simulator and unprojection in
the map cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (no distortion).

    Distortion is not modelled: RGB-D drivers publish rectified, registered depth, and the
    reasoning stage works on those images.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        vals = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(v) for v in vals) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be finite and positive, got fx={self.fx} fy={self.fy}")

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the conventional symbol
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> CameraIntrinsics:  # noqa: N802
        """Build from a 3x3 (or row-major 9-element) intrinsic matrix."""
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same camera with the image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5
        )

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) camera-frame points to pixel coordinates.

        Returns ``(uv, z)``: (N, 2) float pixel coordinates and (N,) depths. Points with z <= 0
        get NaN pixel coordinates so callers cannot use them by accident.
        """
        p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * p[:, 0] / z + self.cx
            v = self.fy * p[:, 1] / z + self.cy
        uv = np.stack([u, v], axis=1)
        uv[~(z > 0)] = np.nan
        return uv, z

    def pixel_rays(self) -> np.ndarray:
        """(H, W, 3) camera-frame ray directions with z = 1 for every pixel centre."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], axis=-1)

    def unproject(self, depth: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Back-project a depth image (metres) to camera-frame points.

        Returns ``(points, pixel_index)``: (M, 3) points for the valid pixels (finite, > 0, and in
        ``mask`` when given) and their flat indices into the image, so per-pixel attributes
        (colour, labels) can be gathered with the same index.
        """
        depth = np.asarray(depth)
        if depth.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth.shape[::-1]} but the camera is {self.width}x{self.height}")
        valid = np.isfinite(depth) & (depth > 0)
        if mask is not None:
            valid &= mask.astype(bool)
        idx = np.flatnonzero(valid)
        z = depth.reshape(-1)[idx].astype(np.float64)
        rays = self.pixel_rays().reshape(-1, 3)[idx]
        return rays * z[:, None], idx


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (N, 3) points."""
    T = np.asarray(T, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ T[:3, :3].T + T[:3, 3]


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (uses R^T rather than a general inverse)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def is_rigid_transform(T: np.ndarray, tol: float = 1e-3) -> bool:
    """True when ``T`` is a finite 4x4 rotation + translation (rejects scaled/sheared/NaN poses)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (
        np.allclose(R @ R.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(R) - 1.0) < tol
        and np.allclose(T[3], [0, 0, 0, 1], atol=tol)
    )


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam`` of an optical-frame camera at ``eye`` looking at ``target``.

    ``up`` is the world up direction (z-up, REP-103); the camera's -y axis is aligned with it as
    closely as possible.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("viewing direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def visible_pixels(
    points_world: np.ndarray,
    T_world_cam: np.ndarray,
    intrinsics: CameraIntrinsics,
    depth: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Which world points a depth image actually sees, and at which pixel.

    A point is visible when it projects inside the image, in front of the camera, onto a pixel
    with a valid depth reading that agrees with the point's own depth within ``tolerance``. This
    is the occlusion test of MLLM-For3D §3.1 (a point hidden behind another surface in this view
    must not receive this view's vote). Returns ``(visible (N,) bool, flat_pixel_index (N,) int64)``
    where the index is -1 for invisible points.
    """
    pts_cam = transform_points(invert_transform(T_world_cam), points_world)
    uv, z = intrinsics.project(pts_cam)
    with np.errstate(invalid="ignore"):
        u = np.round(uv[:, 0])
        v = np.round(uv[:, 1])
        inside = (z > 0) & (u >= 0) & (u < intrinsics.width) & (v >= 0) & (v < intrinsics.height)
    flat = np.full(len(z), -1, dtype=np.int64)
    flat[inside] = v[inside].astype(np.int64) * intrinsics.width + u[inside].astype(np.int64)
    d = np.asarray(depth).reshape(-1)
    visible = np.zeros(len(z), dtype=bool)
    if inside.any():
        dv = d[flat[inside]]
        visible[inside] = np.isfinite(dv) & (dv > 0) & (np.abs(dv - z[inside]) <= tolerance)
    flat[~visible] = -1
    return visible, flat
