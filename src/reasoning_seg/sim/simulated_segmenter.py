"""SIMULATION of a LISA-style 2D reasoning-segmentation model, with LISA's failure modes.

No LISA/SAM/LLaVA weights can be downloaded where this package is developed and tested, so the
accuracy of everything downstream of the 2D model is measured against this stand-in. It knows the
synthetic scene (geometry + which object each scripted query refers to), renders the ground-truth
instance image at the view's pose, decides what a LISA-like model would answer, and returns what
LISA returns: soft SAM-like mask logits at image resolution, SAM's IoU-prediction confidence, a
``[SEG]`` embedding and answer text. It is never a model of the real world: on a real camera stream
use a real backend.

What can go wrong, per view (MLLM-For3D §1 pilot study and §3.1; rates in :class:`SimulatedLisaProfile`):

- *hallucination*: the target is not visible in the view (or does not exist, or the query is not
  understood), yet the model confidently segments a similar visible object (same category >
  shares an affordance > same colour > any furnished object);
- *confusion*: target and a distractor (same category, or satisfying part of the description,
  e.g. the landmark of a spatial query) are both visible and the model segments the distractor;
  more likely for spatial / name-free queries than for explicit ones;
- *missed detection*: empty, low-confidence mask, more likely for small / truncated objects;
- *boundary errors*: erosion/dilation by a few pixels and occasional bleeding onto a neighbour.

Errors are partly *consistent across views*: a per-query latent ``u_q`` (one draw per query) makes
the model settle on a wrong referent, which it then segments in every view where it is visible,
exactly the kind of error naive multi-view averaging cannot vote away. The rest is per view.

The ``[SEG]`` embedding of a segmented object is a fixed unit mix of a category direction, a
colour direction (both shared by all scenes) and, optionally, a per-scene instance direction
(:func:`object_embedding`, :data:`SEG_EMBEDDING_MIX`: weight 0 by default), plus per-view noise:
look-alikes get similar tokens, as an LLM's hidden state would give them, and a 3D network trained
on some rooms can recognise the category and colour in rooms it never saw.

Optionally (``image_features=True``) it also returns SIMULATED SAM image-encoder features, the
targets of MLLM-For3D's spatial-consistency loss (§3.2, Eq. 2): a (C, G, G) grid over SAM's padded
square input (C = 256, G = 64 like SAM ViT's 1024 px / 16 px patches), where each cell holds the
code of the object at its centre pixel (a mix of category, colour and instance directions, so that
look-alikes have similar features as SAM's appearance features do) plus smooth noise. They depend
on the image only (the view's pose), never on the query, as SAM's image encoder does. They are a
stand-in for training and testing the 3D network's data path, not a model of real SAM features.

Everything is deterministic: a view's randomness is seeded from (seed, scene seed, normalised
query, intrinsics, pose rounded to 1e-6), so the answer for a view does not depend on batch composition or
order. Rendering dominates the cost, so instance renders are kept in a bounded LRU cache keyed by
(intrinsics, pose bytes).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import SegmenterConfig
from reasoning_seg.segmenter import ViewInput, ViewSegmentation
from reasoning_seg.sim.lisa_profiles import (
    PROFILES,
    SimulatedLisaProfile,
)
from reasoning_seg.sim.scene import (
    AFFORDANCE_PHRASES,
    CATEGORY_AFFORDANCES,
    COLOR_PALETTE,
    ObjectSpec,
    QueryPredicate,
    SyntheticScene,
)

__all__ = [
    "PROFILES",
    "SEG_EMBEDDING_MIX",
    "seg_embedding_mix",
    "SimulatedLisaProfile",
    "SimulatedSegmenter",
    "SimulatedViewOutcome",
    "feature_grid_cells",
    "instance_embedding",
    "no_object_embedding",
    "object_embedding",
]

#: Categories that are never segmented as a (wrong) answer: LISA answers with objects, not the room shell.
_SHELL = frozenset({"floor", "ceiling", "wall"})

#: Width (px) at which the pixel-valued profile fields are specified; they scale with image width.
_REF_WIDTH = 640.0

#: |logit| ranges of a SAM mask: inside the mask / far outside it (SAM's raw logits reach ~10-20).
_LOGIT_IN = (8.0, 14.0)
_LOGIT_OUT = (10.0, 20.0)
#: Smallest |logit| on either side of the mask boundary, so the mask's sign is never ambiguous.
_LOGIT_EPS = 0.25

_ANSWER_FOUND = "Sure, it is [SEG]."
_ANSWER_NONE = "I cannot see it in this image."
_ANSWER_MISSED = "Sure, [SEG]."  # LISA still answers; only SAM's mask comes out empty


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".?!")


def _unit_vector(key: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def instance_embedding(scene_key: str, instance_id: int, dim: int) -> np.ndarray:
    """Deterministic unit vector per (scene, object): the *instance part* of the simulated ``[SEG]``.

    Seeded random unit vectors in high dimension are near-orthogonal, so this part tells objects
    apart; it means nothing outside its scene. :func:`object_embedding` adds the parts that do.
    """
    return _unit_vector(f"{scene_key}:{instance_id}", dim)


#: Mix of the SIMULATED ``[SEG]`` embedding of an object: category, colour, instance directions
#: (before normalising). OUR ASSUMPTION, not a measurement of LISA. Default: no instance part, so
#: the token says *what* the object is (category 67%, colour 33% of the squared norm; objects of one
#: category and colour have cosine 1, of one category ~0.67, of one colour ~0.33), plus the
#: profile's per-view noise. Why no instance part: LISA sees one image at a time, so its token can
#: carry appearance and image context but not an identity that is the same from every viewpoint
#: and tells identical-looking objects apart; the instance direction is such an identity (a random
#: vector per object, equal in every view). Until 2026-11-21 the mix was (0.5, 0.35, 0.8), 63%
#: instance: it handed token attention that view-invariant identity, and it left a 3D network no
#: way to answer from the embedding in unseen rooms (MLLM-For3D §3.3): trained even on the
#: SIMULATION's truth, the network scored 19 mIoU against fusion's 38 (bench/results/
#: net_ablation_gpu.md, which also measures 0.4). ``segmenter.sim_instance_weight`` sets the third
#: weight.
SEG_EMBEDDING_MIX = (0.5, 0.35, 0.0)


def seg_embedding_mix(instance_weight: float = SEG_EMBEDDING_MIX[2]) -> tuple[float, float, float]:
    """:data:`SEG_EMBEDDING_MIX` with another instance weight (``segmenter.sim_instance_weight``).

    Why a knob: how much of a real ``[SEG]`` token is specific to the instance in its image, rather
    than what the object is, cannot be measured here (no LISA weights), and it decides whether a 3D
    network can answer from the embedding in rooms it never saw (``bench/results/net_ablation_gpu.md``).
    """
    w = float(instance_weight)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"instance weight must be finite and >= 0, got {instance_weight}")
    return (SEG_EMBEDDING_MIX[0], SEG_EMBEDDING_MIX[1], w)


def object_embedding(
    scene_key: str,
    instance_id: int,
    category: str,
    color_name: str,
    dim: int,
    mix: tuple[float, float, float] = SEG_EMBEDDING_MIX,
) -> np.ndarray:
    """The SIMULATED ``[SEG]`` embedding of an object: unit mix of category, colour and instance parts.

    The category and colour directions are shared by every scene (keys without the scene), the
    instance part is :func:`instance_embedding`. Deterministic; ``mix = (0, 0, 1)`` gives the pure
    instance direction (the simulation before category and colour were added).
    """
    a, b, d = (float(x) for x in mix)
    if min(a, b, d) < 0 or a + b + d <= 0:
        raise ValueError(f"embedding mix must be >= 0 and not all 0, got {mix}")
    v = d * instance_embedding(scene_key, instance_id, dim).astype(np.float64)
    if a:
        v = v + a * _unit_vector(f"seg-category:{category}", dim)
    if b:
        v = v + b * _unit_vector(f"seg-colour:{color_name}", dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def no_object_embedding(dim: int) -> np.ndarray:
    """The generic "nothing segmented" direction (scene-independent, near-orthogonal to every object)."""
    return _unit_vector("no-object", dim)


#: Mix of the simulated SAM feature code of an object: category, colour, instance (before normalising).
#: Objects of one category and colour then have cosine ~0.57, of one category ~0.36, unrelated ~0.
_FEATURE_MIX = (0.6, 0.4, 0.7)


def feature_grid_cells(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column at the centre of each cell of SAM's feature grid (-1: padding).

    SAM resizes the longest image side to its input size and zero-pads the other side at the
    bottom/right, so a (grid, grid) feature map covers a ``max(H, W)`` pixel square anchored at the
    top-left corner: cell ``j`` spans pixels ``[j L / grid, (j + 1) L / grid)`` with ``L = max(H, W)``.
    """
    side = max(height, width)
    centre = np.floor((np.arange(grid) + 0.5) * side / grid).astype(np.int64)
    rows = np.where(centre < height, centre, -1)
    cols = np.where(centre < width, centre, -1)
    return rows, cols


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Per-query and per-view state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedViewOutcome:
    """Ground truth of what the simulated model did in one view (for tests and benchmarks only).

    ``kind`` is "correct", "confused" (a distractor while the target was visible), "hallucinated"
    (something while the target was not visible), "missed" (the chosen object came out empty) or
    "none" (nothing segmented, correctly or because nothing was similar). ``chosen_id`` is the object
    the model went for (0: none), ``segmented_id`` the one whose mask it returned (0 when missed).
    ``from_belief`` marks errors caused by the per-query wrong belief (consistent across views).
    ``alternatives_visible`` says whether an error was possible at all: with the target visible, a
    distractor was visible too; without it, some object to hallucinate on was visible.
    """

    kind: str
    target_id: int
    target_visible: bool
    alternatives_visible: bool
    chosen_id: int
    segmented_id: int
    from_belief: bool
    mask_pixels: int


