"""The simulated room's vocabulary: object specs, placed parts, query predicates, and geometry helpers.

Shared by the layout generator, the query generator and :class:`~reasoning_seg.sim.scene.SyntheticScene`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.sim.catalogue import (
    STRUCTURE_CATEGORIES,
    object_parts,
)

if TYPE_CHECKING:  # typing only: no import cycle at run time
    pass


SCENE_FILE = "scene.json"
SCENE_FORMAT = "reasoning_seg.sim.scene"
SCENE_VERSION = 1

#: What a query tests: "explicit" names the target ("the red chair"); "affordance" names a use
#: ("somewhere I can sit down"); "spatial" needs a relation to another object ("the cup on the
#: left of the monitor"); "no_name" replaces the target's name with "object" / "thing" (the
#: VG-w/o-ON setting: "the red object on the left of the monitor"); "absent" asks for something
#: that is not in the room (target id 0: the right answer is "not found").
QUERY_KINDS = ("explicit", "affordance", "spatial", "no_name", "absent")

#: A superlative ("the bin closest to the door") is only considered unambiguous when the runner-up
#: is at least this much (metres) farther / nearer; otherwise a person could not tell either.
SPATIAL_MARGIN = 0.4

#: "On the left / right of" (see :meth:`SyntheticScene.side_of`): how far (m) beyond the anchor's
#: side edge a candidate's centre may be, how far in front of / behind the anchor's front / back
#: face, and the margin (m) by which every candidate must be clearly inside or clearly outside
#: that region; one candidate closer than this to the region's border makes the relation ambiguous.
SIDE_RANGE = 1.0
SIDE_DEPTH = 0.75
SIDE_MARGIN = 0.1

#: Tolerance (metres) for "rests on": bottom of one box within this of the top of another.
_REST_TOL = 0.01

#: A table has a front (see :meth:`SyntheticScene.facing`) when its back edge is within this
#: distance (m) of a wall and it stands square to it (within ``_SQUARE_TOL`` radians).
_WALL_BACK_GAP = 0.15
_SQUARE_TOL = 0.1

#: Unique landmarks that "closest to / farthest from" queries may refer to.
_ANCHOR_CATEGORIES = ("door", "window", "sofa", "shelf", "cabinet", "monitor", "lamp", "plant")


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


def _vec3(value: Sequence[float], name: str, positive: bool = False) -> tuple[float, float, float]:
    v = tuple(float(x) for x in value)
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    if positive and min(v) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v  # type: ignore[return-value]


@dataclass
class ObjectSpec:
    """One object instance: an oriented bounding box (rotated by ``yaw`` about z) plus semantics.

    ``center`` / ``size`` are the bounding box of the whole object in metres (size along the
    object's local x, y, z); the object's front faces its local +y, so a person standing in front
    of it has its local +x on their left (see :mod:`reasoning_seg.sim.catalogue`).
    ``instance_id`` >= 1 (0 is reserved for "nothing"). The detailed geometry comes from
    :data:`PART_BUILDERS`.
    """

    instance_id: int
    category: str
    color_name: str
    color: tuple[int, int, int]
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float = 0.0
    affordances: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.instance_id = int(self.instance_id)
        if self.instance_id < 1:
            raise ValueError(f"instance_id must be >= 1 (0 means 'nothing'), got {self.instance_id}")
        color = tuple(int(c) for c in self.color)
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"color must be 3 values in 0..255, got {self.color!r}")
        self.color = color  # type: ignore[assignment]
        self.center = _vec3(self.center, "center")
        self.size = _vec3(self.size, "size", positive=True)
        self.yaw = float(self.yaw)
        if not math.isfinite(self.yaw):
            raise ValueError(f"yaw must be finite, got {self.yaw}")
        self.category = str(self.category)
        self.color_name = str(self.color_name)
        self.affordances = [str(a) for a in self.affordances]

    @property
    def bottom(self) -> float:
        """Height of the lowest point (m)."""
        return self.center[2] - self.size[2] / 2

    @property
    def top(self) -> float:
        """Height of the highest point (m)."""
        return self.center[2] + self.size[2] / 2

    @property
    def is_structure(self) -> bool:
        """Part of the room shell (floor, walls, door, ...) rather than furniture."""
        return self.category in STRUCTURE_CATEGORIES

    def contains_xy(self, xy: Sequence[float], tol: float = 1e-9) -> bool:
        """True when the horizontal point lies inside this object's footprint."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dy = xy[0] - self.center[0], xy[1] - self.center[1]
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        return abs(lx) <= self.size[0] / 2 + tol and abs(ly) <= self.size[1] / 2 + tol

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of ``from_dict``)."""
        return {
            "instance_id": self.instance_id,
            "category": self.category,
            "color_name": self.color_name,
            "color": list(self.color),
            "center": list(self.center),
            "size": list(self.size),
            "yaw": self.yaw,
            "affordances": list(self.affordances),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectSpec:
        """Rebuild from ``to_dict`` output; ValueError on malformed input."""
        return cls(
            instance_id=d["instance_id"],
            category=d["category"],
            color_name=d["color_name"],
            color=d["color"],
            center=d["center"],
            size=d["size"],
            yaw=d.get("yaw", 0.0),
            affordances=list(d.get("affordances", [])),
        )


@dataclass(frozen=True)
class SceneBox:
    """A part placed in the world: what the mesh, the collision check and tests work on."""

    instance_id: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    color: tuple[int, int, int]


_NESTED_KEYS = ("on", "supports", "left_of", "right_of", "nearest_to", "farthest_from")
_ATTRIBUTE_KEYS = ("category", "color_name", "affordance")


@dataclass(frozen=True)
class QueryPredicate:
    """What a query's text means, in a form :meth:`SyntheticScene.select` can evaluate.

    Evaluated in this order: the attribute filters (``category``, ``color_name``, ``affordance``)
    are ANDed; ``on`` keeps objects resting on something the nested predicate selects,
    ``supports`` keeps objects that something selected rests on; ``left_of`` / ``right_of`` keep
    the objects on that side of the (unique, front-facing) anchor as seen by a person standing in
    front of it (exact definition: :meth:`SyntheticScene.side_of`), or nothing when any candidate
    is too close to the border of that region to tell; ``nearest_to`` / ``farthest_from`` then
    pick the single candidate closest to / farthest from the (unique) anchor, or nothing when the
    choice is not clear by :data:`SPATIAL_MARGIN`. Nesting lets a later catalogue add relations
    without changing the query format.
    """

    category: str | None = None
    color_name: str | None = None
    affordance: str | None = None
    on: QueryPredicate | None = None
    supports: QueryPredicate | None = None
    nearest_to: QueryPredicate | None = None
    farthest_from: QueryPredicate | None = None
    left_of: QueryPredicate | None = None
    right_of: QueryPredicate | None = None

    def __post_init__(self) -> None:
        if self.nearest_to is not None and self.farthest_from is not None:
            raise ValueError("a predicate can use nearest_to or farthest_from, not both")
        if self.left_of is not None and self.right_of is not None and self.left_of == self.right_of:
            raise ValueError("nothing is both on the left and on the right of the same anchor")

    def nested(self) -> dict[str, QueryPredicate]:
        """The nested predicates (anchors and supports) by relation name, in evaluation order."""
        return {k: getattr(self, k) for k in _NESTED_KEYS if getattr(self, k) is not None}

    def without_superlative(self) -> QueryPredicate:
        """The same description minus "closest / farthest" (used to prove spatial reasoning is needed)."""
        return replace(self, nearest_to=None, farthest_from=None)

    def without_relations(self) -> QueryPredicate:
        """Only the attribute filters: what is left when every relation to another object is dropped."""
        return QueryPredicate(category=self.category, color_name=self.color_name, affordance=self.affordance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of ``from_dict``)."""
        out: dict[str, Any] = {}
        for key in _ATTRIBUTE_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key, sub in self.nested().items():
            out[key] = sub.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QueryPredicate:
        """Rebuild from ``to_dict`` output; ValueError on malformed input."""
        unknown = set(d) - set(_ATTRIBUTE_KEYS) - set(_NESTED_KEYS)
        if unknown:
            raise ValueError(f"unknown predicate keys {sorted(unknown)}")
        nested = {k: cls.from_dict(d[k]) for k in _NESTED_KEYS if k in d}
        return cls(
            category=d.get("category"),
            color_name=d.get("color_name"),
            affordance=d.get("affordance"),
            **nested,
        )


