"""A simulated indoor room with exact ground truth: geometry, rendered RGB-D, instance ids, queries.

Why it exists: the pipeline (fusion -> voxel map -> multi-view reasoning -> 3D mask) has to be
scored, and real recordings carry no per-point truth. A simulated room built from boxes gives
every rendered pixel and every map point an exact instance id, and every generated query an
answer that is verified by code to be the *only* object matching its description.

Design notes:

- Objects are described by :class:`ObjectSpec` (an oriented bounding box + category, colour,
  affordances). Their geometry (a few boxes: a table is a top and four legs) is *derived* from the
  spec by a per-category part builder, so ``scene.json`` stores only specs and the mesh is rebuilt
  identically on load. The catalogue (builders, colours, uses, which side is an object's front)
  lives in :mod:`reasoning_seg.sim.catalogue`; a new category only needs a builder there.
- Several instances of a category (chairs, tables, bins, cups, books) are placed on purpose, so
  that many objects can only be told apart by where they are.
- Queries carry a machine-checkable :class:`QueryPredicate` next to their text;
  :meth:`SyntheticScene.select` evaluates it, and a query is only generated when that evaluation
  returns exactly its target (or, for "absent" queries, nothing at all).
- Rendering casts one ray per pixel with ``open3d.t.geometry.RaycastingScene`` (CPU, no
  display), or, where Open3D is missing (the GPU machine) or ``REASONING_SEG_RAYCAST=torch``, with
  the exact ray/box slab test of :mod:`reasoning_seg.sim.raycast` (PyTorch, CPU or CUDA). Ray
  directions have unit z in the camera frame, so the hit parameter *is* the z-depth the rest of
  the package expects (not the range along the ray).
- World frame: z up, floor at z = 0, room interior ``[0, lx] x [0, ly] x [0, h]`` metres.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform, look_at
from reasoning_seg.frames import RGBDFrame
from reasoning_seg.sim.catalogue import (
    ABSENT_OBJECTS,
    AFFORDANCE_CLAUSES,
    AFFORDANCE_PHRASES,
    CATEGORY_AFFORDANCES,
    CATEGORY_COLORS,
    COLOR_PALETTE,
    FRONT_CATEGORIES,
    PART_BUILDERS,
    STRUCTURE_CATEGORIES,
    SURROUNDING_CATEGORIES,
    BoxPart,
    object_parts,
    shelf_board_tops,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import open3d as o3d


def _open3d():
    """Open3D, imported on the first ray cast.

    The rest of the module (scenes, queries, ground-truth lookups of recorded rooms) must import on
    machines without Open3D, such as the GPU machine that trains the 3D network.
    """
    import open3d

    return open3d


#: Environment variables choosing the renderer's ray caster. Environment variables rather than
#: arguments because the scenes are rendered inside pseudo-label worker subprocesses.
RAYCAST_ENV = "REASONING_SEG_RAYCAST"
RAYCAST_DEVICE_ENV = "REASONING_SEG_RAYCAST_DEVICE"
RAYCAST_BACKENDS = ("auto", "open3d", "torch")


def _raycast_backend() -> tuple[str, str | None]:
    """``(backend, torch_device)`` from the environment: "open3d" or "torch" (device None for Open3D).

    ``auto`` (the default) keeps Open3D wherever it imports, so renders made before the torch caster
    existed are reproduced bit for bit; without Open3D it falls back to the torch slab test.
    """
    choice = os.environ.get(RAYCAST_ENV, "auto").strip().lower() or "auto"
    if choice not in RAYCAST_BACKENDS:
        raise ValueError(f"{RAYCAST_ENV} must be one of {RAYCAST_BACKENDS}, got {choice!r}")
    if choice == "auto":
        try:
            _open3d()
            choice = "open3d"
        except ImportError:
            choice = "torch"
    if choice == "open3d":
        return choice, None
    device = os.environ.get(RAYCAST_DEVICE_ENV, "").strip()
    if not device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return choice, device


__all__ = [
    "ABSENT_OBJECTS",
    "AFFORDANCE_CLAUSES",
    "AFFORDANCE_PHRASES",
    "CATEGORY_AFFORDANCES",
    "CATEGORY_COLORS",
    "COLOR_PALETTE",
    "FRONT_CATEGORIES",
    "PART_BUILDERS",
    "QUERY_KINDS",
    "SCENE_FILE",
    "SIDE_DEPTH",
    "SIDE_MARGIN",
    "SIDE_RANGE",
    "SPATIAL_MARGIN",
    "STRUCTURE_CATEGORIES",
    "SURROUNDING_CATEGORIES",
    "BoxPart",
    "ObjectSpec",
    "QueryPredicate",
    "SceneBox",
    "SceneQuery",
    "SyntheticScene",
    "apply_depth_noise",
    "object_parts",
    "simulate_pose_drift",
]

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


# ---------------------------------------------------------------------------------------------
# Appearance: deterministic texture and a Kinect-like depth noise model
# ---------------------------------------------------------------------------------------------

_LIGHT_DIR = np.array([0.35, -0.25, 1.0]) / np.linalg.norm([0.35, -0.25, 1.0])  # towards the light
_AMBIENT, _DIFFUSE = 0.5, 0.5


_NOISE_N = 1024  # lattice period of the texture tables: 1024 cells >= 10 m, no visible repetition


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """Fixed pseudo-random lattice values in [-1, 1) (PCG64 with a constant seed: same on every machine)."""
    table = np.random.default_rng(0x5EED).uniform(-1.0, 1.0, _NOISE_N * _NOISE_N).astype(np.float32)
    table.flags.writeable = False
    return table


def _lattice(iu: np.ndarray, iv: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Table value of integer cell (iu, iv), shifted per ``salt`` so objects get different patterns."""
    mask = np.int32(_NOISE_N - 1)
    return np.take(
        _noise_table(),
        ((iu + salt * np.int32(131)) & mask) * np.int32(_NOISE_N) + ((iv + salt * np.int32(71)) & mask),
    )


