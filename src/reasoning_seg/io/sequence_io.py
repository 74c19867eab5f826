"""Recorded RGB-D sequences on disk: the 3DMatch / Sun3D folder format, for real and simulated data.

Layout (one folder per recording)::

    root/camera-intrinsics.txt             3x3 K, whitespace separated
    root/seq-01/frame-000000.color.png     8-bit RGB
    root/seq-01/frame-000000.depth.png     16-bit depth, 1/depth_scale metres (mm), 0 = no reading
    root/seq-01/frame-000000.pose.txt      4x4 camera-to-world (T_world_cam), metres
    root/seq-01/frame-000000.instance.png  optional 16-bit ground-truth instance ids (simulation)

Frames may also sit directly in ``root``. Reading is lazy (one frame at a time), so long recordings
can be replayed into the pipeline without loading them whole. Everything read is validated here,
at the boundary, with errors that name the offending file: a bad pose discovered deep inside fusion
would be much harder to trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform
from reasoning_seg.io.image_codec import depth_from_metres, depth_to_metres
from reasoning_seg.mapping.frames import RGBDFrame

__all__ = [
    "INTRINSICS_FILE",
    "FolderSequence",
    "pinhole_from_K",
    "read_image",
    "read_intrinsics_txt",
    "read_pose_txt",
    "write_frame",
    "write_intrinsics_txt",
]

INTRINSICS_FILE = "camera-intrinsics.txt"
_FRAME_RE = re.compile(r"^frame-(\d+)\.color\.png$")


def read_intrinsics_txt(path: str | Path, width: int, height: int) -> CameraIntrinsics:
    """Parse a 3x3 K matrix file; ``width`` / ``height`` come from the images (the file lacks them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera intrinsics file not found: {path}")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: intrinsics must be 9 numbers ({exc})") from exc
    if values.size != 9:
        raise ValueError(f"{path}: expected 9 numbers (a 3x3 K), found {values.size}")
    return pinhole_from_K(values.reshape(3, 3), width, height, path)


def pinhole_from_K(K: np.ndarray, width: int, height: int, path: str | Path) -> CameraIntrinsics:  # noqa: N802
    """Validate a 3x3 K read from ``path`` and build the intrinsics; ``ValueError`` naming the file."""
    if not np.allclose(K[2], [0, 0, 1]) or K[0, 1] != 0 or K[1, 0] != 0:
        raise ValueError(f"{path}: not a pinhole K matrix (expected [[fx,0,cx],[0,fy,cy],[0,0,1]])")
    try:
        return CameraIntrinsics.from_K(K, width, height)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def write_intrinsics_txt(path: str | Path, intrinsics: CameraIntrinsics) -> None:
    """Write K with full float precision (a write -> read round trip is exact)."""
    np.savetxt(Path(path), intrinsics.K, fmt="%.17g")


def read_pose_txt(path: str | Path) -> np.ndarray:
    """Read a 4x4 camera-to-world pose; ``ValueError`` naming the file if it is not a rigid transform."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file not found: {path}")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: pose must be 16 numbers ({exc})") from exc
    if values.size != 16:
        raise ValueError(f"{path}: expected 16 numbers (a 4x4 pose), found {values.size}")
    T = values.reshape(4, 4)
    if not is_rigid_transform(T):
        raise ValueError(f"{path}: pose is not a finite rigid transform (NaN, scale or shear?)")
    return T


def read_image(path: Path) -> Image.Image:
    """Open and decode an image; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decode errors come in all three
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return img


def _read_uint16_png(path: Path, what: str) -> np.ndarray:
    img = read_image(path)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"{path}: {what} must be a 16-bit single-channel PNG, got mode {img.mode!r}")
    arr = np.asarray(img)
    if arr.dtype != np.uint16:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"{path}: {what} values do not fit in 16 bits")
        arr = arr.astype(np.uint16)
    return arr


