"""The stored form of pseudo-labels (:mod:`reasoning_seg.net.pseudo_labels`): classes, save, load.

Why apart from generation: the trainer and the experiment read these files without running the
node's stages, and the format (one compressed ``.npz`` per scene, no pickles, validated on load with
:class:`PseudoLabelError` for a corrupt, truncated or foreign file) is a contract of its own.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_seg.net.atomic_file import write_atomically

FORMAT = "reasoning_seg.pseudo_labels"
VERSION = 1


class PseudoLabelError(ValueError):
    """A pseudo-label file that cannot be used (corrupt, truncated, foreign or inconsistent)."""


# ---------------------------------------------------------------------------------------------
# The stored form
# ---------------------------------------------------------------------------------------------


@dataclass
class QueryLabels:
    """The pseudo-label of one query (see the module docstring).

    Attributes:
        text, kind: the query and its kind (explicit / affordance / spatial / ...).
        target_id: the SIMULATION's true target instance (0: absent; -1: unknown, e.g. a real scene).
            Evaluation and the hybrid "w/ label" mode only.
        probability: (N,) float32 fused probability over the map points (the fusion pseudo-label).
        not_found_reason: why the node's fusion answer is "not found" ("" when it is found): fusion's
            own reason, or too few points at ``query.score_threshold`` (``result.select_target``).
        unified: (E,) float32 unit unified [SEG] embedding; ``unified_source`` says where it came
            from: "fusion" (token attention), "mean" (fusion computed none, e.g. every view filtered
            or the naive method: the confidence-weighted mean of the views' embeddings), "none".
        agreement: fusion's [SEG] agreement (NaN when not computed).
        view_keyframe: (V,) int32 row of each view in the scene's keyframe table.
        view_confidence, view_weight, view_attention, view_alignment: (V,) float32 from the
            segmenter and fusion (weight 0 = the view did not vote).
        view_local: (V,) bool, REALM local close-up.
        seg_embeddings: (V, E) float32 per-view [SEG] embeddings.
        logits: (P,) float16, each view's mask logits at its keyframe's stored visible points,
            concatenated in view order (see :meth:`ScenePseudoLabels.pairs`).
        view_reasons, view_answers, view_outcomes: per view, fusion's filter reason, the model's
            answer text, the SIMULATED model's outcome ("" for a real model).
    """

    text: str
    kind: str
    target_id: int
    probability: np.ndarray
    not_found_reason: str
    unified: np.ndarray
    unified_source: str
    agreement: float
    view_keyframe: np.ndarray
    view_confidence: np.ndarray
    view_weight: np.ndarray
    view_attention: np.ndarray
    view_alignment: np.ndarray
    view_local: np.ndarray
    seg_embeddings: np.ndarray
    logits: np.ndarray
    view_reasons: list[str] = field(default_factory=list)
    view_answers: list[str] = field(default_factory=list)
    view_outcomes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether the node's fusion answer finds the target (the node's ``QueryResult.found``)."""
        return not self.not_found_reason


@dataclass
class ScenePseudoLabels:
    """One scene's map, keyframe table and the pseudo-labels of its queries.

    Attributes:
        name: scene name (the recording folder's name).
        points: (N, 3) float32 map surface points (metres, map frame, z up).
        colors: (N, 3) float32 in [0, 1].
        gt_instance: (N,) int32 SIMULATION ground-truth instance of each point (0: none/unknown).
        keyframe_ids: (K,) int64 keyframe ids of the table rows.
        vis_offsets: (K + 1,) int64: keyframe k's visible points are rows
            ``vis_offsets[k]:vis_offsets[k + 1]`` of ``vis_point`` / ``vis_feat``.
        vis_point: (P,) int32 map point index of each stored visible point.
        vis_feat: (P,) int32 row of ``feats`` holding the SAM feature at that point's pixel, -1 when
            the segmenter returned no image features.
        feats: (F, C) float16 SAM image features (rows of every keyframe's feature cells).
        queries: the per-query labels.
        meta: provenance (config, segmenter, sizes); written into the file as JSON.
    """

    name: str
    points: np.ndarray
    colors: np.ndarray
    gt_instance: np.ndarray
    keyframe_ids: np.ndarray
    vis_offsets: np.ndarray
    vis_point: np.ndarray
    vis_feat: np.ndarray
    feats: np.ndarray
    queries: list[QueryLabels]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_features(self) -> bool:
        """True when every stored visible point has a SAM feature (Eq. 2 can be trained)."""
        return bool(self.feats.shape[0] > 0 and (self.vis_feat >= 0).all())

    def view_rows(self, keyframe_row: int) -> slice:
        """Rows of ``vis_point`` / ``vis_feat`` of one keyframe-table row."""
        return slice(int(self.vis_offsets[keyframe_row]), int(self.vis_offsets[keyframe_row + 1]))

    def pairs(self, query: int | QueryLabels) -> dict[str, np.ndarray]:
        """Flat point-view pairs of a query (Eq. 1/2): every view x its stored visible points.

        Returns:
            ``point`` (P,) int64 map point, ``view`` (P,) int64 view index in the query,
            ``logit`` (P,) float32 sampled mask logit, ``feat_row`` (P,) int64 row of ``feats`` (-1:
            none), ``weight`` (P,) float32 the view's fusion weight.
        """
        q = self.queries[query] if isinstance(query, int) else query
        rows = [np.arange(self.vis_offsets[k], self.vis_offsets[k + 1]) for k in q.view_keyframe]
        counts = np.array([len(r) for r in rows], dtype=np.int64)
        idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        view = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        return {
            "point": self.vis_point[idx].astype(np.int64),
            "view": view,
            "logit": q.logits.astype(np.float32),
            "feat_row": self.vis_feat[idx].astype(np.int64),
            "weight": q.view_weight[view].astype(np.float32) if len(view) else np.zeros(0, np.float32),
        }

    def gt_mask(self, query: int | QueryLabels) -> np.ndarray | None:
        """(N,) bool SIMULATION ground truth of a query's target (None when unknown)."""
        q = self.queries[query] if isinstance(query, int) else query
        if q.target_id < 0:
            return None
        if q.target_id == 0:
            return np.zeros(len(self.points), dtype=bool)
        return self.gt_instance == q.target_id


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

_QUERY_ARRAYS = {
    # name: (dtype, ndim)
    "probability": (np.float32, 1),
    "unified": (np.float32, 1),
    "view_keyframe": (np.int32, 1),
    "view_confidence": (np.float32, 1),
    "view_weight": (np.float32, 1),
    "view_attention": (np.float32, 1),
    "view_alignment": (np.float32, 1),
    "view_local": (np.bool_, 1),
    "seg_embeddings": (np.float32, 2),
    "logits": (np.float16, 1),
}
_SCENE_ARRAYS = {
    "points": (np.float32, 2),
    "colors": (np.float16, 2),
    "gt_instance": (np.int32, 1),
    "keyframe_ids": (np.int64, 1),
    "vis_offsets": (np.int64, 1),
    "vis_point": (np.int32, 1),
    "vis_feat": (np.int32, 1),
    "feats": (np.float16, 2),
}
_QUERY_TEXT = ("text", "kind", "target_id", "not_found_reason", "unified_source", "agreement")
_QUERY_LISTS = ("view_reasons", "view_answers", "view_outcomes")


def save_scene_labels(labels: ScenePseudoLabels, path: str | Path) -> Path:
    """Write one scene's labels as a compressed ``.npz`` (atomically: a crash leaves no half file)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, _) in _SCENE_ARRAYS.items():
        arrays[name] = np.ascontiguousarray(getattr(labels, name), dtype=dtype)
    queries_meta = []
    for j, q in enumerate(labels.queries):
        for name, (dtype, _) in _QUERY_ARRAYS.items():
            arrays[f"q{j:05d}.{name}"] = np.ascontiguousarray(getattr(q, name), dtype=dtype)
        entry = {k: getattr(q, k) for k in _QUERY_TEXT + _QUERY_LISTS}
        entry["agreement"] = None if not np.isfinite(q.agreement) else float(q.agreement)
        queries_meta.append(entry)
    meta = dict(labels.meta, format=FORMAT, version=VERSION, scene=labels.name, queries=queries_meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return write_atomically(path, lambda fh: np.savez_compressed(fh, **arrays))


def _array(data: Any, key: str, dtype: Any, ndim: int, path: Path) -> np.ndarray:
    if key not in data.files:
        raise PseudoLabelError(f"{path}: missing array '{key}' (truncated or foreign file)")
    a = data[key]
    if a.ndim != ndim or a.dtype != np.dtype(dtype):
        raise PseudoLabelError(
            f"{path}: '{key}' is {a.dtype} with {a.ndim} dims, expected {np.dtype(dtype)}/{ndim}"
        )
    return a


def load_scene_labels(path: str | Path) -> ScenePseudoLabels:
    """Read and validate a file written by :func:`save_scene_labels`.

    Raises:
        FileNotFoundError: no such file.
        PseudoLabelError: not a readable npz, not a pseudo-label file (or another version), or
            inconsistent contents (shapes, index ranges, logits not matching the keyframe table).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return _parse(data, path)
    except PseudoLabelError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise PseudoLabelError(
            f"{path}: not a readable pseudo-label file ({type(exc).__name__}: {exc})"
        ) from exc


def _parse(data: Any, path: Path) -> ScenePseudoLabels:
    if "meta" not in data.files:
        raise PseudoLabelError(f"{path}: no 'meta' record: not a {FORMAT} file")
    try:
        meta = json.loads(bytes(data["meta"]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PseudoLabelError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PseudoLabelError(f"{path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise PseudoLabelError(
            f"{path}: version {meta.get('version')} is not the supported {VERSION}; regenerate it"
        )
    a = {name: _array(data, name, dt, nd, path) for name, (dt, nd) in _SCENE_ARRAYS.items()}
    n = a["points"].shape[0]
    k = a["keyframe_ids"].shape[0]
    p = a["vis_point"].shape[0]
    if a["points"].shape[1] != 3 or a["colors"].shape != (n, 3) or a["gt_instance"].shape != (n,):
        raise PseudoLabelError(f"{path}: points/colors/gt_instance do not describe the same {n} points")
    off = a["vis_offsets"]
    if off.shape != (k + 1,) or off[0] != 0 or off[-1] != p or (np.diff(off) < 0).any():
        raise PseudoLabelError(f"{path}: keyframe visibility offsets are inconsistent")
    if a["vis_feat"].shape != (p,):
        raise PseudoLabelError(f"{path}: vis_feat does not match vis_point")
    if p and (a["vis_point"].min() < 0 or a["vis_point"].max() >= n):
        raise PseudoLabelError(f"{path}: visible point index out of range")
    if p and (a["vis_feat"].min() < -1 or a["vis_feat"].max() >= a["feats"].shape[0]):
        raise PseudoLabelError(f"{path}: feature row out of range")
    counts = np.diff(off)
    entries = meta.get("queries")
    if not isinstance(entries, list):
        raise PseudoLabelError(f"{path}: metadata has no query list")
    queries = []
    for j, e in enumerate(entries):
        qa = {
            name: _array(data, f"q{j:05d}.{name}", dt, nd, path) for name, (dt, nd) in _QUERY_ARRAYS.items()
        }
        v = qa["view_keyframe"].shape[0]
        if any(
            qa[x].shape != (v,)
            for x in ("view_confidence", "view_weight", "view_attention", "view_alignment", "view_local")
        ):
            raise PseudoLabelError(f"{path}: query {j}: per-view arrays disagree on the number of views")
        if qa["probability"].shape != (n,):
            raise PseudoLabelError(f"{path}: query {j}: probability is not one value per point")
        if v and (qa["view_keyframe"].min() < 0 or qa["view_keyframe"].max() >= k):
            raise PseudoLabelError(f"{path}: query {j}: keyframe row out of range")
        if qa["logits"].shape[0] != int(counts[qa["view_keyframe"]].sum()):
            raise PseudoLabelError(f"{path}: query {j}: logits do not match its views' visible points")
        if qa["seg_embeddings"].shape[0] != v or qa["seg_embeddings"].shape[1:] != qa["unified"].shape:
            raise PseudoLabelError(f"{path}: query {j}: [SEG] embeddings do not match the unified embedding")
        try:
            text = {x: e[x] for x in _QUERY_TEXT + _QUERY_LISTS}
        except (KeyError, TypeError) as exc:
            raise PseudoLabelError(f"{path}: query {j}: incomplete metadata ({exc})") from exc
        agreement = float("nan") if text["agreement"] is None else float(text["agreement"])
        queries.append(
            QueryLabels(
                text=str(text["text"]),
                kind=str(text["kind"]),
                target_id=int(text["target_id"]),
                not_found_reason=str(text["not_found_reason"]),
                unified_source=str(text["unified_source"]),
                agreement=agreement,
                view_reasons=[str(x) for x in text["view_reasons"]],
                view_answers=[str(x) for x in text["view_answers"]],
                view_outcomes=[str(x) for x in text["view_outcomes"]],
                **qa,
            )
        )
    other = {key: val for key, val in meta.items() if key != "queries"}
    return ScenePseudoLabels(
        name=str(meta.get("scene", path.stem)),
        points=a["points"],
        colors=a["colors"].astype(np.float32),
        gt_instance=a["gt_instance"],
        keyframe_ids=a["keyframe_ids"],
        vis_offsets=off,
        vis_point=a["vis_point"],
        vis_feat=a["vis_feat"],
        feats=a["feats"],
        queries=queries,
        meta=other,
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a pseudo-label file (cheap: the arrays are not decompressed).

    Raises:
        PseudoLabelError: as :func:`load_scene_labels`, for the metadata part.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise PseudoLabelError(f"{path}: no 'meta' record: not a {FORMAT} file")
            meta = json.loads(bytes(data["meta"]).decode())
    except PseudoLabelError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise PseudoLabelError(
            f"{path}: not a readable pseudo-label file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PseudoLabelError(f"{path}: not a version-{VERSION} {FORMAT} file")
    return meta
