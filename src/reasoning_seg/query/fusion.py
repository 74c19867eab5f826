"""Lifting per-view 2D masks onto the map's surface points (MLLM-For3D §3.1, REALM GLSpaG-Global).

Every method shares one vote (MLLM-For3D §3.2, "Multi-modal Semantic Alignment"): a map point that
is *visible* in a view (depth-consistent, :func:`reasoning_seg.camera.visible_pixels`) and falls
inside that view's mask is a vote for the target; visible but outside the mask is a vote against
(it counts in the denominator); occluded or outside the image is no vote at all. A point's fused
probability is the weighted mean of the votes of the views that see it, 0 when none does. The
methods differ in which views vote and with what weight:

- ``naive``: every view above the confidence/area floors, weight 1, binary masks. The projection-only
  baseline of MLLM-For3D Table 4 (a); kept exactly as it was so the ablation stays comparable.
- ``filtered``: the floors, then equal weights, with soft (or binary) masks and the support floor.
  An ablation row: view filtering without token attention.
- ``token_attention`` (default): the floors, then token attention over the remaining views' [SEG]
  embeddings (§3.1 "View Filtering via Token Attention"), attention-weighted votes, and the
  "not found" checks. A minority of views that hallucinate a different object is suppressed.
- ``majority_vote``: REALM's global stage adapted to a map without an instance feature field (see
  :func:`fuse_majority_vote`).

"Not found" (``not_found_reason`` set, probability all zero) replaces a hallucinated blob when the
evidence says the target is not in the map: every view was filtered out, the views' [SEG]
embeddings do not agree on one object, or no map point has enough in-mask support.

Every method takes ``device``: None (the default) runs the numpy reference implementation; a torch
device ("cuda", "cuda:0", "cpu"; "auto" = CUDA when available, else numpy) runs the depth test and
the voting of all views batched on that device (:func:`visible_pixels_torch`), keeping the map points
and keyframe depth images there between queries. Both paths compute the same float64 arithmetic, so
their results agree to the last bit or two (tests/test_query_overhead.py); on a GPU the torch path is
what keeps a query's overhead around the 2D model within the issue-8 budget (bench/results/query.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.camera import visible_pixels
from reasoning_seg.config import FusionConfig
from reasoning_seg.segmenter import ViewInput, ViewSegmentation

if TYPE_CHECKING:
    pass

from reasoning_seg.query.fusion_torch import (
    _camera,
    _device_key,
    _vote_torch,
    to_host,
    torch_device,
    visible_pixels_torch,
)

METHODS = ("naive", "filtered", "token_attention", "majority_vote")


@dataclass
class FusionResult:
    """Per-point fused evidence for one query, and how each view contributed to it."""

    probability: np.ndarray  # (N,) float32 in [0, 1]; all 0 when not_found_reason is set
    observed: np.ndarray  # (N,) int32: how many voting views saw the point
    view_weights: np.ndarray  # (V,) float32 weight each view's votes carried (0 = no vote)
    filtered_reasons: list[str]  # per view: "" if it voted, else why it was dropped
    # (V,) float32 token attention a_i (sums to 1 over the views it was computed for, 0 for the
    # others); naive/filtered: the equal share of each voting view.
    attention: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # (D,) float32 unit vector: attention-weighted fusion of the [SEG] embeddings (the 3D network's
    # query token, §3.2); None when no view voted or the method does not compute it (naive).
    unified_embedding: np.ndarray | None = None
    not_found_reason: str = ""  # "" when the evidence supports a target
    # (V,) float32 s_i = cos(e_i, unified_embedding); NaN for views not compared.
    alignment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    agreement: float = float("nan")  # sum_i a_i s_i (see token_attention); NaN when not computed


class FusionCache:
    """Per-query memo of the work fusion does for each (view, segmentation) pair.

    Why: the REALM local stage fuses the global views, adds close-ups and fuses all views again
    (:func:`reasoning_seg.pipeline.run_stages`). A view's depth test and its mask values at the
    visible points depend neither on the other views nor on the weights, so the second pass only
    has to compute them for the new close-ups; that is most of a fusion pass's work. The mask
    pixel counts of the view filter (§3.1) are kept for the same reason.

    Valid for one point array (a query's snapshot; given another array it starts over) and keyed
    by the identity of the view and segmentation objects, which it keeps alive so that an id
    cannot be reused while it holds it: make one per query and let it go with the query. Both
    paths use it (the numpy path memoises its per-view visibility); results are the same with or
    without it.
    """

    def __init__(self) -> None:
        self._points: Any = None
        self._rows: dict[tuple, Any] = {}
        self._pixels: dict[int, int] = {}
        self._keep: list[Any] = []

    def rows(self, points: Any, kind: tuple) -> dict[tuple[int, int], Any]:
        """The memo of one kind of row (path, mask mode, tolerance, device) for ``points``."""
        if points is not self._points:
            self._points, self._rows = points, {}
        return self._rows.setdefault(kind, {})

    def keep(self, *objects: Any) -> None:
        """Hold ``objects`` so the ids used as keys stay theirs while the memo lives."""
        self._keep.extend(objects)

    def mask_pixels(self, seg: ViewSegmentation) -> int:
        """``count_nonzero(seg.mask)``, counted once per segmentation."""
        n = self._pixels.get(id(seg))
        if n is None:
            n = self._pixels[id(seg)] = int(np.count_nonzero(seg.mask_logits > 0))
            self._keep.append(seg)
        return n


def view_filter_reason(seg: ViewSegmentation, config: FusionConfig, cache: FusionCache | None = None) -> str:
    """Why a view's mask is not trusted ('' when it is): §3.1 discards very low confidence or area."""
    if seg.confidence < config.min_confidence:
        return f"confidence {seg.confidence:.2f} < {config.min_confidence:.2f}"
    area = cache.mask_pixels(seg) if cache is not None else int(np.count_nonzero(seg.mask))
    if area < config.min_mask_pixels:
        return f"mask area {area} px < {config.min_mask_pixels} px"
    return ""


def fuse_naive(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    """Unweighted multi-view unprojection of masks onto ``points`` (N, 3) (Table 4 (a) baseline)."""
    _check_lengths(views, segmentations)
    n = len(points)
    weights = np.zeros(len(views), dtype=np.float32)
    reasons = [view_filter_reason(seg, config, cache) for seg in segmentations]
    weights[[i for i, r in enumerate(reasons) if not r]] = 1.0
    dev = torch_device(device)
    if dev is not None:  # the same vote with weight 1 and binary masks: sum of votes / views seeing
        prob, observed = _vote_torch(
            points, views, segmentations, weights.astype(np.float64), "binary", config, None, 1, dev, cache
        )
    else:
        votes = np.zeros(n, dtype=np.float64)
        observed = np.zeros(n, dtype=np.int32)
        idx = np.flatnonzero(weights)
        vis = _visibility(points, views, idx, config.visibility_tolerance, None, cache)
        for i in idx:
            visible, pix = vis[int(i)]
            inside = segmentations[i].mask.reshape(-1)[pix[visible]]
            votes[visible] += inside
            observed[visible] += 1
        prob = np.zeros(n, dtype=np.float32)
        seen = observed > 0
        prob[seen] = (votes[seen] / observed[seen]).astype(np.float32)
    attention = weights / weights.sum() if weights.any() else weights.copy()
    return FusionResult(
        prob,
        observed,
        weights,
        reasons,
        attention=attention.astype(np.float32),
        alignment=np.full(len(views), np.nan, np.float32),
    )


# ---------------------------------------------------------------------------- token attention
def token_attention(
    embeddings: np.ndarray, confidences: np.ndarray, rounds: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Token attention of MLLM-For3D §3.1 over K views' [SEG] embeddings.

    §3.1: the unified query embedding is the attention-weighted fusion of the views' embeddings,
    s_i is each view's semantic alignment with it, and a_i ∝ confidence_i · s_i, normalised so that
    Σ a_i = 1. The two definitions refer to each other, so we solve them by fixed-point iteration:
    round 1 starts from the confidence-weighted mean embedding, then each round sets
    ``a_i ∝ c_i · max(s_i, 0)`` (negative alignment = pointing away from the consensus = no weight)
    and re-fuses. A view embedding a different object starts with a low s_i, its weight shrinks, the
    unified embedding moves further towards the majority, and its s_i shrinks again: with near-
    orthogonal embeddings one hallucinating view of four falls from 1/4 to ~1/80 in three rounds.

    Embeddings are compared by direction only (cosine), so they are unit-normalised first and the
    unified embedding is returned as a unit vector (a zero embedding aligns with nothing).

    Returns ``(attention (K,), alignment (K,), unified (D,), agreement)``. ``alignment`` is s_i with
    respect to the returned unified embedding and ``agreement = Σ a_i s_i``; for unit vectors that is
    the length of the attention-weighted mean embedding: 1 when every weighted view points the same
    way, about 1/sqrt(K) for K equally weighted views on K different (near-orthogonal) objects.
    If no view aligns positively (e.g. two opposite embeddings of equal weight) the attention falls
    back to the confidence share and ``agreement`` is 0.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    k = len(e)
    if k == 0:
        raise ValueError("token attention needs at least one view")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    c = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    prior = c / c.sum() if c.sum() > 0 else np.full(k, 1.0 / k)  # the confidence-weighted mean
    weights = prior
    degenerate = False
    for _ in range(max(1, rounds)):
        unified = _unit(weights @ e)
        raw = prior * np.maximum(e @ unified, 0.0)  # a_i ∝ c_i · max(s_i, 0), §3.1
        if raw.sum() <= 0:
            weights, degenerate = prior, True
            break
        weights = raw / raw.sum()
    unified = _unit(weights @ e)
    alignment = e @ unified
    agreement = 0.0 if degenerate else float(weights @ alignment)
    return weights, alignment, unified, agreement


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else np.zeros_like(v)


# ---------------------------------------------------------------------------- shared voting
@dataclass
class _Votes:
    probability: np.ndarray  # (N,) weighted mean vote over the views that see the point
    observed: np.ndarray  # (N,) int32
    support: np.ndarray  # (N,) in-mask weight, in units of one view's equal share


def _mask_values(seg: ViewSegmentation, mode: str) -> np.ndarray:
    """Flat per-pixel vote value: the mask probability sigmoid(logit), or the binary mask."""
    if mode == "binary":
        return seg.mask.reshape(-1).astype(np.float64)
    if mode == "probability":
        logits = np.clip(seg.mask_logits.reshape(-1).astype(np.float64), -60.0, 60.0)
        return 1.0 / (1.0 + np.exp(-logits))
    raise ValueError(f"unknown fusion.mask_mode '{mode}' (probability | binary)")


def _visibility(
    points: np.ndarray,
    views: Sequence[ViewInput],
    idx: np.ndarray,
    tolerance: float,
    dev: Any = None,
    cache: FusionCache | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{view index: (visible (N,), flat pixel (N,))}`` for the views ``idx`` (the depth test).

    On the host; ``dev`` runs the depth test there (batched) and copies the result back. Views
    already in ``cache`` are not tested again.
    """
    memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if cache is not None:
        memo = cache.rows(points, ("host", tolerance, "numpy" if dev is None else _device_key(dev)))
        cache.keep(*(views[i] for i in idx))
    todo = [int(i) for i in idx if id(views[i]) not in memo]
    if dev is not None and todo:
        visible, flat, _ = visible_pixels_torch(points, [_camera(views[i]) for i in todo], tolerance, dev)
        visible, flat = to_host(visible), to_host(flat)
        memo.update({id(views[i]): (visible[j], flat[j]) for j, i in enumerate(todo)})
    for i in todo if dev is None else ():
        v = views[i]
        memo[id(v)] = visible_pixels(points, v.T_world_cam, v.intrinsics, v.depth, tolerance)
    return {int(i): memo[id(views[i])] for i in idx}


def _vote(
    n: int,
    masks: dict[int, np.ndarray],
    vis: dict[int, tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    shares: int,
) -> _Votes:
    """Visibility-checked weighted voting (MLLM-For3D §3.2): P(p) = Σ a_i m_i(p) / Σ a_i over views seeing p.

    ``weights`` sum to 1; support = K · Σ a_i m_i(p) with K = ``shares``, the number of views the
    weight was shared among, so 1.0 means "one average view's worth of 'inside the mask' evidence".
    """
    num = np.zeros(n)
    den = np.zeros(n)
    observed = np.zeros(n, dtype=np.int32)
    voters = np.flatnonzero(weights > 0)
    for i in voters:
        visible, pix = vis[i]
        num[visible] += weights[i] * masks[i][pix[visible]]
        den[visible] += weights[i]
        observed[visible] += 1
    prob = np.zeros(n)
    seen = den > 0
    prob[seen] = num[seen] / den[seen]
    return _Votes(prob, observed, num * shares)


# ---------------------------------------------------------------------------- the methods
def fuse_filtered(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    """View filtering + visibility voting with equal weights (the ablation without token attention)."""
    return _fuse_weighted(points, views, segmentations, config, False, device, cache)


def fuse_token_attention(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    """Full MLLM-For3D §3.1: filtering, token attention, attention-weighted votes, not-found checks."""
    return _fuse_weighted(points, views, segmentations, config, True, device, cache)


def _fuse_weighted(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    use_attention: bool,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    result, idx = _filter_and_weight(len(points), views, segmentations, config, use_attention, cache)
    if idx.size == 0:
        return result
    result.view_weights[idx] = result.attention[idx] if use_attention else 1.0
    weights = result.attention.astype(np.float64)
    dev = torch_device(device)
    if dev is not None:
        mode, floor = config.mask_mode, config.min_support
        result.probability, result.observed = _vote_torch(
            points, views, segmentations, weights, mode, config, floor, len(idx), dev, cache
        )
    else:
        masks = {i: _mask_values(segmentations[i], config.mask_mode) for i in idx}
        vis = _visibility(points, views, idx, config.visibility_tolerance, None, cache)
        votes = _vote(len(points), masks, vis, weights, len(idx))
        result.observed = votes.observed
        result.probability = _gate(votes, config.min_support)

    return _conclude(result, config, check_agreement=use_attention)


def fuse_majority_vote(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    """REALM GLSpaG-Global's majority vote over instance hypotheses, adapted to our map.

    REALM reads each view's target instance ID from a learned per-Gaussian instance feature field
    and keeps the ID most views name (``argmax_c |{i: ID_i = c}|``). Our map has no instance field,
    so the instance hypotheses are built from the masks themselves: the map points that some
    trusted view sees inside its mask, split into connected components (points closer than
    ``hypothesis_radius`` are connected). Each view votes for the hypothesis its mask covers most
    (by visible point count); the hypothesis with most votes wins, ties going to the larger summed
    token attention of its voters. Only the winner's voters then vote on the points (equal
    weights): a view that named another instance answers a different question, so its votes, for
    and against, are dropped (its filtered reason says so). The probability is that evidence,
    restricted to the winner's points. Adjacent touching objects merge into one hypothesis, which
    REALM's feature field would have kept apart.

    Views are filtered first, and the token-attention agreement check applies as for
    ``token_attention`` (attention is computed for the tie-break and reported). With a ``device``
    only the depth test runs there; the hypotheses and ballots stay on the host.
    """
    n, nv = len(points), len(views)
    result, idx = _filter_and_weight(n, views, segmentations, config, True, cache)
    if idx.size == 0:
        return result
    reasons = result.filtered_reasons
    attention = result.attention.astype(np.float64)
    masks = {i: _mask_values(segmentations[i], config.mask_mode) for i in idx}
    vis = _visibility(points, views, idx, config.visibility_tolerance, torch_device(device), cache)
    inside = {i: _inside(n, masks[i], vis[i]) for i in idx}
    covered = np.zeros(n, dtype=bool)
    for i in idx:
        covered |= inside[i]
    labels = instance_hypotheses(points, covered, config.hypothesis_radius)
    n_hyp = int(labels.max()) + 1

    ballots = np.full(nv, -1)  # the hypothesis each view voted for (-1: none)
    for i in idx:
        counts = np.bincount(labels[inside[i]], minlength=n_hyp)
        if counts.size and counts.max() > 0:
            ballots[i] = int(np.argmax(counts))
    if (ballots < 0).all():
        result.observed = sum(vis[i][0] for i in idx).astype(np.int32)
        result.not_found_reason = "no trusted view's mask covers a visible map point"
        return result
    tally = np.bincount(ballots[ballots >= 0], minlength=n_hyp)
    mass = np.bincount(ballots[ballots >= 0], weights=attention[ballots >= 0], minlength=n_hyp)
    winner = max(range(n_hyp), key=lambda h: (tally[h], mass[h]))

    voters = ballots == winner
    weights = voters / voters.sum()
    for i in idx:
        if not voters[i]:
            what = f"hypothesis {ballots[i]}" if ballots[i] >= 0 else "no hypothesis"
            reasons[i] = f"voted for {what}, not the majority's hypothesis {winner} ({tally[winner]} votes)"
    result.view_weights = voters.astype(np.float32)
    votes = _vote(n, masks, vis, weights, int(voters.sum()))
    votes.probability[labels != winner] = 0.0
    votes.support[labels != winner] = 0.0
    result.observed = votes.observed
    result.probability = _gate(votes, config.min_support)

    return _conclude(result, config, check_agreement=True)


def _conclude(result: FusionResult, config: FusionConfig, check_agreement: bool) -> FusionResult:
    """The "not found" decision shared by the voting methods; a not-found result carries no probability."""
    if check_agreement and result.agreement < config.min_agreement:
        result.not_found_reason = _disagreement_reason(result.agreement, config.min_agreement)
    elif not result.probability.any():
        result.not_found_reason = _no_support_reason(config.min_support)
    if result.not_found_reason:
        result.probability[:] = 0.0
    return result


def instance_hypotheses(points: np.ndarray, candidate: np.ndarray, radius: float) -> np.ndarray:
    """(N,) int labels: connected components (link distance ``radius``) of the candidate points, -1 elsewhere.

    Components are numbered by decreasing size so that label 0 is the largest hypothesis.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    labels = np.full(len(points), -1, dtype=np.int64)
    idx = np.flatnonzero(candidate)
    if idx.size == 0:
        return labels
    pairs = cKDTree(np.asarray(points, dtype=np.float64)[idx]).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(idx.size, idx.size))
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(-np.bincount(comp), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    labels[idx] = rank[comp]
    return labels


def fuse(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    device: str | None = None,
    cache: FusionCache | None = None,
) -> FusionResult:
    """Dispatch on ``config.method`` (one of :data:`METHODS`); ``device`` as in the module docstring.

    ``cache`` (a :class:`FusionCache`, one per query) lets a second call on the same points with
    more views (REALM's local stage) skip the work already done for the views it has seen.
    """
    from reasoning_seg.backends import FUSION_METHODS

    method = FUSION_METHODS.get(config.method)  # ValueError naming the choices for an unknown one
    return method(points, views, segmentations, config, device=device, cache=cache)


# ---------------------------------------------------------------------------- helpers
def _filter_and_weight(
    n: int,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    config: FusionConfig,
    use_attention: bool,
    cache: FusionCache | None = None,
) -> tuple[FusionResult, np.ndarray]:
    """§3.1 step 1 and 2: drop untrusted views, then weight the rest (token attention or equal).

    Returns the result so far (reasons, attention, alignment, unified embedding, agreement) and the
    indices of the surviving views; with none left, the result already says 'not found'.
    """
    _check_lengths(views, segmentations)
    reasons = [view_filter_reason(s, config, cache) for s in segmentations]
    result = _empty_result(n, len(views), reasons)
    idx = np.array([i for i, r in enumerate(reasons) if not r], dtype=np.int64)
    if idx.size == 0:
        result.not_found_reason = _all_filtered_reason(views, reasons)
        return result, idx
    embs = np.stack([segmentations[i].seg_embedding for i in idx])
    if use_attention:
        conf = np.array([segmentations[i].confidence for i in idx])
        att, align, unified, agreement = token_attention(embs, conf, config.attention_rounds)
    else:  # equal weights; the embedding statistics are only reported
        att = np.full(idx.size, 1.0 / idx.size)
        unified = _unit(att @ _unit_rows(embs))
        align = _unit_rows(embs) @ unified
        agreement = float(att @ align)
    result.attention[idx] = att
    result.alignment[idx] = align
    result.unified_embedding = unified.astype(np.float32)
    result.agreement = agreement
    return result, idx


def _check_lengths(views: Sequence[ViewInput], segmentations: Sequence[ViewSegmentation]) -> None:
    if len(views) != len(segmentations):
        raise ValueError(f"{len(views)} views but {len(segmentations)} segmentations")


def _unit_rows(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


def _inside(n: int, mask: np.ndarray, vis: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(N,) bool: visible in the view and inside its mask (mask value > 0.5)."""
    visible, pix = vis
    out = np.zeros(n, dtype=bool)
    out[visible] = mask[pix[visible]] > 0.5
    return out


def _gate(votes: _Votes, min_support: float) -> np.ndarray:
    """Probability with unsupported points zeroed: a region only distrusted views mark is dropped."""
    return np.where(votes.support >= min_support, votes.probability, 0.0).astype(np.float32)


def _empty_result(n: int, nv: int, reasons: list[str]) -> FusionResult:
    return FusionResult(
        probability=np.zeros(n, np.float32),
        observed=np.zeros(n, np.int32),
        view_weights=np.zeros(nv, np.float32),
        filtered_reasons=reasons,
        attention=np.zeros(nv, np.float32),
        alignment=np.full(nv, np.nan, np.float32),
    )


def _all_filtered_reason(views: Sequence[ViewInput], reasons: list[str]) -> str:
    if not views:
        return "no views to fuse"
    why = "; ".join(f"keyframe {v.keyframe_id}: {r}" for v, r in zip(views, reasons, strict=True))
    return f"every view was filtered out ({why})"


def _disagreement_reason(agreement: float, floor: float) -> str:
    return (
        f"the views do not agree on one object ([SEG] agreement {agreement:.2f} < {floor:.2f}); "
        "the model is probably guessing"
    )


def _no_support_reason(min_support: float) -> str:
    return f"no map point is inside the trusted views' masks with support >= {min_support:g} view(s)"
