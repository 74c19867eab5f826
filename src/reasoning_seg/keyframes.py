"""Sliding window of keyframes: the images a query can show to the 2D reasoning model.

The map keeps geometry; the 2D model needs pixels. Keeping every frame of a 30 Hz stream would be
unbounded and redundant, so a frame becomes a keyframe only when the camera moved or turned enough
(or enough time passed), and the window keeps a fixed number of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from reasoning_seg.config import KeyframeConfig
from reasoning_seg.frames import RGBDFrame


@dataclass(frozen=True)
class Keyframe:
    """A stored view; ``keyframe_id`` is unique for the lifetime of the window (never reused)."""

    keyframe_id: int
    frame: RGBDFrame

    @property
    def T_world_cam(self) -> np.ndarray:  # noqa: N802 - conventional symbol
        """Camera pose in the map frame."""
        return self.frame.T_world_cam


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:  # noqa: N803
    """Angle of the relative rotation between two rotation matrices, in degrees."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


class KeyframeWindow:
    """Fixed-size FIFO of keyframes chosen by motion and time."""

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        self.config = config or KeyframeConfig()
        self._frames: deque[Keyframe] = deque(maxlen=self.config.window_size)
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Keyframe]:
        return iter(list(self._frames))

    def snapshot(self) -> list[Keyframe]:
        """A copy of the current window (safe to use while new keyframes arrive)."""
        return list(self._frames)

    def wants(self, frame: RGBDFrame) -> bool:
        """Whether ``frame`` differs enough from the newest keyframe to be kept."""
        if not self._frames:
            return True
        last = self._frames[-1].frame
        c = self.config
        moved = np.linalg.norm(frame.T_world_cam[:3, 3] - last.T_world_cam[:3, 3]) >= c.min_translation
        turned = rotation_angle_deg(last.T_world_cam[:3, :3], frame.T_world_cam[:3, :3]) >= c.min_rotation_deg
        waited = c.max_interval > 0 and (frame.stamp - last.stamp) >= c.max_interval
        return bool(moved or turned or waited)

    def offer(self, frame: RGBDFrame) -> Keyframe | None:
        """Keep ``frame`` if :meth:`wants` it; returns the new keyframe or None."""
        if not self.wants(frame):
            return None
        return self.add(frame)

    def add(self, frame: RGBDFrame, keyframe_id: int | None = None) -> Keyframe:
        """Keep ``frame`` unconditionally; ``keyframe_id`` is given when restoring a saved window."""
        kid = self._next_id if keyframe_id is None else int(keyframe_id)
        kf = Keyframe(kid, frame)
        self._next_id = max(self._next_id, kid + 1)
        self._frames.append(kf)
        return kf

    def clear(self) -> None:
        """Forget all keyframes (ids keep increasing so old ids are never confused with new ones)."""
        self._frames.clear()