@dataclass
class SceneQuery:
    """A natural-language request whose answer is the object ``target_instance_id``.

    ``kind`` is one of :data:`QUERY_KINDS`. ``predicate`` is the checkable meaning of ``text``.
    An "absent" query asks for something that is not in the room: its target is 0 ("nothing")
    and its predicate selects nothing; every other kind has a real target (id >= 1).
    """

    text: str
    target_instance_id: int
    kind: str
    predicate: QueryPredicate | None = None

    def __post_init__(self) -> None:
        if self.kind not in QUERY_KINDS:
            raise ValueError(f"query kind must be one of {QUERY_KINDS}, got {self.kind!r}")
        self.target_instance_id = int(self.target_instance_id)
        if self.kind == "absent" and self.target_instance_id != 0:
            raise ValueError(f"an absent query has target 0, got {self.target_instance_id}")
        if self.kind != "absent" and self.target_instance_id < 1:
            raise ValueError(f"a {self.kind} query needs a target id >= 1, got {self.target_instance_id}")

    @property
    def is_absent(self) -> bool:
        """True when the right answer is "there is no such thing here"."""
        return self.kind == "absent"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of ``from_dict``)."""
        out: dict[str, Any] = {
            "text": self.text,
            "target_instance_id": self.target_instance_id,
            "kind": self.kind,
        }
        if self.predicate is not None:
            out["predicate"] = self.predicate.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneQuery:
        """Rebuild from ``to_dict`` output; ValueError on malformed input."""
        pred = d.get("predicate")
        return cls(
            text=d["text"],
            target_instance_id=d["target_instance_id"],
            kind=d["kind"],
            predicate=None if pred is None else QueryPredicate.from_dict(pred),
        )


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _boxes_overlap(
    c1: Sequence[float],
    s1: Sequence[float],
    yaw1: float,
    c2: Sequence[float],
    s2: Sequence[float],
    yaw2: float,
    tol: float = 1e-6,
    clearance: float = 0.0,
) -> bool:
    """True when two z-yawed boxes share volume deeper than ``tol`` (touching is not overlap).

    ``clearance`` inflates both footprints (not heights), so "keep 5 cm apart" and "may stand on"
    are both expressible. Separating-axis test on the four horizontal face normals + the z interval.
    """
    z_overlap = min(c1[2] + s1[2] / 2, c2[2] + s2[2] / 2) - max(c1[2] - s1[2] / 2, c2[2] - s2[2] / 2)
    if z_overlap <= tol:
        return False
    h1 = np.array([s1[0] / 2 + clearance / 2, s1[1] / 2 + clearance / 2])
    h2 = np.array([s2[0] / 2 + clearance / 2, s2[1] / 2 + clearance / 2])
    a1 = np.array([[math.cos(yaw1), math.sin(yaw1)], [-math.sin(yaw1), math.cos(yaw1)]])  # rows: local x, y
    a2 = np.array([[math.cos(yaw2), math.sin(yaw2)], [-math.sin(yaw2), math.cos(yaw2)]])
    d = np.array([c2[0] - c1[0], c2[1] - c1[1]])
    for axis in (*a1, *a2):
        r1 = np.sum(h1 * np.abs(a1 @ axis))
        r2 = np.sum(h2 * np.abs(a2 @ axis))
        if abs(d @ axis) >= r1 + r2 - tol:
            return False
    return True


def _footprint_corners(center: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [size[0] / 2, size[1] / 2]
    return local @ np.array([[c, s], [-s, c]]) + [center[0], center[1]]


def _horizontal_distance(a: ObjectSpec, b: ObjectSpec) -> float:
    return math.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1])


def _to_local_xy(o: ObjectSpec, xy: Sequence[float]) -> tuple[float, float]:
    """A horizontal world point in ``o``'s frame: (along its local x, along its local y = front)."""
    c, s = math.cos(o.yaw), math.sin(o.yaw)
    dx, dy = xy[0] - o.center[0], xy[1] - o.center[1]
    return c * dx + s * dy, -s * dx + c * dy