@dataclass(frozen=True)
class _QueryState:
    text: str
    target: int  # 0: absent / not understood
    kind: str
    ranking: tuple[int, ...]  # hallucination candidates, most similar first (per-query tie-break)
    scores: dict[int, float]  # similarity to the description (with the tie-break)
    distractors: frozenset[int]  # candidates that satisfy part of the description
    u_belief: float  # the per-query latent: small = the model holds a wrong belief


@dataclass(frozen=True)
class _Render:
    instance: np.ndarray  # (H, W) int32
    counts: np.ndarray  # pixels per instance id
    on_border: frozenset[int]


def _predicate_parts(p: QueryPredicate | None) -> tuple[set[str], set[str], set[str], set[str]]:
    """(categories, colours, affordances) of the top level and the categories of nested anchors."""
    cats: set[str] = set()
    cols: set[str] = set()
    affs: set[str] = set()
    anchors: set[str] = set()
    if p is None:
        return cats, cols, affs, anchors
    cats |= {p.category} if p.category else set()
    cols |= {p.color_name} if p.color_name else set()
    affs |= {p.affordance} if p.affordance else set()
    for f in fields(p):  # every nested relation (on, nearest_to, left_of, ...): its objects are anchors
        sub = getattr(p, f.name)
        if isinstance(sub, QueryPredicate):
            c, _, _, a = _predicate_parts(sub)
            anchors |= c | a
    return cats, cols, affs, anchors