def _surface_texture(u: np.ndarray, v: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Multiplicative brightness factor (about 1 +- 0.08) from face-tangent coordinates (metres).

    Smooth value noise (6 cm cells, smoothstep-bilinear) plus a 1 cm grain. Being a function of
    the surface point, it moves with the surface across views, which gives photometric methods
    something to track; tangent coordinates avoid flicker on faces lying on lattice boundaries.
    """
    cu, cv = u / np.float32(0.06), v / np.float32(0.06)
    fu, fv = np.floor(cu), np.floor(cv)
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    au, av = cu - fu, cv - fv
    au, av = au * au * (3 - 2 * au), av * av * (3 - 2 * av)
    coarse = (_lattice(iu, iv, salt) * (1 - au) + _lattice(iu + 1, iv, salt) * au) * (1 - av) + (
        _lattice(iu, iv + 1, salt) * (1 - au) + _lattice(iu + 1, iv + 1, salt) * au
    ) * av
    gu = np.floor(u / np.float32(0.01)).astype(np.int32)
    gv = np.floor(v / np.float32(0.01)).astype(np.int32)
    grain = _lattice(gu, gv, salt + 509)
    return 1.0 + 0.05 * coarse + 0.03 * grain


def apply_depth_noise(
    depth: np.ndarray,
    rng: np.random.Generator,
    incidence_cos: np.ndarray | None = None,
    min_range: float = 0.4,
    max_range: float = 8.0,
    dropout: float = 0.01,
    grazing_cos: float = 0.2,
    edge_jump: float = 0.05,
    edge_dropout: float = 0.5,
) -> np.ndarray:
    """Kinect-like degradation of a perfect z-depth image (metres in, metres out, 0 = no reading).

    Axial noise sigma(z) = 1.2 mm + 1.9 mm * (z - 0.4 m)^2 (the structured-light model of Nguyen,
    Izadi & Lovell, 2012). Missing returns (depth 0) are part of the model, as on a real sensor:
    outside ``[min_range, max_range]``, on surfaces seen at grazing angles (``incidence_cos`` =
    |cos| between ray and normal below ``grazing_cos``), at random (``dropout``), and on the far
    side of depth discontinuities, where the projector's pattern is shadowed by the nearer edge
    (a pixel more than ``edge_jump`` x its depth behind a 4-neighbour loses its reading with
    probability ``edge_dropout``). Lets tests check that fusion tolerates real-sensor artefacts.
    """
    z = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(z) & (z > 0)
    zv = np.where(valid, z, 0.0)
    sigma = 0.0012 + 0.0019 * (zv - 0.4) ** 2
    noisy = zv + rng.standard_normal(z.shape) * sigma
    lost = ~valid | (zv < min_range) | (zv > max_range) | (rng.random(z.shape) < dropout) | (noisy <= 0)
    if incidence_cos is not None:
        lost |= np.asarray(incidence_cos) < grazing_cos
    shadow_draw = rng.random(z.shape)  # always drawn, so the stream does not depend on the image
    if z.ndim == 2 and edge_dropout > 0:
        nearest = np.full(z.shape, np.inf)
        padded = np.pad(np.where(valid, z, np.inf), 1, constant_values=np.inf)
        h, w = z.shape
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            nearest = np.minimum(nearest, padded[dy : dy + h, dx : dx + w])
        lost |= valid & (zv - nearest > edge_jump * zv) & (shadow_draw < edge_dropout)
    noisy[lost] = 0.0
    return noisy.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Procedural layout
# ---------------------------------------------------------------------------------------------


_Sampler = Callable[[], tuple[float, float, float, float]]  # -> (x, y, z of the bottom, yaw)


class _LayoutError(RuntimeError):
    """The random draw boxed itself in; the generator retries with the next draws."""


_Box = tuple[tuple[float, float, float], tuple[float, float, float], float]  # (center, size, yaw)


class _Layout:
    """Places objects one by one with rejection sampling against everything placed so far."""

    def __init__(self, rng: np.random.Generator, room_size: tuple[float, float, float]) -> None:
        self.rng = rng
        self.lx, self.ly, self.h = room_size
        self.objects: list[ObjectSpec] = []
        # Boxes nothing may enter, with the instance id of their object (0: a keep-out zone).
        self.obstacles: list[tuple[_Box, int]] = []

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick_color(self, category: str) -> str:
        names = CATEGORY_COLORS[category]
        return names[int(self.rng.integers(len(names)))]

    def add(
        self,
        category: str,
        center: Sequence[float],
        size: Sequence[float],
        yaw: float = 0.0,
        color_name: str | None = None,
        obstacle: bool = True,
    ) -> ObjectSpec:
        name = color_name or self.pick_color(category)
        o = ObjectSpec(
            len(self.objects) + 1,
            category,
            name,
            COLOR_PALETTE[name],
            tuple(center),
            tuple(size),
            yaw,
            list(CATEGORY_AFFORDANCES.get(category, ())),
        )
        self.objects.append(o)
        if obstacle:
            self.obstacles.append(((o.center, o.size, o.yaw), o.instance_id))
        return o

    def keep_out(self, center: Sequence[float], size: Sequence[float], yaw: float) -> None:
        """Reserve a volume nothing may be placed in (a door's swing, for example)."""
        self.obstacles.append(((tuple(center), tuple(size), yaw), 0))  # type: ignore[arg-type]

    def wall_length(self, wall: int) -> float:
        return self.lx if wall in (0, 2) else self.ly

    def wall_pose(self, wall: int, s: float, depth: float, gap: float) -> tuple[float, float, float]:
        """(x, y, yaw) of an object of footprint depth ``depth`` with its back ``gap`` from ``wall``.

        Walls: 0 = y=0, 1 = x=lx, 2 = y=ly, 3 = x=0; ``s`` runs along the wall; the object's local
        +y (front) faces into the room and its local x runs along the wall.
        """
        off = gap + depth / 2
        if wall == 0:
            return s, off, 0.0
        if wall == 1:
            return self.lx - off, s, math.pi / 2
        if wall == 2:
            return s, self.ly - off, math.pi
        return off, s, -math.pi / 2

    def inside(self, center: Sequence[float], size: Sequence[float], yaw: float) -> bool:
        xy = _footprint_corners(center, size, yaw)
        return bool(
            np.all(xy >= -1e-9)
            and np.all(xy[:, 0] <= self.lx + 1e-9)
            and np.all(xy[:, 1] <= self.ly + 1e-9)
            and center[2] - size[2] / 2 >= -1e-9
            and center[2] + size[2] / 2 <= self.h + 1e-9
        )

    def fits(
        self,
        center: Sequence[float],
        size: Sequence[float],
        yaw: float,
        clearance: float = 0.05,
        within: ObjectSpec | None = None,
    ) -> bool:
        """Inside the room and clear of every obstacle.

        ``within``: an object this one is placed *inside* (a book on a shelf board): it is checked
        against that object's parts instead of its bounding box.
        """
        if not self.inside(center, size, yaw):
            return False
        for (c, s, y), owner in self.obstacles:
            if within is not None and owner == within.instance_id:
                parts = _world_parts(within)
                if any(
                    _boxes_overlap(center, size, yaw, b.center, b.size, b.yaw, clearance=clearance)
                    for b in parts
                ):
                    return False
            elif _boxes_overlap(center, size, yaw, c, s, y, clearance=clearance):
                return False
        return True

    def place(
        self,
        category: str,
        size: Sequence[float],
        sampler: _Sampler,
        tries: int = 80,
        clearance: float = 0.05,
        color_name: str | None = None,
        support: ObjectSpec | None = None,
        within: ObjectSpec | None = None,
    ) -> ObjectSpec:
        """Draw (x, y, z_bottom, yaw) from ``sampler`` until the object fits; add it.

        ``support``: the object it stands on; its whole footprint must then lie on that object.
        """
        for _ in range(tries):
            x, y, zb, yaw = sampler()
            center = (x, y, zb + size[2] / 2)
            if support is not None:
                corners = _footprint_corners(center, size, yaw)
                if not all(support.contains_xy(xy) for xy in corners):
                    continue
            if self.fits(center, size, yaw, clearance, within):
                return self.add(category, center, size, yaw, color_name)
        raise _LayoutError(f"could not place a {category}")

    def maybe_place(
        self, category: str, size: Sequence[float], sampler: _Sampler, **kwargs: Any
    ) -> ObjectSpec | None:
        """:meth:`place` for optional objects: None instead of an error when it does not fit."""
        try:
            return self.place(category, size, sampler, **kwargs)
        except _LayoutError:
            return None

    def against_wall(
        self, size: Sequence[float], gap: float = 0.01, walls: Sequence[int] = (0, 1, 2, 3)
    ) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            wall = int(walls[int(self.rng.integers(len(walls)))])
            length = self.wall_length(wall)
            s = self.uniform(size[0] / 2 + 0.05, max(size[0] / 2 + 0.05, length - size[0] / 2 - 0.05))
            x, y, yaw = self.wall_pose(wall, s, size[1], gap)
            return x, y, 0.0, yaw

        return sample

    def free_standing(self, yaw_choices: Sequence[float] | None = None, yaw_jitter: float = 0.1) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            if yaw_choices is None:
                yaw = self.uniform(-math.pi, math.pi)
            else:
                base = yaw_choices[int(self.rng.integers(len(yaw_choices)))]
                yaw = base + self.uniform(-yaw_jitter, yaw_jitter)
            return self.uniform(0.3, self.lx - 0.3), self.uniform(0.3, self.ly - 0.3), 0.0, yaw

        return sample

    @staticmethod
    def local_to_world(support: ObjectSpec, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(support.yaw), math.sin(support.yaw)
        return support.center[0] + c * u - s * v, support.center[1] + s * u + c * v

    def on_top_of(
        self,
        support: ObjectSpec,
        size: Sequence[float],
        inset: float,
        back: float | None = None,
        yaw_jitter: float = 0.0,
        front_half: bool = False,
    ) -> _Sampler:
        """Positions on ``support``'s top face; ``back`` pins the object near the support's back edge.

        ``front_half`` keeps small things on the half towards the support's front (the room side
        of a desk), where the camera sees them instead of behind a monitor.
        """

        def sample() -> tuple[float, float, float, float]:
            hu = max(0.0, support.size[0] / 2 - size[0] / 2 - inset)
            hv = max(0.0, support.size[1] / 2 - size[1] / 2 - inset)
            u = self.uniform(-hu, hu)
            if back is not None:
                v = -support.size[1] / 2 + size[1] / 2 + back
            else:
                v = self.uniform(0.0 if front_half else -hv, hv)
            yaw = support.yaw + (self.uniform(-yaw_jitter, yaw_jitter) if yaw_jitter else 0.0)
            return (*self.local_to_world(support, u, v), support.top, yaw)

        return sample

    def beside_on_top(
        self, support: ObjectSpec, neighbour: ObjectSpec, size: Sequence[float], inset: float
    ) -> _Sampler:
        """Positions on ``support`` clearly to the left or right (drawn each time) of ``neighbour``."""
        nu, _ = _to_local_xy(support, neighbour.center[:2])

        def sample() -> tuple[float, float, float, float]:
            side = 1 if self.chance(0.5) else -1
            u = nu + side * (neighbour.size[0] / 2 + size[0] / 2 + self.uniform(0.12, 0.35))
            hv = max(0.0, support.size[1] / 2 - size[1] / 2 - inset)
            return (*self.local_to_world(support, u, self.uniform(-hv, hv)), support.top, support.yaw)

        return sample


def _layout_room(rng: np.random.Generator) -> tuple[tuple[float, float, float], list[ObjectSpec]]:
    """One attempt at a furnished room; raises :class:`_LayoutError` when a piece does not fit.

    Required pieces (shell, shelf, sofa, two tables, monitor, 2-3 cups, 2+ books, chairs, two bins,
    lamp, plant) fail the attempt when they do not fit; optional ones (cabinet, keyboard, laptop,
    scissors, printer) are simply left out, which is also what makes "absent" queries about them
    possible in some rooms.
    """
    room = (round(float(rng.uniform(4.7, 5.3)), 2), round(float(rng.uniform(3.7, 4.3)), 2), 2.6)
    lx, ly, h = room
    lay = _Layout(rng, room)
    t = 0.1  # shell thickness; the shell lies outside the interior so nothing inside touches it
    lay.add("floor", (lx / 2, ly / 2, -t / 2), (lx + 2 * t, ly + 2 * t, t), obstacle=False)
    lay.add("ceiling", (lx / 2, ly / 2, h + t / 2), (lx + 2 * t, ly + 2 * t, t), obstacle=False)
    lay.add("wall", (lx / 2, -t / 2, h / 2), (lx + 2 * t, t, h), obstacle=False)
    lay.add("wall", (lx + t / 2, ly / 2, h / 2), (t, ly, h), obstacle=False)
    lay.add("wall", (lx / 2, ly + t / 2, h / 2), (lx + 2 * t, t, h), obstacle=False)
    lay.add("wall", (-t / 2, ly / 2, h / 2), (t, ly, h), obstacle=False)

    # Door (with a swing area nobody may block) and a window on another wall.
    door_wall = int(rng.integers(4))
    door_size = (0.9, 0.04, 2.05)
    s_door = lay.uniform(0.8, lay.wall_length(door_wall) - 0.8)
    x, y, yaw = lay.wall_pose(door_wall, s_door, door_size[1], 0.0)
    door = lay.add("door", (x, y, door_size[2] / 2), door_size, yaw)
    x, y, yaw = lay.wall_pose(door_wall, s_door, 1.0, door_size[1])
    lay.keep_out((x, y, 1.0), (1.1, 1.0, 2.0), yaw)

    window_wall = int((door_wall + rng.integers(1, 4)) % 4)
    win_size = (lay.uniform(1.0, 1.4), 0.03, lay.uniform(1.0, 1.2))
    s_win = lay.uniform(0.4 + win_size[0] / 2, lay.wall_length(window_wall) - 0.4 - win_size[0] / 2)
    x, y, yaw = lay.wall_pose(window_wall, s_win, win_size[1], 0.0)
    lay.add("window", (x, y, 0.9 + win_size[2] / 2), win_size, yaw)

    # Tall pieces go against walls, keeping the middle of the room free for the camera path.
    shelf_size = (lay.uniform(0.8, 1.0), lay.uniform(0.3, 0.4), lay.uniform(1.7, 1.9))
    shelf = lay.place("shelf", shelf_size, lay.against_wall(shelf_size))
    sofa_size = (lay.uniform(1.8, 2.1), lay.uniform(0.85, 0.95), lay.uniform(0.78, 0.88))
    lay.place("sofa", sofa_size, lay.against_wall(sofa_size))
    cabinet = None
    if lay.chance(0.7):
        cab_size = (lay.uniform(0.8, 1.0), lay.uniform(0.44, 0.5), lay.uniform(0.75, 0.9))
        cabinet = lay.maybe_place("cabinet", cab_size, lay.against_wall(cab_size))

    tables = []
    for k in range(2):
        size = (lay.uniform(1.2, 1.6), lay.uniform(0.7, 0.8), lay.uniform(0.72, 0.76))
        if k == 0 and rng.random() < 0.7:  # the desk: under the window, as in most offices

            def under_window(size: tuple[float, float, float] = size) -> tuple[float, float, float, float]:
                x, y, yaw = lay.wall_pose(window_wall, s_win + lay.uniform(-0.2, 0.2), size[1], 0.01)
                return x, y, 0.0, yaw

            sampler = under_window
        elif k == 0 or rng.random() < 0.5:  # the desk stays at a wall, out of the camera's path
            sampler = lay.against_wall(size)
        else:
            sampler = lay.free_standing((0.0, math.pi / 2), 0.1)
        tables.append(lay.place("table", size, sampler, clearance=0.15))
    desk = tables[0]

    # The desk: a monitor (top ~1.25 m, below the camera's path) at its back, a keyboard in front
    # of it, and a cup beside it, so that "the cup on the left of the monitor" can mean something.
    mon_size = (lay.uniform(0.5, 0.6), 0.18, lay.uniform(0.42, 0.48))
    centred = desk.size[0] / 2 - mon_size[0] / 2 - 0.15  # within 15 cm of the middle: room for a cup
    monitor = lay.place(
        "monitor", mon_size, lay.on_top_of(desk, mon_size, inset=centred, back=0.06), clearance=0.0
    )
    if lay.chance(0.8):
        kb_size = (lay.uniform(0.42, 0.46), lay.uniform(0.13, 0.15), 0.03)
        mu, mv = _to_local_xy(desk, monitor.center[:2])

        def before_monitor() -> tuple[float, float, float, float]:
            u = mu + lay.uniform(-0.05, 0.05)
            v = mv + monitor.size[1] / 2 + lay.uniform(0.04, 0.1) + kb_size[1] / 2
            return (*lay.local_to_world(desk, u, v), desk.top, desk.yaw + lay.uniform(-0.05, 0.05))

        lay.maybe_place("keyboard", kb_size, before_monitor, support=desk, clearance=0.02)

    cup_w = lay.uniform(0.075, 0.09)
    cup_size = (cup_w, cup_w, lay.uniform(0.09, 0.11))
    n_cups = 3 if lay.chance(0.4) else 2
    first = lay.maybe_place(
        "cup", cup_size, lay.beside_on_top(desk, monitor, cup_size, 0.08), support=desk, tries=40
    )
    for _ in range(n_cups - (first is not None)):
        tb = tables[1] if lay.chance(0.6) else desk
        lay.place("cup", cup_size, lay.on_top_of(tb, cup_size, inset=0.08), support=tb)

    if lay.chance(0.7):
        lap_size = (lay.uniform(0.32, 0.36), lay.uniform(0.23, 0.26), lay.uniform(0.22, 0.25))
        tb = tables[1] if lay.chance(0.7) else desk
        lay.maybe_place(
            "laptop", lap_size, lay.on_top_of(tb, lap_size, inset=0.05, yaw_jitter=0.3), support=tb
        )
    if lay.chance(0.6):
        sc_size = (lay.uniform(0.08, 0.1), lay.uniform(0.2, 0.24), lay.uniform(0.012, 0.016))
        tb = tables[int(rng.integers(2))]
        lay.maybe_place(
            "scissors",
            sc_size,
            lay.on_top_of(tb, sc_size, inset=0.06, yaw_jitter=math.pi, front_half=True),
            support=tb,
        )
    if lay.chance(0.6):
        pr_size = (lay.uniform(0.42, 0.48), lay.uniform(0.36, 0.42), lay.uniform(0.2, 0.25))
        tb = cabinet if cabinet is not None and lay.chance(0.8) else tables[1]
        lay.maybe_place(
            "printer", pr_size, lay.on_top_of(tb, pr_size, inset=0.02, yaw_jitter=0.1), support=tb
        )

    # Books: upright on the shelf's boards (spine to the front) and lying on tables / the cabinet.
    n_shelf_books = int(rng.integers(1, 4))
    n_flat_books = max(int(rng.integers(0, 3)), 2 - n_shelf_books)
    flat_supports = tables + ([cabinet] if cabinet is not None else [])
    for _ in range(n_flat_books):
        bk = (lay.uniform(0.17, 0.22), lay.uniform(0.24, 0.28), lay.uniform(0.03, 0.05))
        sup = flat_supports[int(rng.integers(len(flat_supports)))]
        lay.place("book", bk, lay.on_top_of(sup, bk, inset=0.05, yaw_jitter=0.4), support=sup)
    boards = shelf_board_tops(shelf.size)[1:-1]  # not the top (above eye height) nor the bottom (hidden)
    for _ in range(n_shelf_books):
        bk = (lay.uniform(0.03, 0.06), lay.uniform(0.15, 0.22), lay.uniform(0.2, 0.28))

        def on_board(bk: tuple[float, float, float] = bk) -> tuple[float, float, float, float]:
            z = shelf.center[2] + boards[int(rng.integers(len(boards)))]
            hu = shelf.size[0] / 2 - 0.02 - bk[0] / 2 - 0.01
            u, v = lay.uniform(-hu, hu), shelf.size[1] / 2 - 0.01 - bk[1] / 2
            return (*lay.local_to_world(shelf, u, v), z, shelf.yaw)

        lay.place("book", bk, on_board, clearance=0.01, within=shelf)

    n_chairs = int(rng.integers(2, 5))
    chair_size = (lay.uniform(0.44, 0.5), lay.uniform(0.48, 0.54), lay.uniform(0.85, 0.95))
    for _ in range(n_chairs):

        def at_table() -> tuple[float, float, float, float]:
            tb = tables[int(rng.integers(2))]
            side = int(rng.integers(4))  # 0: +y, 1: -y, 2: +x, 3: -x of the table
            gap = lay.uniform(0.05, 0.2)
            if side < 2:
                u = lay.uniform(-tb.size[0] / 2 + chair_size[0] / 2, tb.size[0] / 2 - chair_size[0] / 2)
                v = (1 if side == 0 else -1) * (tb.size[1] / 2 + gap + chair_size[1] / 2)
            else:
                u = (1 if side == 2 else -1) * (tb.size[0] / 2 + gap + chair_size[1] / 2)
                v = lay.uniform(-0.1, 0.1)
            facing = (math.pi, 0.0, math.pi / 2, -math.pi / 2)[side]  # chair front towards the table
            yaw = tb.yaw + facing + lay.uniform(-0.15, 0.15)
            return (*lay.local_to_world(tb, u, v), 0.0, yaw)

        try:
            lay.place("chair", chair_size, at_table, tries=60)
        except _LayoutError:
            lay.place("chair", chair_size, lay.free_standing(), tries=60)

    # Two identical bins: one near the door, one clearly farther, so "the bin closest to the door"
    # has a well-defined answer that needs spatial reasoning.
    bin_size = (lay.uniform(0.28, 0.34), 0.0, lay.uniform(0.4, 0.5))
    bin_size = (bin_size[0], bin_size[0], bin_size[2])
    bin_color = lay.pick_color("bin")
    inward = np.array([-math.sin(door.yaw), math.cos(door.yaw)])
    along = np.array([math.cos(door.yaw), math.sin(door.yaw)])

    def near_door() -> tuple[float, float, float, float]:
        p = np.array(door.center[:2]) + inward * lay.uniform(0.35, 1.6) + along * lay.uniform(-1.5, 1.5)
        return float(p[0]), float(p[1]), 0.0, lay.uniform(-math.pi, math.pi)

    bin_a = lay.place("bin", bin_size, near_door, color_name=bin_color)
    d_a = _horizontal_distance(bin_a, door)
    for _ in range(80):
        sampler = lay.against_wall(bin_size, gap=0.05) if rng.random() < 0.5 else lay.free_standing()
        x, y, zb, yaw = sampler()
        center = (x, y, bin_size[2] / 2)
        farther = math.hypot(x - door.center[0], y - door.center[1]) - d_a >= 1.0
        if farther and lay.fits(center, bin_size, yaw):
            lay.add("bin", center, bin_size, yaw, bin_color)
            break
    else:
        raise _LayoutError("could not place the second bin")

    lamp_size = (0.35, 0.35, lay.uniform(1.55, 1.7))

    def near_wall_gap(size: Sequence[float], lo: float, hi: float) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            return lay.against_wall(size, gap=lay.uniform(lo, hi))()

        return sample

    lay.place("lamp", lamp_size, near_wall_gap(lamp_size, 0.05, 0.2))
    plant_w = lay.uniform(0.4, 0.5)
    plant_size = (plant_w, plant_w, lay.uniform(0.8, 1.1))
    lay.place("plant", plant_size, near_wall_gap(plant_size, 0.02, 0.3))
    return room, lay.objects


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def _mentions(text: str, category: str) -> bool:
    """True when ``text`` names ``category`` as a word (singular or plural): "bin" is not in "cabinet"."""
    return re.search(rf"\b{re.escape(category)}(e?s)?\b", text) is not None


def _describe_objects(
    scene: SyntheticScene, counts: Counter[str], categories: Sequence[str], require_front: bool
) -> list[tuple[str, QueryPredicate]]:
    """Unambiguous noun phrases for objects usable as anchors / supports, at most one per object.

    "the monitor" for a category present once; for tables (always two): "the table by the window",
    "the table by the door", "the white table", whichever is unique first. ``require_front``
    keeps only objects with a front (:meth:`SyntheticScene.facing`), for "on the left of".
    """
    phrases: list[tuple[str, QueryPredicate]] = [
        (f"the {c}", QueryPredicate(category=c)) for c in sorted(categories) if counts[c] == 1
    ]
    for landmark in ("window", "door"):
        if counts[landmark] == 1:
            phrases.append(
                (
                    f"the table by the {landmark}",
                    QueryPredicate(category="table", nearest_to=QueryPredicate(category=landmark)),
                )
            )
    for color in sorted({o.color_name for o in scene.objects if o.category == "table"}):
        phrases.append((f"the {color} table", QueryPredicate(category="table", color_name=color)))
    out, used = [], set()
    for text, pred in phrases:
        ids = scene.select(pred)
        if len(ids) != 1 or ids[0] in used:
            continue
        if require_front and scene.facing(scene.object(ids[0])) is None:
            continue
        used.add(ids[0])
        out.append((text, pred))
    return out


def _generate_queries(scene: SyntheticScene) -> list[SceneQuery]:
    """All template queries whose predicate singles out exactly one object, in a fixed order.

    A description with a relation ("closest to", "on the left of", "with ... on it") is only kept
    when the same description without it is ambiguous, so spatial queries really need the
    relation. Kinds come in the order of :data:`QUERY_KINDS`; "absent" queries are a seeded
    handful (3-6) of requests for things this room does not have.
    """
    out: dict[str, SceneQuery] = {}

    def offer(
        text: str, kind: str, pred: QueryPredicate, ambiguous_without: QueryPredicate | None = None
    ) -> bool:
        """Add the query when it is unique (and needs its relation); True when it was added."""
        if text in out:
            return False
        ids = scene.select(pred)
        if len(ids) != 1:
            return False
        if ambiguous_without is not None and len(scene.select(ambiguous_without)) < 2:
            return False
        if kind == "no_name":
            target = scene.object(ids[0])
            if target.category in SURROUNDING_CATEGORIES or _mentions(text, target.category):
                return False
        out[text] = SceneQuery(text, ids[0], kind, pred)
        return True

    counts = Counter(o.category for o in scene.objects)
    anchors = [a for a in _ANCHOR_CATEGORIES if counts[a] == 1]
    landmarks = [a for a in anchors if a in ("door", "window")]  # the landmarks people use
    targets = [o for o in scene.objects if o.category not in SURROUNDING_CATEGORIES]
    multi = sorted(c for c, n in counts.items() if n >= 2 and c not in STRUCTURE_CATEGORIES)
    side_anchors = _describe_objects(scene, counts, sorted(FRONT_CATEGORIES), require_front=True)
    bearers = {s.category for s in scene.objects for o in targets if _rests_on(o, s)} - SURROUNDING_CATEGORIES
    supports = _describe_objects(scene, counts, sorted(bearers), False)
    sides = ("left", "right")

    def side_rel(side: str, anchor: QueryPredicate) -> dict[str, QueryPredicate]:
        return {"left_of": anchor} if side == "left" else {"right_of": anchor}

    # -- explicit: the object's name (and colour where the name alone is ambiguous)
    for o in targets:
        offer(f"the {o.category}", "explicit", QueryPredicate(category=o.category))
        offer(
            f"the {o.color_name} {o.category}",
            "explicit",
            QueryPredicate(category=o.category, color_name=o.color_name),
            ambiguous_without=QueryPredicate(category=o.category),
        )

    # -- affordance: what it is for, with a landmark where the use alone is ambiguous
    affordances = sorted({a for o in scene.objects for a in o.affordances})
    for aff in affordances:
        phrase = AFFORDANCE_PHRASES.get(aff, f"something to {aff}")
        base = QueryPredicate(affordance=aff)
        offer(phrase, "affordance", base)
        for anchor in landmarks:
            ap = QueryPredicate(category=anchor)
            offer(
                f"{phrase}, whichever is closest to the {anchor}",
                "affordance",
                replace(base, nearest_to=ap),
                ambiguous_without=base,
            )
            offer(
                f"{phrase}, whichever is farthest from the {anchor}",
                "affordance",
                replace(base, farthest_from=ap),
                ambiguous_without=base,
            )

    # -- spatial: one of several same-category objects, told apart by a relation
    for cat in multi:
        base = QueryPredicate(category=cat)
        for anchor in anchors:
            if anchor == cat:
                continue
            ap = QueryPredicate(category=anchor)
            offer(f"the {cat} closest to the {anchor}", "spatial", replace(base, nearest_to=ap), base)
            offer(f"the {cat} farthest from the {anchor}", "spatial", replace(base, farthest_from=ap), base)
        members = [o for o in scene.objects if o.category == cat]
        loads = sorted({o.category for o in scene.objects for m in members if _rests_on(o, m)})
        for load in loads:
            offer(
                f"the {cat} with the {load} on it",
                "spatial",
                replace(base, supports=QueryPredicate(category=load)),
                base,
            )
    for cat in multi:
        base = QueryPredicate(category=cat)
        for text, sp in supports:  # "the book on the shelf", "the cup on the table by the window"
            if sp.category != cat:
                offer(f"the {cat} on {text}", "spatial", replace(base, on=sp), base)
    for cat in multi:
        colors = sorted({o.color_name for o in scene.objects if o.category == cat})
        for text, ap in side_anchors:  # "the cup on the left of the monitor"
            if ap.category == cat:
                continue
            for side in sides:
                base = QueryPredicate(category=cat)
                if offer(
                    f"the {cat} on the {side} of {text}", "spatial", replace(base, **side_rel(side, ap)), base
                ):
                    continue
                for color in colors:  # else maybe "the red chair on the right of the sofa"
                    base = QueryPredicate(category=cat, color_name=color)
                    offer(
                        f"the {color} {cat} on the {side} of {text}",
                        "spatial",
                        replace(base, **side_rel(side, ap)),
                        base,
                    )

    # -- no_name: the target's name replaced by "object" / "thing" (VG-w/o-ON)
    colors = sorted({o.color_name for o in targets})
    for color in colors:
        offer(f"the {color} object", "no_name", QueryPredicate(color_name=color))
    for aff in affordances:
        clause = AFFORDANCE_CLAUSES.get(aff, f"that you can {aff}")
        base = QueryPredicate(affordance=aff)
        for color in colors:
            offer(f"the {color} object {clause}", "no_name", replace(base, color_name=color), base)
        for anchor in landmarks:
            ap = QueryPredicate(category=anchor)
            offer(
                f"the object closest to the {anchor} {clause}", "no_name", replace(base, nearest_to=ap), base
            )
            offer(
                f"the object farthest from the {anchor} {clause}",
                "no_name",
                replace(base, farthest_from=ap),
                base,
            )
    for text, ap in side_anchors:
        for side in sides:
            if offer(f"the object on the {side} of {text}", "no_name", QueryPredicate(**side_rel(side, ap))):
                continue
            for color in colors:
                base = QueryPredicate(color_name=color)
                offer(
                    f"the {color} object on the {side} of {text}",
                    "no_name",
                    replace(base, **side_rel(side, ap)),
                    base,
                )
    for text, sp in supports:
        if offer(f"the thing on {text}", "no_name", QueryPredicate(on=sp)):
            continue
        for color in colors:
            base = QueryPredicate(color_name=color)
            offer(f"the {color} thing on {text}", "no_name", replace(base, on=sp), base)

    for q in _absent_queries(scene, counts):
        if q.text not in out:
            out[q.text] = q
    return list(out.values())


#: Catalogue categories the layout may leave out of a room, and so may be asked for as absent.
_OPTIONAL_CATEGORIES = ("scissors", "printer", "laptop", "cabinet")
#: Uses that other objects might plausibly serve even without the category (a monitor and a
#: keyboard make a computer to browse the web on): never asked for as "absent".
_NOT_ABSENT_USES = frozenset({"browse the web on"})


def _absent_queries(scene: SyntheticScene, counts: Counter[str]) -> list[SceneQuery]:
    """3-6 requests for things this room does not have (seeded by the scene's seed).

    First the honest hard cases: a catalogue object this room happens to lack ("something I can
    use to cut this paper" without scissors), then a colour of a present category that no
    instance has ("the green sofa" next to a blue one), then plausible household objects that no
    room has (:data:`ABSENT_OBJECTS`). Every one is verified to select nothing.
    """
    rng = np.random.default_rng([0xAB5E, int(scene.seed or 0)])
    missing: list[tuple[str, QueryPredicate]] = []
    for cat in _OPTIONAL_CATEGORIES:
        if counts[cat] == 0:
            missing.append((f"the {cat}", QueryPredicate(category=cat)))
            missing += [
                (AFFORDANCE_PHRASES[a], QueryPredicate(affordance=a))
                for a in CATEGORY_AFFORDANCES[cat]
                if a not in _NOT_ABSENT_USES
            ]
    recoloured = [
        (f"the {color} {cat}", QueryPredicate(category=cat, color_name=color))
        for cat in sorted(c for c, n in counts.items() if n == 1 and c not in STRUCTURE_CATEGORIES)
        for color in CATEGORY_COLORS.get(cat, ())
        if all(o.color_name != color for o in scene.objects if o.category == cat)
    ]
    household: list[tuple[str, QueryPredicate]] = []
    for name, use in ABSENT_OBJECTS.items():
        household.append((f"the {name}", QueryPredicate(category=name)))
        if use is not None:
            household.append((AFFORDANCE_PHRASES[use], QueryPredicate(affordance=use)))

    def shuffled(items: list[tuple[str, QueryPredicate]]) -> list[tuple[str, QueryPredicate]]:
        return [items[i] for i in rng.permutation(len(items))]

    n = int(rng.integers(3, 7))
    pool = shuffled(missing)[:2] + shuffled(recoloured)[:1] + shuffled(household)
    out: list[SceneQuery] = []
    for text, pred in pool:
        if len(out) == n:
            break
        if scene.select(pred) == [] and all(q.text != text for q in out):
            out.append(SceneQuery(text, 0, "absent", pred))
    return out


# ---------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------


@dataclass
class _RenderedView:
    color: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    incidence_cos: np.ndarray


@dataclass
class SyntheticScene:
    """A simulated room: objects (with the shell), queries with verified answers, and a renderer.

    Build one with :meth:`generate` (reproducible from a seed) or directly from specs for
    hand-made test scenes. Geometry is built lazily on first render / labelling and cached, so
    treat ``objects`` as frozen from then on (or build a new scene).
    """

    room_size: tuple[float, float, float]
    objects: list[ObjectSpec]
    queries: list[SceneQuery] = field(default_factory=list)
    seed: int | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.room_size = _vec3(self.room_size, "room_size", positive=True)
        self.objects = list(self.objects)
        self.queries = list(self.queries)
        ids = [o.instance_id for o in self.objects]
        if len(set(ids)) != len(ids):
            dup = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"duplicate instance ids {dup}")
        if max(ids, default=0) > np.iinfo(np.uint16).max:
            raise ValueError("instance ids must fit in 16 bits (they are stored in uint16 PNGs)")

    def __getstate__(self) -> dict[str, Any]:
        # The Open3D ray caster cannot be pickled (multiprocessing, deepcopy); it is rebuilt on demand.
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, seed: int) -> SyntheticScene:
        """A furnished ~5 x 4 x 2.6 m room; the same ``seed`` always gives the same scene."""
        rng = np.random.default_rng(seed)
        for _ in range(200):
            try:
                room, objects = _layout_room(rng)
            except _LayoutError:
                continue
            scene = cls(room, objects, seed=int(seed))
            scene.queries = _generate_queries(scene)
            if any(
                q.predicate is not None
                and q.predicate.category == "bin"
                and q.predicate.nearest_to is not None
                and q.predicate.nearest_to.category == "door"
                for q in scene.queries
            ):
                return scene
        raise RuntimeError(f"could not lay out a room for seed {seed}")  # pragma: no cover

    # -- lookups ----------------------------------------------------------------------------------

    def object(self, instance_id: int) -> ObjectSpec:
        """The object with ``instance_id`` (KeyError if absent)."""
        for o in self.objects:
            if o.instance_id == instance_id:
                return o
        raise KeyError(f"no object with instance id {instance_id}")

    @property
    def furnished_objects(self) -> list[ObjectSpec]:
        """Objects other than the room shell (floor, ceiling, walls, door, window)."""
        return [o for o in self.objects if not o.is_structure]

    def boxes(self) -> list[SceneBox]:
        """Every part of every object as a world-frame box."""
        return [b for o in self.objects for b in _world_parts(o)]

    def interpenetrations(self, tol: float = 1e-4) -> list[tuple[int, int]]:
        """Pairs of different objects whose parts share volume deeper than ``tol`` metres."""
        boxes = self.boxes()
        hits: set[tuple[int, int]] = set()
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                if a.instance_id == b.instance_id:
                    continue
                key = (min(a.instance_id, b.instance_id), max(a.instance_id, b.instance_id))
                if key not in hits and _boxes_overlap(a.center, a.size, a.yaw, b.center, b.size, b.yaw, tol):
                    hits.add(key)
        return sorted(hits)

    # -- query semantics --------------------------------------------------------------------------

    def facing(self, o: ObjectSpec) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``(left, front)`` unit horizontal axes of ``o`` for a person standing in front of it.

        ``front`` is the object's local +y (where the catalogue puts every front: a monitor's
        screen, a sofa's seat, a shelf's open side); facing the object, that person has its local
        +x on their *left*. Only categories in :data:`FRONT_CATEGORIES` have a front, plus tables
        that stand square with their back edge (local -y) within 0.15 m of a wall (a desk: the
        front is the side facing into the room); anything else (a free-standing table, a cup, a
        bin) returns None, because "its left" would not mean anything.
        """
        c, s = math.cos(o.yaw), math.sin(o.yaw)
        left, front = (c, s), (-s, c)
        if o.category in FRONT_CATEGORIES:
            return left, front
        if o.category != "table":
            return None
        skew = o.yaw % (math.pi / 2)
        if min(skew, math.pi / 2 - skew) > _SQUARE_TOL:
            return None
        bx = o.center[0] - front[0] * o.size[1] / 2
        by = o.center[1] - front[1] * o.size[1] / 2
        lx, ly, _ = self.room_size
        if abs(front[0]) > abs(front[1]):  # the wall behind is x = 0 (front +x) or x = lx (front -x)
            gap = bx if front[0] > 0 else lx - bx
        else:
            gap = by if front[1] > 0 else ly - by
        return (left, front) if gap <= _WALL_BACK_GAP else None

    def side_of(self, candidate: ObjectSpec, anchor: ObjectSpec, side: str) -> float | None:
        """How clearly ``candidate`` is on the ``side`` ("left" / "right") of ``anchor`` (metres).

        The exact meaning of "on the left of": take the anchor's frame from :meth:`facing` (None
        is returned when the anchor has no front), with u the candidate centre's offset along the
        viewer's left and v its offset along the anchor's front, and hx, hy the anchor's half
        width and half depth. With s = u (left) or -u (right), the candidate is on that side when

            hx <= s <= hx + SIDE_RANGE   and   |v| <= hy + SIDE_DEPTH,

        i.e. its centre is beyond the anchor's side edge but not farther than :data:`SIDE_RANGE`
        from it, and not far in front of or behind the anchor. The return value is the signed
        distance to the border of that region along the tightest constraint (``min`` of the three
        slacks): positive inside, negative outside. :meth:`select` requires every candidate to be
        at least :data:`SIDE_MARGIN` from the border, so "on the left" is never a coin toss.
        Heights are ignored (a book on a shelf board can be on the left of the sofa), except that
        an object under or around the anchor (its footprint contains the anchor's centre, like
        the table a laptop stands on) is never beside it: -inf.
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        axes = self.facing(anchor)
        if axes is None:
            return None
        (lx_, ly_), (fx, fy) = axes
        dx, dy = candidate.center[0] - anchor.center[0], candidate.center[1] - anchor.center[1]
        u, v = dx * lx_ + dy * ly_, dx * fx + dy * fy
        if candidate.contains_xy(anchor.center[:2]):
            return -math.inf
        s = u if side == "left" else -u
        hx, hy = anchor.size[0] / 2, anchor.size[1] / 2
        return min(s - hx, hx + SIDE_RANGE - s, hy + SIDE_DEPTH - abs(v))

    def select(self, predicate: QueryPredicate) -> list[int]:
        """Instance ids (sorted) of the objects that satisfy ``predicate`` in this scene.

        Evaluation order and the exact relations are documented on :class:`QueryPredicate`,
        :meth:`side_of` and :data:`SPATIAL_MARGIN`; an ambiguous relation (an anchor that is not
        unique, a candidate on the border of "on the left", a near tie for "closest") gives [].
        """
        p = predicate
        cands = [
            o
            for o in self.objects
            if (p.category is None or o.category == p.category)
            and (p.color_name is None or o.color_name == p.color_name)
            and (p.affordance is None or p.affordance in o.affordances)
        ]
        if p.on is not None:
            supports = [self.object(i) for i in self.select(p.on)]
            cands = [c for c in cands if any(_rests_on(c, s) for s in supports)]
        if p.supports is not None:
            loads = [self.object(i) for i in self.select(p.supports)]
            cands = [c for c in cands if any(_rests_on(ld, c) for ld in loads)]
        for anchor_pred, side in ((p.left_of, "left"), (p.right_of, "right")):
            if anchor_pred is None:
                continue
            anchor_ids = self.select(anchor_pred)
            if len(anchor_ids) != 1:
                return []
            anchor = self.object(anchor_ids[0])
            kept = []
            for c in cands:
                if c.instance_id == anchor.instance_id or c.category in SURROUNDING_CATEGORIES:
                    continue  # walls, floor and ceiling surround everything: never "on its left"
                slack = self.side_of(c, anchor, side)
                if slack is None or abs(slack) < SIDE_MARGIN:
                    return []  # no front to have a left, or a candidate a person could not call
                if slack > 0:
                    kept.append(c)
            cands = kept
        for anchor_pred, sign in ((p.nearest_to, 1.0), (p.farthest_from, -1.0)):
            if anchor_pred is None:
                continue
            anchor_ids = self.select(anchor_pred)
            if len(anchor_ids) != 1:
                return []  # "the door" must itself be unambiguous
            anchor = self.object(anchor_ids[0])
            cands = [c for c in cands if c.instance_id != anchor.instance_id]
            if len(cands) >= 2:
                ranked = sorted(cands, key=lambda c: sign * _horizontal_distance(c, anchor))
                first, second = (_horizontal_distance(c, anchor) for c in ranked[:2])
                gap = sign * (second - first)
                if gap < SPATIAL_MARGIN:
                    return []
                cands = ranked[:1]
        return sorted(c.instance_id for c in cands)

    def query_is_unique(self, query: SceneQuery) -> bool:
        """True when the query's predicate picks out exactly its target (and the target exists).

        For an "absent" query (target 0) that means: the predicate matches nothing in this room.
        """
        if query.predicate is None:
            return False
        if query.is_absent:
            return self.select(query.predicate) == []
        if all(o.instance_id != query.target_instance_id for o in self.objects):
            return False
        return self.select(query.predicate) == [query.target_instance_id]

    # -- geometry ---------------------------------------------------------------------------------

    def _tables(self) -> dict[str, np.ndarray]:
        """Mesh (``verts``, ``tris``: 12 triangles per box) and per-triangle tables, built once.

        Tables: ``instance``, ``lit_albedo``, ``normal`` and the texture tangents ``t1``, ``t2``.
        Faces are planar, so lighting and the texture's tangent frame are per-triangle constants:
        precomputing them keeps per-pixel work to a few gathers. They are computed per *face* (from
        its first triangle) and repeated, so both triangles of a face carry identical rows and a
        caster may report either one (the torch caster reports the first).
        """
        if "tables" not in self._cache:
            boxes = self.boxes()
            nb = len(boxes)
            verts = np.empty((nb * 8, 3))
            for k, b in enumerate(boxes):
                verts[8 * k : 8 * k + 8] = (_UNIT_CORNERS * b.size) @ _rot_z(b.yaw).T + b.center
            tris = (_UNIT_TRIANGLES[None, :, :] + 8 * np.arange(nb)[:, None, None]).reshape(-1, 3)
            first = tris[0::2]  # triangles 2f and 2f + 1 form face f (see _unit_box)
            v0, v1, v2 = verts[first[:, 0]], verts[first[:, 1]], verts[first[:, 2]]
            normal = np.cross(v1 - v0, v2 - v0)
            normal /= np.linalg.norm(normal, axis=1, keepdims=True)
            helper = np.zeros_like(normal)
            vertical = np.abs(normal[:, 2]) > 0.9
            helper[vertical, 0] = 1.0
            helper[~vertical, 2] = 1.0
            t1 = np.cross(helper, normal)
            t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
            t2 = np.cross(normal, t1)
            albedo = np.repeat(np.array([b.color for b in boxes], dtype=np.float64).reshape(-1, 3), 6, 0)
            lambert = _AMBIENT + _DIFFUSE * np.clip(normal @ _LIGHT_DIR, 0.0, None)
            per_face = {
                "lit_albedo": (albedo * lambert[:, None]).astype(np.float32),
                "normal": normal.astype(np.float32),
                "t1": t1.astype(np.float32),
                "t2": t2.astype(np.float32),
            }
            tables = {k: np.repeat(v, 2, axis=0) for k, v in per_face.items()}
            tables["instance"] = np.repeat([b.instance_id for b in boxes], 12).astype(np.int32)
            tables.update(verts=verts, tris=tris.astype(np.int32))
            self._cache["tables"] = tables
        return self._cache["tables"]

    def _geometry(self) -> tuple[o3d.t.geometry.RaycastingScene, dict[str, np.ndarray]]:
        """Open3D ray caster of the mesh plus the per-triangle tables (see :meth:`_tables`), built once."""
        tables = self._tables()
        if "raycaster" not in self._cache:
            o3d = _open3d()
            rc = o3d.t.geometry.RaycastingScene()
            rc.add_triangles(
                o3d.core.Tensor(tables["verts"].astype(np.float32)),
                o3d.core.Tensor(tables["tris"].astype(np.uint32)),
            )
            self._cache["raycaster"] = rc
        return self._cache["raycaster"], tables

    @property
    def raycasting_scene(self) -> o3d.t.geometry.RaycastingScene:
        """The Open3D ray caster of this scene (for custom ray queries in tests and tools)."""
        return self._geometry()[0]

    @property
    def raycast_backend(self) -> str:
        """The renderer's ray caster: "open3d" or "torch:<device>" (chosen on first use, see ``_caster``)."""
        return self._caster()[0]

    def _caster(self) -> tuple[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]:
        """``(name, cast)`` of the renderer, chosen once per scene from :data:`RAYCAST_ENV`.

        ``cast(rays)`` takes (N, 6) float32 rays (origin, direction; one common origin) and returns
        ``(t_hit, triangle ids)`` with inf / any id on a miss, as Open3D's ``cast_rays`` does.
        """
        if "caster" not in self._cache:
            backend, device = _raycast_backend()
            if backend == "open3d":
                rc = self._geometry()[0]
                core = _open3d().core

                def cast(rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    ans = rc.cast_rays(core.Tensor.from_numpy(rays))
                    return ans["t_hit"].numpy(), ans["primitive_ids"].numpy()

                self._cache["caster"] = ("open3d", cast)
            else:
                from reasoning_seg.sim.raycast import BoxRayCaster

                boxes = BoxRayCaster.from_boxes(self.boxes(), device=device)

                def cast(rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    return boxes.cast(rays[0, :3], rays[:, 3:])

                self._cache["caster"] = (f"torch:{boxes.device}", cast)
        return self._cache["caster"]

    def _render_view(
        self,
        intrinsics: CameraIntrinsics,
        T_world_cam: np.ndarray,
        with_incidence: bool = False,
    ) -> _RenderedView:
        pose = np.asarray(T_world_cam, dtype=np.float64)
        if not is_rigid_transform(pose):
            raise ValueError("T_world_cam must be a finite rigid 4x4 transform")
        tab = self._tables()
        cast = self._caster()[1]
        cam_rays = _camera_rays(intrinsics)
        n = cam_rays.shape[0]
        rays = np.empty((n, 6), dtype=np.float32)
        rays[:, :3] = pose[:3, 3]
        d = rays[:, 3:]
        np.matmul(cam_rays, pose[:3, :3].T.astype(np.float32), out=d)  # z = 1 rays: hit parameter = z-depth
        t_hit, prim = cast(rays)
        hit = np.isfinite(t_hit)
        everything_hit = bool(hit.all())  # the usual case inside a closed room: skip the masking
        idx = prim.astype(np.intp) if everything_hit else prim[hit].astype(np.intp)
        t = t_hit if everything_hit else t_hit[hit]
        if not everything_hit:
            d = d[hit]

        origin = pose[:3, 3].astype(np.float32)
        t1, t2 = np.take(tab["t1"], idx, axis=0), np.take(tab["t2"], idx, axis=0)
        u = np.take(tab["t1"] @ origin, idx) + t * np.einsum("ij,ij->i", d, t1)
        v = np.take(tab["t2"] @ origin, idx) + t * np.einsum("ij,ij->i", d, t2)
        inst = np.take(tab["instance"], idx)
        rgb = np.take(tab["lit_albedo"], idx, axis=0) * _surface_texture(u, v, inst)[:, None]
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

        shape = (intrinsics.height, intrinsics.width)
        if everything_hit:
            color, depth, instance = rgb, t.astype(np.float32), inst
        else:
            color = np.zeros((n, 3), dtype=np.uint8)
            color[hit] = rgb
            depth = np.zeros(n, dtype=np.float32)
            depth[hit] = t
            instance = np.zeros(n, dtype=np.int32)
            instance[hit] = inst
        incidence = np.zeros(n, dtype=np.float32)
        if with_incidence:
            normal = np.take(tab["normal"], idx, axis=0)
            incidence[hit] = np.abs(np.einsum("ij,ij->i", normal, d)) / np.linalg.norm(d, axis=1)
        return _RenderedView(
            color.reshape(*shape, 3), depth.reshape(shape), instance.reshape(shape), incidence.reshape(shape)
        )

    def render(
        self,
        intrinsics: CameraIntrinsics,
        T_world_cam: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render ``(color uint8 HxWx3, depth float32 HxW z-depth metres, instance int32 HxW)``.

        Pixels whose ray hits nothing get colour 0, depth 0 and instance 0. Depth is exact
        (no noise); see :func:`apply_depth_noise` and :meth:`record_sequence` for sensor effects.
        """
        v = self._render_view(intrinsics, T_world_cam)
        return v.color, v.depth, v.instance

    def label_points(self, points: np.ndarray, max_distance: float = 0.05) -> np.ndarray:
        """Ground-truth instance id of the surface nearest each (N, 3) world point, 0 beyond ``max_distance``.

        This is how 3D masks are scored: a predicted map point counts for the object whose surface
        it lies on. Non-finite points get 0.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.zeros(p.shape[0], dtype=np.int32)
        finite = np.all(np.isfinite(p), axis=1)
        if not finite.any():
            return out
        q = p[finite]
        if self._caster()[0] == "open3d":
            rc, tab = self._geometry()
            ans = rc.compute_closest_points(_open3d().core.Tensor(q.astype(np.float32)))
            closest = ans["points"].numpy().astype(np.float64)
            prim = ans["primitive_ids"].numpy().astype(np.int64)
            dist = np.linalg.norm(q - closest, axis=1)
            labels = tab["instance"][prim]
        else:  # without Open3D (the torch renderer): the same answer from the boxes themselves
            from reasoning_seg.sim.raycast import nearest_box_surface

            boxes = self.boxes()
            if not boxes:
                return out
            dist, k = nearest_box_surface(
                q, [b.center for b in boxes], [b.size for b in boxes], [b.yaw for b in boxes]
            )
            labels = np.array([b.instance_id for b in boxes], dtype=np.int32)[k]
        labels[dist > max_distance] = 0
        out[finite] = labels
        return out

    # -- camera path ------------------------------------------------------------------------------

    def trajectory(self, n_frames: int, seed: int = 0) -> list[np.ndarray]:
        """``T_world_cam`` poses of a hand-held scan: one smooth loop around the room.

        The camera walks an ellipse 1.1 m inside the walls at 1.35-1.55 m height, looking across
        the room and slightly down (so each wall-side object is seen from the far side of the
        loop), with slow sway, a little roll and small per-frame hand jitter.
        """
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        rng = np.random.default_rng(seed)
        lx, ly, _ = self.room_size
        c = np.array([lx / 2, ly / 2])
        ax, ay = max(lx / 2 - 1.1, 0.25), max(ly / 2 - 1.1, 0.25)
        start = rng.uniform(0, 2 * math.pi)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        ph = rng.uniform(0, 2 * math.pi, size=6)
        poses = []
        for k in range(n_frames):
            s = start + direction * 2 * math.pi * k / n_frames
            eye_xy = c + [ax * math.cos(s), ay * math.sin(s)]
            eye_xy = eye_xy + 0.08 * np.array([math.sin(2 * s + ph[0]), math.sin(3 * s + ph[1])])
            eye = np.array([*eye_xy, 1.45 + 0.1 * math.sin(2 * s + ph[2])]) + rng.normal(0, 0.003, 3)
            toward = c - eye_xy
            heading = math.atan2(toward[1], toward[0]) + 0.35 * math.sin(3 * s + ph[3])
            target = np.array(
                [
                    eye[0] + 2.2 * math.cos(heading),
                    eye[1] + 2.2 * math.sin(heading),
                    0.7 + 0.15 * math.sin(2 * s + ph[4]),
                ]
            )
            pose = look_at(eye, target)
            roll = 0.03 * math.sin(4 * s + ph[5])
            pose[:3, :3] = pose[:3, :3] @ _rot_z(roll) @ _rodrigues(rng.normal(0, 0.003, 3))
            poses.append(pose)
        return poses

    # -- persistence ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of ``from_dict``)."""
        return {
            "format": SCENE_FORMAT,
            "version": SCENE_VERSION,
            "seed": self.seed,
            "room_size": list(self.room_size),
            "objects": [o.to_dict() for o in self.objects],
            "queries": [q.to_dict() for q in self.queries],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticScene:
        """Rebuild from ``to_dict`` output; ValueError on malformed input."""
        if not isinstance(d, dict) or d.get("format") != SCENE_FORMAT:
            raise ValueError(f"not a {SCENE_FORMAT} document")
        if d.get("version") != SCENE_VERSION:
            raise ValueError(f"unsupported scene version {d.get('version')!r} (expected {SCENE_VERSION})")
        try:
            return cls(
                room_size=d["room_size"],
                objects=[ObjectSpec.from_dict(o) for o in d["objects"]],
                queries=[SceneQuery.from_dict(q) for q in d["queries"]],
                seed=d.get("seed"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed scene document: {exc!r}") from exc

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/scene.json`` (objects, queries, seed, version); returns its path."""
        path = Path(directory) / SCENE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticScene:
        """Read a scene saved by :meth:`save` (``directory`` may also be the json file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / SCENE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no scene file at {path}")
        try:
            doc = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(doc)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def record_sequence(
        self,
        directory: str | Path,
        intrinsics: CameraIntrinsics,
        poses: Sequence[np.ndarray],
        depth_noise: bool = False,
        noise_seed: int = 0,
        fps: float = 30.0,
        pose_drift: float = 0.0,
        rotation_drift: float | None = None,
    ) -> Path:
        """Render ``poses`` into a sun3d-style folder (read it with ``sequence_io.FolderSequence``).

        Layout: ``directory/camera-intrinsics.txt``, ``directory/scene.json`` and
        ``directory/seq-01/frame-XXXXXX.{color,depth,instance}.png`` + ``.pose.txt`` +
        ``.gt_pose.txt``. Images are always rendered at the true poses; ``.gt_pose.txt`` holds
        the true ``T_world_cam`` and ``.pose.txt`` the pose a SLAM front-end would report: the
        true one when ``pose_drift`` is 0 (then both files are identical), otherwise the true one
        corrupted by the random-walk drift of :func:`simulate_pose_drift` (``pose_drift`` metres
        and ``rotation_drift`` radians per sqrt(frame); seeded by ``noise_seed``). The instance
        image is the ground truth of the noise-free render (also where noisy depth was dropped).
        Refuses to write into a sequence folder that already holds frames, so stale frames from an
        earlier, longer recording cannot be read back as part of this one.
        """
        from reasoning_seg.sequence_io import write_frame, write_intrinsics_txt

        root = Path(directory)
        seq = root / "seq-01"
        if seq.is_dir() and any(seq.glob("frame-*")):
            raise FileExistsError(f"{seq} already contains frames")
        true_poses = [np.asarray(pose, dtype=np.float64) for pose in poses]
        reported = simulate_pose_drift(true_poses, pose_drift, rotation_drift, seed=noise_seed)
        seq.mkdir(parents=True, exist_ok=True)
        write_intrinsics_txt(root / "camera-intrinsics.txt", intrinsics)
        self.save(root)
        rng = np.random.default_rng(noise_seed)
        for i, (pose, written) in enumerate(zip(true_poses, reported, strict=True)):
            view = self._render_view(intrinsics, pose, with_incidence=depth_noise)
            depth = apply_depth_noise(view.depth, rng, view.incidence_cos) if depth_noise else view.depth
            frame = RGBDFrame(view.color, depth, intrinsics, written, stamp=i / fps, frame_id=i)
            stem = write_frame(seq, frame, instance=view.instance)
            np.savetxt(str(stem) + ".gt_pose.txt", pose, fmt="%.17g")
        return root


def simulate_pose_drift(
    poses: Sequence[np.ndarray],
    translation_drift: float,
    rotation_drift: float | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """``poses`` as an odometry / SLAM front-end without loop closure would report them (a SIMULATION).

    The error is a random walk in SE(3) anchored at the first frame (the map origin, reported
    exactly): at every later frame an independent step is drawn, with each of the three
    translation components ~ N(0, ``translation_drift``^2) metres and each component of a rotation
    vector ~ N(0, ``rotation_drift``^2) radians; the steps accumulate into a drift transform D_k
    that acts about the first camera's position, and the reported pose is ``D_k @ T_world_cam``.
    Units are therefore metres and radians per sqrt(frame): after k frames the translational
    error per axis has standard deviation ``translation_drift * sqrt(k)`` (plus what the
    rotational error does to a camera away from the first one). ``rotation_drift`` None means
    0.5 rad per metre of ``translation_drift`` (1 cm / sqrt(frame) comes with ~0.29 deg /
    sqrt(frame)). Zero drift returns exact copies. The stream is seeded by ``seed`` only (it is
    independent of the depth-noise stream with the same seed).
    """
    if not (math.isfinite(translation_drift) and translation_drift >= 0):
        raise ValueError(f"translation drift must be finite and >= 0, got {translation_drift}")
    rot_sigma = 0.5 * translation_drift if rotation_drift is None else float(rotation_drift)
    if not (math.isfinite(rot_sigma) and rot_sigma >= 0):
        raise ValueError(f"rotation drift must be finite and >= 0, got {rotation_drift}")
    out = [np.array(p, dtype=np.float64) for p in poses]
    if not out or (translation_drift == 0 and rot_sigma == 0):
        return out
    rng = np.random.default_rng([0xD21F7, int(seed)])
    origin = out[0][:3, 3].copy()
    rot, trans = np.eye(3), np.zeros(3)
    for k in range(1, len(out)):
        step = rng.standard_normal(6)
        rot = _rodrigues(rot_sigma * step[3:]) @ rot
        trans = trans + translation_drift * step[:3]
        drift = np.eye(4)
        drift[:3, :3] = rot
        drift[:3, 3] = origin + trans - rot @ origin
        out[k] = drift @ out[k]
    return out