def _rests_on(a: ObjectSpec, b: ObjectSpec) -> bool:
    """``a`` stands on ``b``: a's bottom touches the upper face of one of b's parts right under a's centre.

    Working on parts rather than b's bounding box is what makes "the book on the shelf" true for
    a book on any board of the shelf, not only on its top; for a table the top is the only
    candidate face, as before.
    """
    if a.instance_id == b.instance_id or not b.contains_xy(a.center[:2]):
        return False
    if not (b.bottom - _REST_TOL <= a.bottom <= b.top + _REST_TOL):
        return False
    u, v = _to_local_xy(b, a.center[:2])
    for p in object_parts(b):
        top = b.center[2] + p.center[2] + p.size[2] / 2
        if (
            abs(a.bottom - top) <= _REST_TOL
            and abs(u - p.center[0]) <= p.size[0] / 2
            and abs(v - p.center[1]) <= p.size[1] / 2
        ):
            return True
    return False


def _world_parts(o: ObjectSpec) -> list[SceneBox]:
    """``o``'s parts as world-frame boxes."""
    rot = _rot_z(o.yaw)
    out = []
    for p in object_parts(o):
        c = rot @ np.array(p.center) + np.array(o.center)
        out.append(SceneBox(o.instance_id, (float(c[0]), float(c[1]), float(c[2])), p.size, o.yaw, p.color))
    return out


def _unit_box() -> tuple[np.ndarray, np.ndarray]:
    """Corners of a unit cube centred at 0 and 12 outward-facing (counter-clockwise) triangles."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    tris = []
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        for side in (0, 1):
            quad = []
            for sb, sc in ((0, 0), (1, 0), (1, 1), (0, 1)):  # CCW in the (b, c) plane, seen from +a
                bits = [0, 0, 0]
                bits[a], bits[b], bits[c] = side, sb, sc
                quad.append(4 * bits[0] + 2 * bits[1] + bits[2])
            t1, t2 = [quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]
            if side == 0:  # the -a face is seen from -a: reverse the winding
                t1, t2 = t1[::-1], t2[::-1]
            tris += [t1, t2]
    return corners, np.array(tris, dtype=np.int32)


_UNIT_CORNERS, _UNIT_TRIANGLES = _unit_box()


@lru_cache(maxsize=8)
def _camera_rays(intrinsics: CameraIntrinsics) -> np.ndarray:
    """(H*W, 3) float32 camera-frame pixel rays with z = 1 (cached: one camera renders many frames)."""
    rays = intrinsics.pixel_rays().reshape(-1, 3).astype(np.float32)
    rays.flags.writeable = False
    return rays


def _rodrigues(rotvec: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx
