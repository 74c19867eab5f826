"""Whole-file writes that a crash cannot leave half done (checkpoints, pseudo-label files).

Why: a trainer killed mid-save, or a full disk, must leave the previous file or none, never a
truncated one that a later run loads. The file is written next to its target and renamed over it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` from what ``write`` puts into a binary file; returns the path.

    The temporary file lives in the target's folder (so the rename is atomic) and is removed on any
    error; the finished file gets the usual mode (``mkstemp`` creates 0600) under the process umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
        os.chmod(path, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
