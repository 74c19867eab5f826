"""Saving and loading the pipeline's whole state (map + keyframes + poses + intrinsics) to one directory.

Layout::

    DIR/state.json      format, version, map settings, next keyframe id, and the size and SHA-256
                        of each file below
    DIR/map.npz         the voxel map (:meth:`reasoning_seg.mapping.voxel_map.VoxelMap.to_arrays`)
    DIR/keyframes.npz   keyframe ids, intrinsics, stamps, frame ids, poses, colour and depth images

Why this shape: a map that took an hour to build must survive a crash during save and must never be
half-replaced by a bad file. Saving writes everything into a temporary sibling directory, flushes it
to disk, then renames it into place (the old state is moved aside first and deleted last), so
``DIR`` always holds either the old state or the new one. Loading checks every file's size and
checksum against ``state.json`` before parsing anything (a truncated copy or a foreign file with the
right name fails with a clear message), parses with ``allow_pickle=False`` and validates every array;
only a fully parsed state is returned, so the caller swaps it in or keeps what it had.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform
from reasoning_seg.mapping.frames import RGBDFrame

STATE_FORMAT = "reasoning_seg.state"
STATE_VERSION = 2
STATE_FILE = "state.json"
MAP_FILE = "map.npz"
KEYFRAMES_FILE = "keyframes.npz"
_OUR_FILES = {STATE_FILE, MAP_FILE, KEYFRAMES_FILE}
_MAX_STATE_JSON = 1 << 20
_MAX_KEYFRAME_ID = 1 << 53  # exact in a float64 too; a node adding 1000 keyframes/s needs 285,000 years


@dataclass
class SavedState:
    """A fully parsed and validated saved state."""

    meta: dict[str, Any]
    map_arrays: dict[str, np.ndarray]
    keyframes: list[tuple[int, RGBDFrame]]
    next_keyframe_id: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keyframe_arrays(keyframes: Sequence[tuple[int, RGBDFrame]]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([kid for kid, _ in keyframes], dtype=np.int64),
        "meta": np.array(
            [
                [f.intrinsics.width, f.intrinsics.height, f.intrinsics.fx, f.intrinsics.fy]
                + [f.intrinsics.cx, f.intrinsics.cy, f.stamp, f.frame_id]
                for _, f in keyframes
            ],
            dtype=np.float64,
        ).reshape(-1, 8),
        "poses": np.array([f.T_world_cam for _, f in keyframes], dtype=np.float64).reshape(-1, 4, 4),
    }
    for kid, f in keyframes:
        arrays[f"color_{kid}"] = np.ascontiguousarray(f.color, dtype=np.uint8)
        arrays[f"depth_{kid}"] = np.ascontiguousarray(f.depth, dtype=np.float32)
    return arrays


def _check_replaceable(target: Path) -> dict[str, Any] | None:
    """Refuse (``FileExistsError``) unless ``target`` is empty or verifiably one of our saved maps.

    Returns the existing ``state.json`` (None for an empty folder). Ours means: a valid
    ``state.json`` of this format, and nothing but regular files of our names beside it (a folder
    or link named ``map.npz``, another program's ``state.json`` or any other file is not ours).
    """
    entries = list(target.iterdir())
    if not entries:
        return None
    foreign = sorted(e.name for e in entries if e.name not in _OUR_FILES or e.is_symlink() or not e.is_file())
    if foreign:
        raise FileExistsError(
            f"{target} holds entries that are not part of a saved map ({', '.join(foreign[:3])}); "
            "refusing to replace it"
        )
    try:
        return read_state_json(target)
    except (FileNotFoundError, ValueError) as exc:
        raise FileExistsError(
            f"{target} is not a reasoning_seg saved map ({exc}); refusing to replace it"
        ) from exc


def save_state(
    directory: str | Path,
    meta: dict[str, Any],
    map_arrays: dict[str, np.ndarray],
    keyframes: Sequence[tuple[int, RGBDFrame]],
    next_keyframe_id: int,
    allow_empty_overwrite: bool = False,
) -> Path:
    """Write a state into ``directory`` atomically (see the module docstring); returns the directory.

    Refuses (``FileExistsError``) to replace a folder that is not empty and not verifiably a saved
    map (:func:`_check_replaceable`), so a mistyped path cannot wipe unrelated files, and to replace
    a saved map that has keyframes with an empty state (a save right after ``clear_map`` would
    silently lose it) unless ``allow_empty_overwrite``. A symbolic link is followed: the folder it
    points to is written. An existing folder keeps its permissions (and owner, where allowed).
    """
    target = Path(os.path.realpath(directory))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    previous = _check_replaceable(target) if target.is_dir() else None
    if previous is not None and not keyframes and not allow_empty_overwrite:
        if int(previous.get("keyframes", 0) or 0) > 0:
            raise FileExistsError(
                f"{target} holds a saved map with {previous.get('keyframes')} keyframes and this state is "
                "empty; refusing to overwrite it (set allow_empty_overwrite to do it anyway)"
            )
    stat = target.stat() if target.is_dir() else None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if stat is not None:  # the replaced folder's mode and owner, not mkdtemp's 0700
            os.chmod(tmp, stat.st_mode & 0o7777)
            try:
                os.chown(tmp, stat.st_uid, stat.st_gid)
            except PermissionError:
                pass
        np.savez(tmp / MAP_FILE, **map_arrays)
        np.savez_compressed(tmp / KEYFRAMES_FILE, **_keyframe_arrays(keyframes))
        files = {}
        for name in (MAP_FILE, KEYFRAMES_FILE):
            _fsync(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "saved_at": time.time(),
            **meta,
            "keyframes": len(keyframes),
            "next_keyframe_id": int(next_keyframe_id),
            "files": files,
        }
        (tmp / STATE_FILE).write_text(json.dumps(doc, indent=2))
        _fsync(tmp / STATE_FILE)
        _fsync(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)  # only our verified files (checked above)
        else:
            os.rename(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_map_dir(base: str | Path, name: str, allow_absolute: bool = False) -> Path:
    """The folder a service request names: ``name`` relative to the configured ``base`` folder.

    Every input from the network is hostile: an empty name, an absolute path or one with ``..``
    (unless ``allow_absolute``), or one that leaves ``base`` through a symbolic link raises
    ``PermissionError`` before the file system is touched below ``base`` (so a refusal tells a
    caller nothing about what exists elsewhere).
    """
    text = str(name).strip()
    if not text or "\x00" in text:
        raise PermissionError("the map name is empty")
    path = Path(text)
    root = Path(os.path.realpath(os.path.expanduser(str(base))))
    if path.is_absolute() or ".." in path.parts:
        if not allow_absolute:
            raise PermissionError(
                f"'{text[:80]}' is not a name below the map directory (absolute paths and '..' are "
                "refused; set allow_absolute_map_paths to allow them)"
            )
        return Path(os.path.realpath(path))
    resolved = Path(os.path.realpath(root / path))
    if resolved != root and root not in resolved.parents:
        raise PermissionError(f"'{text[:80]}' leaves the map directory through a link: refused")
    if resolved == root:
        raise PermissionError("the map name must name a folder below the map directory")
    return resolved


def read_state_json(directory: str | Path) -> dict[str, Any]:
    """The validated ``state.json`` of a saved state (``FileNotFoundError`` / ``ValueError``)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory holding a saved map")
    state = d / STATE_FILE
    if not state.is_file():
        raise FileNotFoundError(f"{d} has no {STATE_FILE}: not a saved reasoning_seg map")
    if state.stat().st_size > _MAX_STATE_JSON:
        raise ValueError(f"{state} is too large to be a reasoning_seg state file")
    try:
        doc = json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{state} is not valid JSON (corrupt?): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if isinstance(fmt, str) and fmt.startswith("reasoning_seg.state/"):
            raise ValueError(f"{state} was written by an older reasoning_seg ({fmt}); re-create the map")
        raise ValueError(f"{state} is not a {STATE_FORMAT} file")
    if doc.get("version") != STATE_VERSION:
        raise ValueError(
            f"{state} has version {doc.get('version')!r}; this reasoning_seg reads {STATE_VERSION}"
        )
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{state} lists no files")
    for name in (MAP_FILE, KEYFRAMES_FILE):
        entry = files.get(name)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("bytes"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"{state} does not describe {name}")
    return doc


def _verify(path: Path, entry: dict[str, Any]) -> None:
    if not path.is_file():
        raise ValueError(f"{path} is missing (the saved state is incomplete)")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ValueError(f"{path} is corrupt or truncated: {size} bytes, state.json says {entry['bytes']}")
    if _sha256(path) != entry["sha256"]:
        raise ValueError(f"{path} is corrupt: its checksum differs from the one in state.json")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"{path} is corrupt: {type(exc).__name__}: {exc}") from exc


def _parse_keyframes(arrays: dict[str, np.ndarray], path: Path) -> list[tuple[int, RGBDFrame]]:
    ids, meta, poses = arrays.get("ids"), arrays.get("meta"), arrays.get("poses")
    if ids is None or meta is None or poses is None:
        raise ValueError(f"{path} is corrupt: ids/meta/poses missing")
    k = len(ids)
    if ids.dtype != np.int64 or ids.ndim != 1 or meta.shape != (k, 8) or poses.shape != (k, 4, 4):
        raise ValueError(f"{path} is corrupt: keyframe table shapes do not agree")
    if len(np.unique(ids)) != k:
        raise ValueError(f"{path} is corrupt: duplicate keyframe ids")
    out = []
    for kid, m, T in zip(ids.tolist(), meta, poses, strict=True):
        color, depth = arrays.get(f"color_{kid}"), arrays.get(f"depth_{kid}")
        try:
            intr = CameraIntrinsics(int(m[0]), int(m[1]), *map(float, m[2:6]))
        except ValueError as exc:
            raise ValueError(f"{path} is corrupt: keyframe {kid} has bad intrinsics ({exc})") from exc
        if color is None or depth is None:
            raise ValueError(f"{path} is corrupt: images of keyframe {kid} are missing")
        if color.shape != (intr.height, intr.width, 3) or color.dtype != np.uint8:
            raise ValueError(f"{path} is corrupt: colour of keyframe {kid} is {color.shape} {color.dtype}")
        if depth.shape != (intr.height, intr.width) or depth.dtype != np.float32:
            raise ValueError(f"{path} is corrupt: depth of keyframe {kid} is {depth.shape} {depth.dtype}")
        if not is_rigid_transform(T) or not np.all(np.isfinite(m[6:])):
            raise ValueError(f"{path} is corrupt: keyframe {kid} has a bad pose or stamp")
        out.append((int(kid), RGBDFrame(color, depth, intr, T.copy(), float(m[6]), int(m[7]))))
    return out


