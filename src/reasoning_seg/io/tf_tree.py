"""A minimal TF tree: the latest transform of every edge, composed between two frames.

Real robot recordings carry the camera pose on ``/tf`` and ``/tf_static`` (map -> odom ->
base_link -> camera optical frame), not on a pose topic. Where tf2 is not installed (the PyPI
wheels have no tf2_msgs/tf2_ros), the player derives the camera pose from the recorded tree with
this class so the same bag still plays into a map.

It is deliberately simpler than tf2's BufferCore: it keeps only the newest transform per edge
(no time interpolation), so a pose composed from edges published at different rates mixes their
newest samples. For the usual recording (one dynamic chain published together, static mounts
below it) this is exact at the dynamic message's stamp; the node with real tf2 interpolates.
"""

from __future__ import annotations

import numpy as np

#: A chain longer than this is a cycle in a corrupt tree, not a robot.
MAX_DEPTH = 64


class TfTree:
    """Newest ``T_parent_child`` per child frame, looked up between any two connected frames."""

    def __init__(self) -> None:
        # child -> (parent, T_parent_child, stamp, static)
        self._edges: dict[str, tuple[str, np.ndarray, float, bool]] = {}

    def __len__(self) -> int:
        return len(self._edges)

    def add(self, parent: str, child: str, T_parent_child: np.ndarray, stamp: float, static: bool) -> None:
        """Record a transform; an older dynamic sample than the one held is ignored."""
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two different frames, got {parent!r} -> {child!r}")
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent} -> {child} is not a finite 4x4 matrix")
        held = self._edges.get(child)
        if held is not None and not static and not held[3] and stamp < held[2]:
            return
        self._edges[child] = (parent, T, float(stamp), bool(static))

    def _to_root(self, frame: str) -> list[str]:
        """``[frame, parent, grandparent, ..., root]``."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]][0])
            if len(chain) > MAX_DEPTH:
                raise ValueError(f"TF tree has a cycle or a chain deeper than {MAX_DEPTH} at {frame!r}")
        return chain

    def _compose(self, chain: list[str]) -> tuple[np.ndarray, float | None]:
        """``T_top_bottom`` for ``chain = [bottom, ..., top]`` and its newest dynamic stamp."""
        T = np.eye(4)
        stamp: float | None = None
        for child in chain[:-1]:
            _, T_pc, s, static = self._edges[child]
            T = T_pc @ T
            if not static:
                stamp = s if stamp is None else max(stamp, s)
        return T, stamp

    def lookup(self, target: str, source: str) -> tuple[np.ndarray, float | None] | None:
        """``(T_target_source, stamp)`` or None when the frames are not connected.

        ``stamp`` is the newest stamp among the dynamic edges on the path (None if all are static).
        """
        if target == source:
            return np.eye(4), None
        up_s, up_t = self._to_root(source), self._to_root(target)
        on_target_side = set(up_t)
        common = next((f for f in up_s if f in on_target_side), None)
        if common is None:
            return None
        T_c_s, s1 = self._compose(up_s[: up_s.index(common) + 1])
        T_c_t, s2 = self._compose(up_t[: up_t.index(common) + 1])
        stamps = [s for s in (s1, s2) if s is not None]
        return np.linalg.inv(T_c_t) @ T_c_s, (max(stamps) if stamps else None)
