"""Reading ScanNet-style RGB-D exports, so the pipeline and the benchmark can run on real scans.

Layout (what ScanNet's ``SensReader`` export writes; ScanNet-derived sets reuse it)::

    scene/color/<n>.jpg                   colour (ScanNet: 1296x968)
    scene/depth/<n>.png                   16-bit depth, millimetres, 0 = no reading (ScanNet: 640x480)
    scene/pose/<n>.txt                    4x4 camera-to-world; invalid frames hold -inf / NaN
    scene/intrinsic/intrinsic_depth.txt   4x4 (or 3x3) K of the depth camera
    scene/intrinsic/intrinsic_color.txt   4x4 (or 3x3) K of the colour camera (optional)
    scene/instance-filt/<n>.png           optional 2D instance ids (ScanNet's 2D label export)

The rule for the two resolutions, stated once: frames are produced at the *depth* resolution with
the depth intrinsics, because depth pixels are what get unprojected into the map; the colour image
(and instance image) are resized to that resolution. ScanNet registers colour to depth through
its calibration, so the resize is the usual approximation; a colour/depth offset of a pixel or two
at 640x480 remains. Frames whose pose is not a finite rigid transform (ScanNet marks tracking
failures with -inf) are skipped when the sequence is opened and counted in ``skipped``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.io.image_codec import depth_to_metres
from reasoning_seg.io.sequence_io import FolderSequence, pinhole_from_K, read_image, read_pose_txt
from reasoning_seg.mapping.frames import RGBDFrame

__all__ = ["ScanNetSequence", "is_scannet_layout", "open_sequence", "read_scannet_intrinsics"]

_NUMBER_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def is_scannet_layout(root: str | Path) -> bool:
    """True when ``root`` has ScanNet's ``color/``, ``depth/`` and ``pose/`` folders."""
    r = Path(root)
    return all((r / d).is_dir() for d in ("color", "depth", "pose"))


def read_scannet_intrinsics(path: str | Path, width: int, height: int) -> CameraIntrinsics:
    """Parse a ScanNet ``intrinsic_*.txt`` (4x4 or 3x3 K); ``ValueError`` naming the file if malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera intrinsics file not found: {path}")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: intrinsics must be numbers ({exc})") from exc
    if values.size not in (9, 16):
        raise ValueError(f"{path}: expected a 4x4 or 3x3 matrix, found {values.size} numbers")
    n = 4 if values.size == 16 else 3
    return pinhole_from_K(values.reshape(n, n)[:3, :3], width, height, path)


def _pose_or_none(path: Path) -> np.ndarray | None:
    """The pose in ``path``, or None where ScanNet marks a tracking failure (or the file is bad)."""
    try:
        return read_pose_txt(path)
    except (OSError, ValueError):
        return None


class ScanNetSequence:
    """Lazy, indexable reader of a ScanNet-style export, yielding :class:`RGBDFrame` (see module doc).

    Same interface as :class:`reasoning_seg.io.sequence_io.FolderSequence` (``len``, indexing,
    ``pose``, ``instance``, ``intrinsics``, ``frame_numbers``), so the player, the pipeline and the
    benchmark take either. ``stride`` keeps every n-th frame (ScanNet records 30 Hz; mapping
    every frame is rarely needed).
    """

    def __init__(
        self, root: str | Path, depth_scale: float = 1000.0, fps: float = 30.0, stride: int = 1
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"sequence folder not found: {self.root}")
        if not is_scannet_layout(self.root):
            raise FileNotFoundError(
                f"{self.root} is not a ScanNet-style export (needs color/, depth/, pose/)"
            )
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise ValueError(f"depth_scale must be finite and positive, got {depth_scale}")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be finite and positive, got {fps}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.depth_scale, self.fps = float(depth_scale), float(fps)
        colors: dict[int, Path] = {}
        for p in (self.root / "color").iterdir():
            m = _NUMBER_RE.match(p.name)
            if m:
                colors[int(m.group(1))] = p
        if not colors:
            raise FileNotFoundError(f"no <n>.jpg / <n>.png colour images in {self.root / 'color'}")
        self.skipped: Counter = Counter()
        self._colors: dict[int, Path] = {}
        self._poses: dict[int, np.ndarray] = {}
        for n in sorted(colors)[::stride]:
            depth, pose = self._depth_path(n), self.root / "pose" / f"{n}.txt"
            if not depth.is_file():
                self.skipped["no depth image"] += 1
                continue
            T = _pose_or_none(pose)
            if T is None:
                self.skipped["invalid or missing pose"] += 1
                continue
            self._colors[n], self._poses[n] = colors[n], T
        self.frame_numbers: list[int] = sorted(self._colors)
        if not self.frame_numbers:
            raise ValueError(
                f"{self.root}: no frame has a depth image and a valid pose ({dict(self.skipped)})"
            )
        first_depth = read_image(self._depth_path(self.frame_numbers[0]))
        width, height = first_depth.size
        self.intrinsics = read_scannet_intrinsics(
            self.root / "intrinsic" / "intrinsic_depth.txt", width, height
        )

    def _depth_path(self, number: int) -> Path:
        return self.root / "depth" / f"{number}.png"

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def _number(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        return self.frame_numbers[index]

    def pose(self, index: int) -> np.ndarray:
        """T_world_cam of frame ``index`` (validated when the sequence was opened)."""
        return self._poses[self._number(index)].copy()

    def _resized(self, img: Image.Image, resample: Image.Resampling) -> Image.Image:
        size = (self.intrinsics.width, self.intrinsics.height)
        return img if img.size == size else img.resize(size, resample)

    def __getitem__(self, index: int) -> RGBDFrame:
        number = self._number(index)
        color_img = read_image(self._colors[number]).convert("RGB")
        color = np.asarray(self._resized(color_img, Image.Resampling.BILINEAR), dtype=np.uint8)
        raw = np.asarray(read_image(self._depth_path(number)))
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(f"{self._depth_path(number)}: depth must be a 16-bit single-channel PNG")
        if raw.shape != (self.intrinsics.height, self.intrinsics.width):
            raise ValueError(
                f"{self._depth_path(number)}: {raw.shape[1]}x{raw.shape[0]} depth in a "
                f"{self.intrinsics.width}x{self.intrinsics.height} sequence"
            )
        return RGBDFrame(
            color=color,
            depth=depth_to_metres(raw, "16UC1", self.depth_scale),
            intrinsics=self.intrinsics,
            T_world_cam=self.pose(index),
            stamp=number / self.fps,
            frame_id=number,
        )

    def __iter__(self) -> Iterator[RGBDFrame]:
        for i in range(len(self)):
            yield self[i]

    def instance(self, index: int) -> np.ndarray | None:
        """2D instance ids of frame ``index`` at the depth resolution (nearest resize), or None."""
        path = self.root / "instance-filt" / f"{self._number(index)}.png"
        if not path.is_file():
            return None
        img = self._resized(read_image(path), Image.Resampling.NEAREST)
        return np.asarray(img).astype(np.int32)


def open_sequence(
    root: str | Path, depth_scale: float = 1000.0, fps: float = 30.0
) -> FolderSequence | ScanNetSequence:
    """Open a recording in either supported layout (ScanNet-style export or 3DMatch/Sun3D folder)."""
    if is_scannet_layout(root):
        return ScanNetSequence(root, depth_scale=depth_scale, fps=fps)
    return FolderSequence(root, depth_scale=depth_scale, fps=fps)