def load_state(directory: str | Path, max_bytes: int = 8 << 30) -> SavedState:
    """Read and validate a state written by :func:`save_state`; raises before returning anything partial.

    Files larger than ``max_bytes`` are refused before they are read (hashing a 20 GiB file took
    36 s of a node's admin thread).
    """
    from reasoning_seg.mapping.voxel_map import VoxelMap

    d = Path(directory)
    doc = read_state_json(d)
    for name in (MAP_FILE, KEYFRAMES_FILE):
        # The actual size must equal this one, and _verify compares sizes before it reads a byte.
        if doc["files"][name]["bytes"] > max_bytes:
            raise ValueError(f"{d / name} is larger than the {max_bytes >> 20} MiB limit (max_map_mb)")
        _verify(d / name, doc["files"][name])
    map_arrays = _load_npz(d / MAP_FILE)
    try:
        VoxelMap.check_arrays(map_arrays)
    except ValueError as exc:
        raise ValueError(f"{d / MAP_FILE} is corrupt: {exc}") from exc
    keyframes = _parse_keyframes(_load_npz(d / KEYFRAMES_FILE), d / KEYFRAMES_FILE)
    next_id = doc.get("next_keyframe_id")
    # Keyframe ids are int64 in messages and arrays: an id near 2**63 overflows on the next query.
    if (
        not isinstance(next_id, int)
        or isinstance(next_id, bool)
        or not 0 <= next_id < _MAX_KEYFRAME_ID
        or (keyframes and next_id <= max(k for k, _ in keyframes))
    ):
        raise ValueError(f"{d / STATE_FILE} has a bad next_keyframe_id {next_id!r}")
    return SavedState(doc, map_arrays, keyframes, next_id)
