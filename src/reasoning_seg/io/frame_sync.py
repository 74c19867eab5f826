"""Pairing colour, depth and pose that arrive on separate topics at slightly different times.

ROS drivers publish colour and depth as separate messages whose stamps differ by a few
milliseconds (or not at all for registered streams); poses come from another source entirely.
This module is the ROS-free equivalent of an approximate-time synchroniser plus a pose buffer, with
bounded memory: stale or unmatched messages are dropped and counted, never accumulated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")
U = TypeVar("U")


@dataclass
class Stamped(Generic[T]):
    """An item with its sensor stamp in seconds."""

    stamp: float
    item: T


class ApproximatePairSync(Generic[T, U]):
    """Pairs items of two streams whose stamps differ by at most ``slop`` seconds.

    Each stream keeps at most ``queue_size`` pending items. When a new item arrives it is matched
    with the closest pending item of the other stream; matched pairs and everything older on both
    streams are removed (a newer pair supersedes any older unmatched data).
    """

    def __init__(self, slop: float, queue_size: int = 10) -> None:
        self.slop = slop
        self._a: deque[Stamped[T]] = deque(maxlen=queue_size)
        self._b: deque[Stamped[U]] = deque(maxlen=queue_size)
        self.dropped = 0

    def add_a(self, stamp: float, item: T) -> tuple[float, T, U] | None:
        """Add to stream A; returns ``(stamp_a, a, b)`` when a partner was found."""
        return self._add(stamp, item, self._a, self._b, first=True)

    def add_b(self, stamp: float, item: U) -> tuple[float, T, U] | None:
        """Add to stream B; returns ``(stamp_a, a, b)`` when a partner was found."""
        return self._add(stamp, item, self._b, self._a, first=False)

    def _add(self, stamp, item, mine: deque, other: deque, first: bool):
        if not other:
            if len(mine) == mine.maxlen:
                self.dropped += 1
            mine.append(Stamped(stamp, item))
            return None
        diffs = [abs(o.stamp - stamp) for o in other]
        j = int(np.argmin(diffs))
        if diffs[j] > self.slop:
            if len(mine) == mine.maxlen:
                self.dropped += 1
            mine.append(Stamped(stamp, item))
            return None
        partner = other[j]
        # Everything older than the matched pair on either stream can never match better now.
        for _ in range(j + 1):
            other.popleft()
        while mine and mine[0].stamp <= stamp:
            mine.popleft()
            self.dropped += 1
        if first:
            return stamp, item, partner.item
        return partner.stamp, partner.item, item


class PoseBuffer:
    """Recent camera poses for looking up the pose at an image's stamp.

    Between two buffered poses the pose is interpolated (linear position, normalised-lerp
    rotation, accurate for the small steps of a 30 Hz stream); outside the buffered interval the
    nearest pose is used only if it is within ``max_age`` seconds, otherwise the lookup fails:
    integrating a frame with a stale pose smears the map, which is worse than skipping the frame.
    """

    def __init__(self, max_age: float, capacity: int = 200) -> None:
        self.max_age = max_age
        self._stamps: deque[float] = deque(maxlen=capacity)
        self._poses: deque[np.ndarray] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        """Stamp of the latest buffered pose (None when empty)."""
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp: float, T_world_cam: np.ndarray) -> None:
        """Insert a pose; out-of-order poses are placed by stamp."""
        if self._stamps and stamp < self._stamps[-1]:
            items = sorted(
                [*zip(self._stamps, self._poses, strict=True), (stamp, T_world_cam)], key=lambda x: x[0]
            )
            self._stamps.clear()
            self._poses.clear()
            for s, p in items[-(self._stamps.maxlen or len(items)) :]:
                self._stamps.append(s)
                self._poses.append(p)
            return
        self._stamps.append(stamp)
        self._poses.append(np.asarray(T_world_cam, dtype=np.float64))

    def clear(self) -> None:
        """Forget every pose (the sensor clock jumped back: a replayed bag, a restarted simulation)."""
        self._stamps.clear()
        self._poses.clear()

    def lookup(self, stamp: float) -> tuple[np.ndarray | None, str]:
        """``(T_world_cam, "")`` or ``(None, why)``."""
        T, _, why = self.lookup_reason(stamp)
        return T, why

    def lookup_reason(self, stamp: float) -> tuple[np.ndarray | None, str, str]:
        """``(T_world_cam, "", "")`` or ``(None, reason, why)``.

        ``reason`` is a short counter key: ``no_pose`` when no pose was ever received, ``stale_pose``
        when the poses around the stamp are too far away in time (the pose source lags, stalled or
        has a gap), so operators can tell a missing pose source from a slow one.
        """
        if not self._stamps:
            return None, "no_pose", "no pose received yet"
        s = np.asarray(self._stamps)
        i = int(np.searchsorted(s, stamp))
        if 0 < i < len(s):
            t0, t1 = s[i - 1], s[i]
            if t1 - t0 <= 2 * self.max_age:
                a = 0.0 if t1 == t0 else (stamp - t0) / (t1 - t0)
                return _interpolate(self._poses[i - 1], self._poses[i], a), "", ""
            # Too far apart to interpolate across (the pose source stalled, then resumed): the
            # nearer pose is used under the same max_age rule as at the ends of the buffer.
            j = i - 1 if stamp - t0 <= t1 - stamp else i
            if abs(stamp - s[j]) > self.max_age:
                return None, "stale_pose", f"pose gap of {t1 - t0:.2f}s around the image stamp"
            return self._poses[j].copy(), "", ""
        j = 0 if i == 0 else len(s) - 1
        age = abs(stamp - s[j])
        if age > self.max_age:
            return (
                None,
                "stale_pose",
                f"nearest pose is {age:.2f}s away from the image stamp (max {self.max_age:.2f}s)",
            )
        return self._poses[j].copy(), "", ""


class StampJoin(Generic[T]):
    """Joins a slow or one-off stream (CameraInfo) to image pairs by stamp.

    Drivers publish CameraInfo either with every image (same stamp) or once, latched, with an old
    or zero stamp. :meth:`match` therefore prefers the item within ``slop`` of the image stamp,
    waits for it while the stream looks live (its newest stamp is within ``live_window`` of the
    image), and otherwise falls back to the closest item, which for a static CameraInfo is the
    only one there is.
    """

    def __init__(self, slop: float, live_window: float = 0.5, capacity: int = 30) -> None:
        self.slop = slop
        self.live_window = live_window
        self._items: deque[Stamped[T]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def newest_stamp(self) -> float | None:
        """Stamp of the newest item (None when empty)."""
        return self._items[-1].stamp if self._items else None

    def clear(self) -> None:
        """Forget every item."""
        self._items.clear()

    def add(self, stamp: float, item: T) -> None:
        """Keep ``item``; an out-of-order one is placed by stamp."""
        items = self._items
        if items and stamp < items[-1].stamp:
            merged = sorted([*items, Stamped(stamp, item)], key=lambda x: x.stamp)
            items.clear()
            items.extend(merged[-(items.maxlen or len(merged)) :])
            return
        items.append(Stamped(stamp, item))

    def match(self, stamp: float) -> tuple[T | None, str]:
        """``(item, how)``: how is ``stamp`` (within slop), ``closest`` (fallback), ``wait`` or ``none``.

        ``wait`` (item None) means the stream is live but its item for this stamp has not arrived
        yet; the caller holds the pair (bounded) and asks again, or takes :meth:`closest`.
        """
        if not self._items:
            return None, "none"
        best = self.closest(stamp)
        assert best is not None
        if abs(best.stamp - stamp) <= self.slop:
            return best.item, "stamp"
        newest = self._items[-1].stamp
        if newest < stamp and stamp - newest <= self.live_window:
            return None, "wait"
        return best.item, "closest"

    def closest(self, stamp: float) -> Stamped[T] | None:
        """The item whose stamp is nearest ``stamp`` (None when empty)."""
        if not self._items:
            return None
        return min(self._items, key=lambda x: abs(x.stamp - stamp))


def _interpolate(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    """Blend two rigid transforms (a=0 -> T0); the rotation is re-orthonormalised."""
    out = np.eye(4)
    out[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
    R = (1 - a) * T0[:3, :3] + a * T1[:3, :3]
    u, _, vt = np.linalg.svd(R)
    R = u @ vt
    if np.linalg.det(R) < 0:
        u[:, -1] *= -1
        R = u @ vt
    out[:3, :3] = R
    return out
