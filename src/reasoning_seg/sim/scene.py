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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform, look_at
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.sim.appearance import (
    _AMBIENT,
    _DIFFUSE,
    _LIGHT_DIR,
    _surface_texture,
    apply_depth_noise,
)
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
)
from reasoning_seg.sim.layout import (
    _layout_room,
    _LayoutError,
)
from reasoning_seg.sim.objects import (
    _SQUARE_TOL,
    _UNIT_CORNERS,
    _UNIT_TRIANGLES,
    _WALL_BACK_GAP,
    QUERY_KINDS,
    SCENE_FILE,
    SCENE_FORMAT,
    SCENE_VERSION,
    SIDE_DEPTH,
    SIDE_MARGIN,
    SIDE_RANGE,
    SPATIAL_MARGIN,
    ObjectSpec,
    QueryPredicate,
    SceneBox,
    SceneQuery,
    _boxes_overlap,
    _camera_rays,
    _horizontal_distance,
    _rests_on,
    _rodrigues,
    _rot_z,
    _vec3,
    _world_parts,
)
from reasoning_seg.sim.queries import (
    _generate_queries,
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
        from reasoning_seg.io.sequence_io import write_frame, write_intrinsics_txt

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