class FolderSequence:
    """Lazy, indexable reader of one recorded sequence, yielding :class:`RGBDFrame`.

    ``stamp`` is ``frame_number / fps``, so sparse recordings (Sun3D frames 0, 1, 2, 116, 422)
    keep their real time spacing; ``frame_id`` is the frame number. When ``root`` holds several
    ``seq-*`` folders, ``sequence`` (e.g. ``"seq-02"``) picks one; silently concatenating
    sequences would glue unrelated trajectories together.
    """

    def __init__(
        self, root: str | Path, depth_scale: float = 1000.0, fps: float = 30.0, sequence: str | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"sequence folder not found: {self.root}")
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise ValueError(f"depth_scale must be finite and positive, got {depth_scale}")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be finite and positive, got {fps}")
        self.depth_scale = float(depth_scale)
        self.fps = float(fps)
        self.directory = self._find_frame_dir(sequence)
        self._stems: dict[int, Path] = {}
        for p in self.directory.iterdir():
            m = _FRAME_RE.match(p.name)
            if not m:
                continue
            number = int(m.group(1))
            if number in self._stems:
                raise ValueError(f"{self.directory}: frame number {number} appears twice ({p.name})")
            self._stems[number] = p.with_name(p.name[: -len(".color.png")])  # keeps the file's padding
        self.frame_numbers: list[int] = sorted(self._stems)
        for n, stem in self._stems.items():
            for suffix in (".depth.png", ".pose.txt"):
                if not Path(str(stem) + suffix).is_file():
                    raise FileNotFoundError(f"frame {n} has a colour image but no {stem.name}{suffix}")

        intr_path = next(
            (d / INTRINSICS_FILE for d in (self.directory, self.root) if (d / INTRINSICS_FILE).is_file()),
            None,
        )
        if intr_path is None:
            raise FileNotFoundError(f"no {INTRINSICS_FILE} in {self.directory} or {self.root}")
        first = Path(str(self._stems[self.frame_numbers[0]]) + ".color.png")
        width, height = read_image(first).size
        self.intrinsics = read_intrinsics_txt(intr_path, width, height)

    def _find_frame_dir(self, sequence: str | None) -> Path:
        if sequence is not None:
            d = self.root / sequence
            if not d.is_dir():
                raise FileNotFoundError(f"sequence {sequence!r} not found in {self.root}")
            if not any(_FRAME_RE.match(p.name) for p in d.iterdir()):
                raise FileNotFoundError(f"no frame-*.color.png in {d}")
            return d
        if any(_FRAME_RE.match(p.name) for p in self.root.iterdir()):
            return self.root
        seqs = sorted(
            d
            for d in self.root.glob("seq-*")
            if d.is_dir() and any(_FRAME_RE.match(p.name) for p in d.iterdir())
        )
        if not seqs:
            raise FileNotFoundError(f"no frame-*.color.png in {self.root} or {self.root}/seq-*/")
        if len(seqs) > 1:
            names = ", ".join(d.name for d in seqs)
            raise ValueError(f"{self.root} holds several sequences ({names}); pass sequence=... to pick one")
        return seqs[0]

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def _number(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        return self.frame_numbers[index]

    def pose(self, index: int) -> np.ndarray:
        """T_world_cam of frame ``index`` without decoding its images."""
        return read_pose_txt(str(self._stems[self._number(index)]) + ".pose.txt")

    def gt_pose(self, index: int) -> np.ndarray | None:
        """The true T_world_cam of frame ``index`` (``.gt_pose.txt`` of simulated recordings), or None.

        ``pose`` is what a SLAM front-end reported (it may drift); this is where the camera was.
        """
        path = Path(str(self._stems[self._number(index)]) + ".gt_pose.txt")
        return read_pose_txt(path) if path.is_file() else None

    def __getitem__(self, index: int) -> RGBDFrame:
        number = self._number(index)
        stem = str(self._stems[number])
        color_path, depth_path = Path(stem + ".color.png"), Path(stem + ".depth.png")
        img = read_image(color_path)
        if img.mode != "RGB":
            img = img.convert("RGB")
        color = np.asarray(img, dtype=np.uint8)
        raw = _read_uint16_png(depth_path, "depth")
        size = (self.intrinsics.height, self.intrinsics.width)
        if color.shape[:2] != size or raw.shape != size:
            raise ValueError(
                f"frame {number}: colour {color.shape[1]}x{color.shape[0]} / depth "
                f"{raw.shape[1]}x{raw.shape[0]} do not match the sequence's {size[1]}x{size[0]}"
            )
        depth = depth_to_metres(raw, "16UC1", self.depth_scale)
        return RGBDFrame(
            color=color,
            depth=depth,
            intrinsics=self.intrinsics,
            T_world_cam=self.pose(index),
            stamp=number / self.fps,
            frame_id=number,
        )

    def __iter__(self) -> Iterator[RGBDFrame]:
        for i in range(len(self)):
            yield self[i]

    def instance(self, index: int) -> np.ndarray | None:
        """Ground-truth instance ids (int32, 0 = nothing) of frame ``index``, or None if not recorded."""
        path = Path(str(self._stems[self._number(index)]) + ".instance.png")
        if not path.exists():
            return None
        return _read_uint16_png(path, "instance image").astype(np.int32)


def write_frame(
    directory: str | Path, frame: RGBDFrame, instance: np.ndarray | None = None, depth_scale: float = 1000.0
) -> Path:
    """Write one frame as ``frame-XXXXXX.*`` into ``directory``; returns the common path stem.

    Depth is stored in 1/``depth_scale`` m units (mm); readings that do not fit in 16 bits are
    written as 0 (no reading) rather than clipped to a wrong distance. The pose is written with
    full precision so a round trip is exact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if frame.frame_id < 0:
        raise ValueError(f"frame_id must be >= 0 to name the files, got {frame.frame_id}")
    h, w = frame.intrinsics.height, frame.intrinsics.width
    color = np.asarray(frame.color)
    if color.shape != (h, w, 3) or color.dtype != np.uint8:
        raise ValueError(f"colour must be ({h}, {w}, 3) uint8, got {color.shape} {color.dtype}")
    if np.asarray(frame.depth).shape != (h, w):
        raise ValueError(f"depth must be ({h}, {w}), got {np.asarray(frame.depth).shape}")
    T = np.asarray(frame.T_world_cam, dtype=np.float64)
    if not is_rigid_transform(T):
        raise ValueError(f"frame {frame.frame_id}: T_world_cam is not a finite rigid transform")
    stem = directory / f"frame-{frame.frame_id:06d}"
    Image.fromarray(color).save(str(stem) + ".color.png")
    depth_units = depth_from_metres(np.asarray(frame.depth), "16UC1", depth_scale)
    Image.fromarray(depth_units).save(str(stem) + ".depth.png")
    np.savetxt(str(stem) + ".pose.txt", T, fmt="%.17g")
    if instance is not None:
        inst = np.asarray(instance)
        if inst.shape != (h, w):
            raise ValueError(f"instance image must be ({h}, {w}), got {inst.shape}")
        if inst.min(initial=0) < 0 or inst.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError("instance ids must be in 0..65535 to be stored as a 16-bit PNG")
        Image.fromarray(inst.astype(np.uint16)).save(str(stem) + ".instance.png")
    return stem