def _parse_text(text: str, categories: set[str]) -> tuple[set[str], set[str], set[str]]:
    """Categories, colours and affordances a query the model does not "know" mentions by name."""
    cats = {c for c in categories if re.search(rf"\b{re.escape(c)}(e?s)?\b", text)}
    cols = {c for c in COLOR_PALETTE if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", text)}
    affs = {a for a, phrase in AFFORDANCE_PHRASES.items() if phrase in text}
    return cats, cols, affs


def _pose_seed_bytes(pose: np.ndarray) -> bytes:
    """A camera pose as seed material, rounded to 1e-6 (1 um, 1 urad).

    Why rounded: the same recorded pose reaches the node by different conversions (a PoseStamped,
    or TF through tf2's BufferCore) and differs there in the last bit; the simulated model must give
    the same view the same answer either way (the demo's answers over real tf2 and the topic
    fallback, issue 18). ``+ 0.0`` folds -0.0 into 0.0.
    """
    return (np.round(np.asarray(pose, dtype=np.float64), 6) + 0.0).tobytes()


def _seed_of(*parts: bytes) -> int:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return int.from_bytes(h.digest()[:8], "little")


class SimulatedSegmenter:
    """SIMULATED LISA on a synthetic scene (see module docstring); ``profile`` sets its failure rates.

    Args:
        scene: the synthetic scene whose ground truth drives the simulation.
        profile: a preset name from :data:`PROFILES` ("oracle", "lisa7b", "lisa13b") or a profile.
        embedding_dim: size of the ``[SEG]`` embedding (LISA's projection is 256-d).
        seed: extra seed, so repeated benchmark runs can draw independent model errors.
        render_cache_size: instance renders kept (LRU); one 640x480 render is ~1.2 MB.
        image_features: also return SIMULATED SAM image features in
            ``ViewSegmentation.image_features`` (see the module docstring); off by default.
        feature_dim: channels C of the simulated features (SAM's 256).
        feature_grid: side G of the simulated feature grid (SAM's 64).
        feature_noise: expected norm of the smooth per-cell noise added to the unit object codes.
        feature_cache_size: feature grids kept (LRU; one is C * G * G * 4 bytes, 4 MB by default).
        embedding_mix: (category, colour, instance) weights of the simulated ``[SEG]`` embedding
            (:data:`SEG_EMBEDDING_MIX`; ``(0, 0, 1)``: pure per-instance vectors).
    """

    def __init__(
        self,
        scene: SyntheticScene,
        profile: str | SimulatedLisaProfile = "lisa7b",
        embedding_dim: int = 256,
        seed: int = 0,
        render_cache_size: int = 64,
        image_features: bool = False,
        feature_dim: int = 256,
        feature_grid: int = 64,
        feature_noise: float = 0.5,
        feature_cache_size: int = 16,
        embedding_mix: tuple[float, float, float] = SEG_EMBEDDING_MIX,
    ) -> None:
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise ValueError(f"unknown simulated profile '{profile}' (choose from {sorted(PROFILES)})")
            profile = PROFILES[profile]
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if render_cache_size < 0:
            raise ValueError(f"render_cache_size must be >= 0, got {render_cache_size}")
        if feature_dim < 1 or feature_grid < 1 or feature_cache_size < 0:
            raise ValueError("feature_dim and feature_grid must be >= 1 and feature_cache_size >= 0")
        if not math.isfinite(feature_noise) or feature_noise < 0:
            raise ValueError(f"feature_noise must be a finite number >= 0, got {feature_noise}")
        self.scene = scene
        self.profile = profile
        self.embedding_dim = int(embedding_dim)
        self.seed = int(seed)
        self.render_cache_size = int(render_cache_size)
        self.name = f"simulated-{profile.name}"
        self._scene_seed = int(scene.seed) if scene.seed is not None else 0
        self._key = f"scene-{self._scene_seed}"
        self._queries = {_normalise(q.text): q for q in scene.queries}
        self._objects = {o.instance_id: o for o in scene.objects}
        self._categories = {o.category for o in scene.objects} | set(CATEGORY_AFFORDANCES)
        self._cache: OrderedDict[tuple[CameraIntrinsics, bytes], _Render] = OrderedDict()
        self.image_features = bool(image_features)
        self.feature_dim = int(feature_dim)
        self.feature_grid = int(feature_grid)
        self.feature_noise = float(feature_noise)
        self.feature_cache_size = int(feature_cache_size)
        self._feature_cache: OrderedDict[tuple[CameraIntrinsics, bytes], np.ndarray] = OrderedDict()
        self.embedding_mix = tuple(float(x) for x in embedding_mix)
        if len(self.embedding_mix) != 3:
            raise ValueError(f"embedding_mix needs (category, colour, instance) weights, got {embedding_mix}")
        object_embedding("check", 0, "", "", 1, self.embedding_mix)  # validates the weights
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- queries ----------------------------------------------------------------------------------

    def object_embedding(self, instance_id: int) -> np.ndarray:
        """Noise-free SIMULATED ``[SEG]`` embedding of an object of this scene (:func:`object_embedding`)."""
        obj = self._objects.get(int(instance_id))
        category, colour = (obj.category, obj.color_name) if obj is not None else ("", "")
        return object_embedding(
            self._key, int(instance_id), category, colour, self.embedding_dim, self.embedding_mix
        )

    def target_of(self, query: str) -> int | None:
        """Target id of a scripted query (0: absent target; None: the model does not understand the text)."""
        q = self._queries.get(_normalise(query))
        return None if q is None else q.target_instance_id

    def _query_state(self, query: str) -> _QueryState:
        text = _normalise(query)
        q = self._queries.get(text)
        target_obj: ObjectSpec | None = None
        if q is not None and q.target_instance_id in self._objects:
            target_obj = self._objects[q.target_instance_id]
        # What the description mentions: the target's own attributes plus the predicate's (or, for
        # a query the simulated model does not know, the words it contains).
        if q is not None and q.predicate is not None:
            cats, cols, affs, anchors = _predicate_parts(q.predicate)
        elif q is None:
            cats, cols, affs = _parse_text(text, self._categories)
            anchors = set()
        else:
            cats, cols, affs, anchors = set(), set(), set(), set()
        if target_obj is not None:
            cats.add(target_obj.category)
            cols.add(target_obj.color_name)
            affs |= set(target_obj.affordances)

        rng = np.random.default_rng(
            _seed_of(str(self.seed).encode(), str(self._scene_seed).encode(), b"q", text.encode())
        )
        u_belief = float(rng.random())
        scored: list[tuple[float, int]] = []
        distractors = set()
        for o in self.scene.objects:
            if o.category in _SHELL or (target_obj is not None and o.instance_id == target_obj.instance_id):
                continue
            score = (
                4.0 * (o.category in cats)
                + 2.0 * bool(affs & set(o.affordances))
                + 1.5 * (o.category in anchors)
                + 1.0 * (o.color_name in cols)
            )
            if score == 0 and o.is_structure:
                continue  # a door/window is only a wrong answer when something about it matches
            if score >= 1.5:  # same category, shared use, or the landmark of a spatial query
                distractors.add(o.instance_id)
            scored.append((score + 0.9 * float(rng.random()), o.instance_id))  # per-query tie-break
        ranking = tuple(i for _, i in sorted(scored, reverse=True))
        kind = q.kind if q is not None else "unknown"
        return _QueryState(
            text,
            target_obj.instance_id if target_obj else 0,
            kind,
            ranking,
            {i: s for s, i in scored},
            frozenset(distractors),
            u_belief,
        )

    # -- rendering --------------------------------------------------------------------------------

    def _render(self, intrinsics: CameraIntrinsics, pose: np.ndarray) -> _Render:
        key = (intrinsics, pose.tobytes())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit
            self.cache_misses += 1
        _, _, instance = self.scene.render(intrinsics, pose)
        instance = instance.astype(np.int32, copy=False)
        instance.flags.writeable = False
        border = np.concatenate([instance[0], instance[-1], instance[:, 0], instance[:, -1]])
        r = _Render(instance, np.bincount(instance.ravel()), frozenset(int(i) for i in np.unique(border)))
        if self.render_cache_size > 0:
            with self._lock:
                self._cache[key] = r
                self._cache.move_to_end(key)
                while len(self._cache) > self.render_cache_size:
                    self._cache.popitem(last=False)
        return r

    def clear_cache(self) -> None:
        """Drop all cached renders (e.g. to time uncached segmentation)."""
        with self._lock:
            self._cache.clear()
            self._feature_cache.clear()

    # -- simulated SAM image features ---------------------------------------------------------

    def _object_code(self, instance_id: int) -> np.ndarray:
        """Unit feature code of an object (0: a ray that hit nothing)."""
        c = self.feature_dim
        obj = self._objects.get(instance_id)
        if obj is None:
            return _unit_vector("sam-empty", c)
        a, b, d = _FEATURE_MIX
        v = (
            a * _unit_vector(f"sam-category:{obj.category}", c)
            + b * _unit_vector(f"sam-colour:{obj.color_name}", c)
            + d * _unit_vector(f"{self._key}:sam-instance:{instance_id}", c)
        )
        return (v / np.linalg.norm(v)).astype(np.float32)

    def simulated_image_features(self, view: ViewInput) -> np.ndarray:
        """SIMULATED SAM image-encoder features of a view: (C, G, G) float32, read-only.

        Cell (i, j) holds the unit code of the object rendered at the cell's centre pixel
        (:func:`feature_grid_cells`; padding cells get a fixed padding code) plus a smooth Gaussian
        noise field (correlation length ~1.5 cells) of expected norm ``feature_noise``. Seeded by the
        segmenter seed, the scene and the camera pose only: the same image always gives the same
        features, whatever the query (SAM's image encoder never sees the text).
        """
        intr = view.intrinsics
        pose = np.ascontiguousarray(view.T_world_cam, dtype=np.float64)
        key = (intr, pose.tobytes())
        with self._lock:
            hit = self._feature_cache.get(key)
            if hit is not None:
                self._feature_cache.move_to_end(key)
                return hit
        inst = self._render(intr, pose).instance
        rows, cols = feature_grid_cells(intr.height, intr.width, self.feature_grid)
        ids = np.full((rows.size, cols.size), -1, dtype=np.int64)
        r_ok, c_ok = rows >= 0, cols >= 0
        ids[np.ix_(r_ok, c_ok)] = inst[np.ix_(rows[r_ok], cols[c_ok])]
        uniq, inverse = np.unique(ids, return_inverse=True)
        codes = np.stack(
            [
                _unit_vector("sam-padding", self.feature_dim) if i < 0 else self._object_code(int(i))
                for i in uniq
            ]
        )
        feats = codes[inverse.reshape(ids.shape)].transpose(2, 0, 1)  # (C, G, G)
        if self.feature_noise > 0:
            cam = np.array([intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy], dtype=np.float64)
            rng = np.random.default_rng(
                _seed_of(
                    str(self.seed).encode(),
                    str(self._scene_seed).encode(),
                    b"sam",
                    cam.tobytes(),
                    _pose_seed_bytes(pose),
                )
            )
            noise = ndimage.gaussian_filter(
                rng.standard_normal(feats.shape).astype(np.float32), (0, 1.5, 1.5), mode="wrap"
            )
            rms = float(np.sqrt(np.mean(np.sum(noise**2, axis=0))))
            feats = feats + (self.feature_noise / max(rms, 1e-12)) * noise
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        feats.flags.writeable = False
        if self.feature_cache_size > 0:
            with self._lock:
                self._feature_cache[key] = feats
                while len(self._feature_cache) > self.feature_cache_size:
                    self._feature_cache.popitem(last=False)
        return feats

    # -- segmentation -----------------------------------------------------------------------------

    def segment(self, views: Sequence[ViewInput], query: str) -> list[ViewSegmentation]:
        """Answer ``query`` on each view as the simulated LISA would (one result per view, in order)."""
        return [seg for seg, _ in self.segment_with_truth(views, query)]

    def segment_with_truth(
        self, views: Sequence[ViewInput], query: str
    ) -> list[tuple[ViewSegmentation, SimulatedViewOutcome]]:
        """Like :meth:`segment`, plus what the simulation did in each view (no real model can say)."""
        state = self._query_state(query)
        return [self._segment_view(v, state) for v in views]

    def _segment_view(self, view: ViewInput, q: _QueryState) -> tuple[ViewSegmentation, SimulatedViewOutcome]:
        p = self.profile
        intr = view.intrinsics
        pose = np.ascontiguousarray(view.T_world_cam, dtype=np.float64)
        h, w = intr.height, intr.width
        rend = self._render(intr, pose)
        cam = np.array([intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy], dtype=np.float64)
        rng = np.random.default_rng(
            _seed_of(
                str(self.seed).encode(),
                str(self._scene_seed).encode(),
                b"v",
                q.text.encode(),
                cam.tobytes(),
                _pose_seed_bytes(pose),
            )
        )
        # Fixed draw order (common random numbers: a higher rate never turns an error into a success).
        u_err, u_pick, u_miss, u_bleed, u_bleed_pick = rng.random(5)
        z_boundary, z_conf = rng.standard_normal(2)
        u_logit_in, u_logit_out, u_peak = rng.random(3)
        noise = rng.standard_normal(self.embedding_dim)

        min_px = max(1, int(math.ceil(p.min_visible_fraction * h * w)))

        def pixels(i: int) -> int:
            return int(rend.counts[i]) if 0 < i < rend.counts.size else 0

        visible_ranked = [i for i in q.ranking if pixels(i) >= min_px]
        target_visible = q.target > 0 and pixels(q.target) >= min_px
        c = p.consistency

        def per_view(rate: float) -> float:
            # Per-view rate such that belief + per-view give ``rate`` where the belief object is seen.
            return 0.0 if rate >= 1.0 and c >= 1.0 else rate * (1 - c) / (1 - c * rate)

        chosen, kind, from_belief = 0, "none", False
        alternatives = bool(visible_ranked)
        if target_visible:
            rate = p.confusion_rate(q.kind)
            visible_d = [i for i in visible_ranked if i in q.distractors]
            alternatives = bool(visible_d)
            belief = next((i for i in q.ranking if i in q.distractors), 0)
            if belief and q.u_belief < c * rate and belief in visible_d:
                chosen, kind, from_belief = belief, "confused", True
            elif visible_d and u_err < per_view(rate):
                weights = np.array([4.0 ** q.scores[i] for i in visible_d])  # look-alikes first
                chosen = visible_d[int(np.searchsorted(np.cumsum(weights) / weights.sum(), u_pick))]
                kind = "confused"
            else:
                chosen, kind = q.target, "correct"
        elif visible_ranked:
            rate = p.hallucination_rate
            belief = q.ranking[0]
            if q.u_belief < c * rate and belief in visible_ranked:
                chosen, kind, from_belief = belief, "hallucinated", True
            elif u_err < per_view(rate):
                chosen, kind = visible_ranked[0], "hallucinated"

        mask = np.zeros((h, w), dtype=bool)
        area = pixels(chosen) / float(h * w) if chosen else 0.0
        if chosen:
            small = math.exp(-area / p.small_area_fraction)
            p_miss = 1 - (1 - p.miss_rate) * (1 - p.miss_small_rate * small) * (
                1 - p.miss_truncated_rate * (chosen in rend.on_border)
            )
            if u_miss < p_miss:
                kind = "missed"
            else:
                mask = self._mask_of(rend.instance, chosen, z_boundary, u_bleed, u_bleed_pick, w)

        scale = w / _REF_WIDTH
        sigma = max(0.6, 1.5 * scale)
        l_out = _LOGIT_OUT[0] + (_LOGIT_OUT[1] - _LOGIT_OUT[0]) * u_logit_out
        segmented = chosen if mask.any() else 0
        if segmented:
            mean = p.conf_correct_mean if kind == "correct" else p.conf_wrong_mean
            mask_area = float(mask.sum()) / (h * w)
            conf = (
                mean
                + p.conf_std * z_conf
                - p.conf_small_penalty * math.exp(-mask_area / p.small_area_fraction)
            )
            conf = float(np.clip(conf, 0.01, 0.99))
            l_in = (_LOGIT_IN[0] + (_LOGIT_IN[1] - _LOGIT_IN[0]) * u_logit_in) * (0.4 + 0.6 * conf)
            logits = _soft_logits(mask, l_in, l_out, sigma)
            emb_dir = self.object_embedding(segmented)
            answer = _ANSWER_FOUND
        else:
            conf = float(np.clip(p.conf_miss_mean + p.conf_std * z_conf, 0.01, 0.99))
            logits = np.full((h, w), -l_out, dtype=np.float32)
            if kind == "missed":
                # SAM's weak response on the object it failed to segment: a bump that stays below 0.
                peak = 1.0 + 2.0 * u_peak
                b = ndimage.gaussian_filter((rend.instance == chosen).astype(np.float32), sigma)
                logits += ((l_out - peak) * b).astype(np.float32)
                answer = _ANSWER_MISSED
            else:
                answer = _ANSWER_NONE
            emb_dir = no_object_embedding(self.embedding_dim)
        emb = emb_dir
        if p.embedding_noise > 0:
            emb = emb_dir + (p.embedding_noise / math.sqrt(self.embedding_dim)) * noise.astype(np.float32)
            emb = (emb / np.linalg.norm(emb)).astype(np.float32)
        outcome = SimulatedViewOutcome(
            kind,
            q.target,
            bool(target_visible),
            alternatives,
            int(chosen),
            int(segmented),
            from_belief,
            int(mask.sum()),
        )
        feats = self.simulated_image_features(view) if self.image_features else None
        return ViewSegmentation(logits, conf, emb, answer, image_features=feats), outcome

    def _mask_of(
        self, instance: np.ndarray, k: int, z_boundary: float, u_bleed: float, u_pick: float, width: int
    ) -> np.ndarray:
        """Instance ``k``'s mask with the profile's boundary error and bleeding (done in a padded crop)."""
        p = self.profile
        scale = width / _REF_WIDTH
        exact = instance == k
        radius = int(round(z_boundary * p.boundary_px * scale))
        bleed = u_bleed < p.bleed_rate
        bleed_r = max(1.0, p.bleed_px * scale) if bleed else 0.0
        if radius == 0 and not bleed:
            return exact
        rows, cols = np.nonzero(exact)
        pad = int(abs(radius) + bleed_r + 2)
        r0, r1 = max(0, rows.min() - pad), min(instance.shape[0], rows.max() + pad + 1)
        c0, c1 = max(0, cols.min() - pad), min(instance.shape[1], cols.max() + pad + 1)
        m = exact[r0:r1, c0:c1].copy()
        inst = instance[r0:r1, c0:c1]
        if radius > 0:  # dilation: spills onto whatever surrounds the object
            m |= ndimage.distance_transform_edt(~m) <= radius
        elif radius < 0:  # erosion; a mask eroded away keeps its original shape
            eroded = ndimage.distance_transform_edt(m) > -radius
            m = eroded if eroded.any() else m
        if bleed:
            ring = ndimage.binary_dilation(m) & ~m
            ids, counts = np.unique(inst[ring], return_counts=True)
            keep = (ids != k) & (ids != 0)
            ids, counts = ids[keep], counts[keep]
            if ids.size:
                n = int(ids[int(np.searchsorted(np.cumsum(counts) / counts.sum(), u_pick))])
                m |= (inst == n) & (ndimage.distance_transform_edt(~m) <= bleed_r)
        out = np.zeros_like(exact)
        out[r0:r1, c0:c1] = m
        return out


def _soft_logits(mask: np.ndarray, l_in: float, l_out: float, sigma: float) -> np.ndarray:
    """SAM-like logits whose sign is exactly ``mask``: large inside/outside, near 0 at the boundary.

    The magnitude follows a Gaussian-blurred mask (a soft edge a few pixels wide, like SAM's
    upsampled low-resolution logits); only a crop around the mask is blurred, the rest is ``-l_out``.
    """
    h, w = mask.shape
    logits = np.full((h, w), -l_out, dtype=np.float32)
    rows, cols = np.nonzero(mask)
    pad = int(4 * sigma) + 2
    r0, r1 = max(0, rows.min() - pad), min(h, rows.max() + pad + 1)
    c0, c1 = max(0, cols.min() - pad), min(w, cols.max() + pad + 1)
    m = mask[r0:r1, c0:c1]
    s = 2.0 * ndimage.gaussian_filter(m.astype(np.float32), sigma, mode="nearest") - 1.0
    logits[r0:r1, c0:c1] = np.where(m, np.maximum(l_in * s, _LOGIT_EPS), np.minimum(l_out * s, -_LOGIT_EPS))
    return logits


def from_config(config: SegmenterConfig) -> SimulatedSegmenter:
    """``segmenter.backend: simulated`` (see :mod:`reasoning_seg.backends`): scene, profile and seed."""
    if not config.scene:
        raise ValueError("segmenter.backend 'simulated' needs segmenter.scene (a synthetic scene directory)")
    from reasoning_seg.sim.scene import SyntheticScene

    if config.sim_profile not in PROFILES:
        raise ValueError(f"segmenter.sim_profile '{config.sim_profile}' is not one of {sorted(PROFILES)}")
    return SimulatedSegmenter(
        SyntheticScene.load(config.scene),
        profile=config.sim_profile,
        embedding_dim=config.embedding_dim,
        seed=config.sim_seed,
        embedding_mix=seg_embedding_mix(config.sim_instance_weight),
    )
