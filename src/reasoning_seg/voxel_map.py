"""TSDF voxel map of the room: posed RGB-D in, coloured surface points out.

Built on Open3D's ``VoxelBlockGrid`` (a hashed sparse grid of 8^3-voxel blocks), which integrates a
640x480 frame in a few milliseconds on CPU and runs unchanged on CUDA devices. The query path
never touches the grid directly: it asks for a :class:`MapSurface` snapshot, so a query can run
while new frames keep arriving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d

from reasoning_seg.config import MapConfig
from reasoning_seg.frames import RGBDFrame

_FORMAT = "reasoning_seg.voxel_map/1"


@dataclass(frozen=True)
class MapSurface:
    """Surface points extracted from the map at one moment (``version`` increases on change)."""

    points: np.ndarray  # (N, 3) float64, map frame
    colors: np.ndarray  # (N, 3) float32 in [0, 1]
    version: int

    def __len__(self) -> int:
        return len(self.points)


class VoxelMap:
    """A TSDF map with colour; not thread-safe (the owner serialises integrate/extract/save)."""

    def __init__(self, config: MapConfig | None = None) -> None:
        self.config = config or MapConfig()
        self._device = o3d.core.Device(self.config.device)
        self._grid = self._new_grid()
        self._version = 0
        self._surface: MapSurface | None = None
        self.frames_integrated = 0

    def _new_grid(self) -> o3d.t.geometry.VoxelBlockGrid:
        f32 = o3d.core.float32
        return o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(f32, f32, f32),
            attr_channels=((1), (1), (3)),
            voxel_size=self.config.voxel_size,
            block_resolution=8,
            block_count=self.config.block_count,
            device=self._device,
        )

    @property
    def version(self) -> int:
        """Counter bumped by every change; lets callers cache work per map state."""
        return self._version

    @property
    def num_blocks(self) -> int:
        """Allocated 8^3 voxel blocks (memory is proportional to this)."""
        return int(self._grid.hashmap().size())

    def integrate(self, frame: RGBDFrame) -> None:
        """Fuse one sanitised frame (see :func:`reasoning_seg.frames.sanitize_frame`)."""
        c = self.config
        K = o3d.core.Tensor(frame.intrinsics.K, o3d.core.float64)
        extrinsic = o3d.core.Tensor(np.linalg.inv(frame.T_world_cam), o3d.core.float64)
        depth = o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(frame.depth, dtype=np.float32))).to(
            self._device
        )
        color = o3d.t.geometry.Image(
            o3d.core.Tensor(np.ascontiguousarray(frame.color, dtype=np.float32) / 255.0)
        ).to(self._device)
        blocks = self._grid.compute_unique_block_coordinates(
            depth, K, extrinsic, 1.0, c.depth_max, trunc_voxel_multiplier=c.trunc_voxels
        )
        self._grid.integrate(
            blocks, depth, color, K, K, extrinsic, 1.0, c.depth_max, trunc_voxel_multiplier=c.trunc_voxels
        )
        self.frames_integrated += 1
        self._version += 1
        self._surface = None

    def surface(self) -> MapSurface:
        """Zero-crossing surface points with colour (cached until the map changes)."""
        if self._surface is None:
            if self.num_blocks == 0:
                pts, cols = np.zeros((0, 3)), np.zeros((0, 3), np.float32)
            else:
                pcd = self._grid.extract_point_cloud(weight_threshold=self.config.min_weight).cpu()
                if "positions" in pcd.point:
                    pts = pcd.point.positions.numpy().astype(np.float64)
                    cols = np.clip(pcd.point.colors.numpy().astype(np.float32), 0.0, 1.0)
                else:
                    pts, cols = np.zeros((0, 3)), np.zeros((0, 3), np.float32)
            self._surface = MapSurface(pts, cols, self._version)
        return self._surface

    def clear(self) -> None:
        """Drop everything (keeps the configuration)."""
        self._grid = self._new_grid()
        self.frames_integrated = 0
        self._version += 1
        self._surface = None

    # ---- persistence ----
    def save(self, directory: str | Path) -> None:
        """Write the grid and its settings into ``directory`` (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._grid.save(str(d / "voxel_grid.npz"))
        meta = {
            "format": _FORMAT,
            "voxel_size": self.config.voxel_size,
            "frames_integrated": self.frames_integrated,
        }
        (d / "voxel_map.json").write_text(json.dumps(meta, indent=2))

    def load(self, directory: str | Path) -> None:
        """Replace this map with one saved by :meth:`save`; on any error the current map is kept."""
        d = Path(directory)
        meta_path, grid_path = d / "voxel_map.json", d / "voxel_grid.npz"
        if not meta_path.is_file() or not grid_path.is_file():
            raise FileNotFoundError(
                f"{d} does not contain a saved voxel map (voxel_map.json + voxel_grid.npz)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path} is not a {_FORMAT} file")
        if not np.isclose(float(meta.get("voxel_size", -1)), self.config.voxel_size):
            raise ValueError(
                f"saved map has voxel size {meta.get('voxel_size')} m but this map uses "
                f"{self.config.voxel_size} m"
            )
        try:
            grid = o3d.t.geometry.VoxelBlockGrid.load(str(grid_path)).to(self._device)
        except Exception as exc:  # Open3D raises RuntimeError/ValueError subclasses inconsistently
            raise ValueError(f"{grid_path} could not be read: {exc}") from exc
        self._grid = grid
        self.frames_integrated = int(meta.get("frames_integrated", 0))
        self._version += 1
        self._surface = None
