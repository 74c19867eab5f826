"""Label-free training losses of MLLM-For3D (§3.2, Eqs. 1-3), over point-view pairs.

Supervision comes from 2D views, so every term is a sum over *pairs* (3D point p, view v) where p
is visible in v and projects to a pixel: the pixel's sampled mask logit from the 2D segmenter
(Eq. 1's target) and the SAM encoder feature at that pixel (Eq. 2's target). A point seen in
several views appears in several pairs. :class:`PointViewPairs` holds them as flat index tensors,
so a batch of several scenes is one set of pairs whose ``point`` indexes the rows of the batched
network output. (The equation bodies are missing from our text copy of the paper; the forms below
are reconstructed from its prose, which names every symbol.)

- Eq. 1, token-for-query alignment: ``L_align = (1/|P|) sum_{(p,v)} BCE(sigmoid(s_p), sigmoid(m_pv))``
  with 3D logit ``s_p = <W h, f_p>`` (:class:`reasoning_seg.net.unet.QueryHead`) and sampled 2D
  logit ``m_pv``: the soft 2D probability is the target, so a confident 2D mask pulls harder than a
  hesitant one. Optional per-pair weights (the views' token-attention weights of §3.1) make it a
  weighted mean ``sum w BCE / sum w``, so a view the fusion distrusts teaches the 3D net less.
- Eq. 2, spatial consistency: ``L_spatial = (1/|S|) sum_{(p,v) in S} (1 - cos(f_p, g_pv))`` over the
  set S of pairs where p is labelled target in v (pixel inside v's 2D mask: ``m_pv > 0`` by
  default), with ``f_p`` the point feature mapped into the SAM space
  (:class:`reasoning_seg.net.unet.SpatialProjection`).
- Eq. 3: ``L = L_align + lambda * L_spatial``. The paper's value of lambda did not survive in our copy
  of the text; 1.0 is our default (both terms are O(1) at initialisation: BCE ~ ln 2, 1 - cos ~ 1).

Empty pair sets give a zero loss that is still connected to the graph (so ``backward`` works on a
batch whose views all missed the target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from torch import Tensor, nn


@dataclass(frozen=True, eq=False)
class PointViewPairs:
    """Point-view correspondences of one batch, flat.

    Attributes:
        point: (M,) int64 row of the 3D point in the network output.
        mask_logit: (M,) 2D segmenter logit sampled at the point's pixel in that view.
        image_feat: (M, C) SAM encoder feature sampled at that pixel, or None (no Eq. 2 term).
        weight: (M,) non-negative per-pair weight (the view's attention weight), or None (uniform).
    """

    point: Tensor
    mask_logit: Tensor
    image_feat: Tensor | None = None
    weight: Tensor | None = None

    def __post_init__(self) -> None:
        m = self.point.shape[0]
        if self.point.dim() != 1 or self.mask_logit.shape != (m,):
            raise ValueError("point and mask_logit must both be (M,)")
        if self.image_feat is not None and (self.image_feat.dim() != 2 or self.image_feat.shape[0] != m):
            raise ValueError("image_feat must be (M, C)")
        if self.weight is not None and self.weight.shape != (m,):
            raise ValueError("weight must be (M,)")


def _zero(like: Tensor) -> Tensor:
    """A 0 that keeps ``like`` in the autograd graph."""
    return like.sum() * 0.0


def balanced_pair_weights(target: Tensor, group: Tensor | None = None, n_groups: int = 1) -> Tensor:
    """Per-pair weights that give each group's target and background mass half of the group's loss.

    Why: in Eq. 1 the pairs of a query are every point visible in its views, and the target is a
    few percent of them, so the plain mean is dominated by background. This is the usual
    class-balanced BCE, not part of the paper's Eq. 1 (``LossConfig.balance_alignment``, off by
    default: on one simulated room, 1200 AdamW steps, it fitted the room worse than the literal
    mean, point IoU 0.26 vs 0.32 against the simulation's truth).

    Args:
        target: (M,) soft targets in [0, 1] (the sampled 2D probabilities).
        group: (M,) group (query) of each pair, or None for one group.
        n_groups: number of groups.

    Returns:
        (M,) weights ``w = t / (2 T) + (1 - t) / (2 B)`` with ``T``, ``B`` the group's target and
        background masses ``sum t``, ``sum (1 - t)``: with hard targets the target pairs and the
        background pairs each carry half of the group's weight.
    """
    t = target.detach().to(torch.float64)
    g = group if group is not None else torch.zeros_like(target, dtype=torch.int64)
    pos = torch.zeros(n_groups, dtype=torch.float64, device=t.device).index_add_(0, g, t)
    neg = torch.zeros(n_groups, dtype=torch.float64, device=t.device).index_add_(0, g, 1.0 - t)
    w = 0.5 * t / pos.clamp_min(1e-12)[g] + 0.5 * (1.0 - t) / neg.clamp_min(1e-12)[g]
    return w.to(target.dtype)


def alignment_loss(
    point_logits: Tensor,
    pair_point: Tensor,
    pair_target: Tensor,
    pair_weight: Tensor | None = None,
    target_is_logit: bool = True,
    balance_group: Tensor | None = None,
    n_groups: int = 1,
) -> Tensor:
    """Token-for-query alignment, Eq. 1: BCE between 3D logits and the paired 2D predictions.

    Args:
        point_logits: (N,) 3D logits ``<W h, f_p>``.
        pair_point: (M,) point row of each pair.
        pair_target: (M,) sampled 2D logits (``target_is_logit``) or probabilities in [0, 1].
        pair_weight: (M,) optional non-negative weights; the loss is then ``sum w BCE / sum w``.
        target_is_logit: whether ``pair_target`` is a logit (sigmoid applied, as Eq. 1 writes it).
        balance_group: (M,) query of each pair: multiply the weights by
            :func:`balanced_pair_weights` per query (None = the plain Eq. 1).
        n_groups: number of queries ``balance_group`` indexes.

    Returns:
        Scalar loss (0, still differentiable, when there are no pairs or all weights are 0).
    """
    if pair_point.numel() == 0:
        return _zero(point_logits)
    target = torch.sigmoid(pair_target) if target_is_logit else pair_target
    bce = F.binary_cross_entropy_with_logits(
        point_logits[pair_point], target.to(point_logits.dtype), reduction="none"
    )
    if balance_group is not None:
        balanced = balanced_pair_weights(target.to(bce.dtype), balance_group, n_groups)
        pair_weight = balanced if pair_weight is None else balanced * pair_weight.to(bce.dtype)
    if pair_weight is None:
        return bce.mean()
    w = pair_weight.to(bce.dtype)
    total = w.sum()
    if float(total) <= 0.0:
        return _zero(point_logits)
    return (w * bce).sum() / total


def spatial_consistency_loss(
    point_feats: Tensor,
    pair_point: Tensor,
    pair_image_feat: Tensor,
    pair_is_target: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Spatial consistency, Eq. 2: mean of ``1 - cos(f_p, g_pv)`` over target-labelled pairs.

    Args:
        point_feats: (N, C) point features already in the image-feature space
            (:class:`reasoning_seg.net.unet.SpatialProjection`).
        pair_point: (M,) point row of each pair.
        pair_image_feat: (M, C) SAM features at the pairs' pixels.
        pair_is_target: (M,) bool, the pairs in S (point labelled target in that view); None = all.
        eps: guards the cosine of a zero vector.

    Returns:
        Scalar loss (0, still differentiable, when S is empty).
    """
    if pair_is_target is not None:
        pair_point = pair_point[pair_is_target]
        pair_image_feat = pair_image_feat[pair_is_target]
    if pair_point.numel() == 0:
        return _zero(point_feats)
    cos = F.cosine_similarity(point_feats[pair_point], pair_image_feat.to(point_feats.dtype), dim=1, eps=eps)
    return (1.0 - cos).mean()


class LossTerms(NamedTuple):
    """Eq. 3's total and its two terms (for logging and the Table 4 ablations)."""

    total: Tensor
    align: Tensor
    spatial: Tensor


class LabelFreeLoss(nn.Module):
    """Eq. 3: ``L = L_align + lambda_spatial * L_spatial``, with switches for the Table 4 ablations.

    Parameter-free: the learned projections live with the model
    (:class:`reasoning_seg.net.unet.QueryHead`, :class:`reasoning_seg.net.unet.SpatialProjection`), so
    a checkpoint of the model is complete without the loss.

    Args:
        lambda_spatial: weight of Eq. 2 (our default 1.0; the paper's value is not in our copy).
        use_alignment: include Eq. 1 (off = Table 4 (b), "w/o Token-for-Query").
        use_spatial: include Eq. 2 (off = Table 4 (c), "w/o Spatial Consistency").
        target_logit_threshold: a pair is in S (Eq. 2) when its 2D logit exceeds this (0 = p > 0.5).
        weight_alignment_pairs: apply the pairs' weights in Eq. 1 when given. Eq. 1 is a plain
            mean; §3.2 aggregates the views' votes "using the attention weights", which this
            carries into the loss (off = the literal Eq. 1).
        balance_alignment: class-balance Eq. 1 per group (:func:`balanced_pair_weights`); needs
            the pairs' groups in :meth:`forward`. Off = the literal Eq. 1.
    """

    def __init__(
        self,
        lambda_spatial: float = 1.0,
        use_alignment: bool = True,
        use_spatial: bool = True,
        target_logit_threshold: float = 0.0,
        weight_alignment_pairs: bool = True,
        balance_alignment: bool = False,
    ) -> None:
        super().__init__()
        if not (use_alignment or use_spatial):
            raise ValueError("at least one loss term must be on")
        self.lambda_spatial = float(lambda_spatial)
        self.use_alignment = use_alignment
        self.use_spatial = use_spatial
        self.target_logit_threshold = float(target_logit_threshold)
        self.weight_alignment_pairs = weight_alignment_pairs
        self.balance_alignment = balance_alignment

    def forward(
        self,
        point_logits: Tensor,
        point_image_feats: Tensor | None,
        pairs: PointViewPairs,
        pair_group: Tensor | None = None,
        n_groups: int = 1,
    ) -> LossTerms:
        """Compute Eq. 3.

        Args:
            point_logits: (N,) 3D logits from :meth:`QueryHead.logits`.
            point_image_feats: (N, C) point features in the SAM space (:class:`SpatialProjection`);
                may be None when ``use_spatial`` is off.
            pairs: the batch's point-view pairs.
            pair_group: (M,) query (scene item) of each pair, for ``balance_alignment``; None = one.
            n_groups: number of groups.

        Returns:
            :class:`LossTerms`; a disabled term is a constant 0 and adds nothing.
        """
        zero = point_logits.new_zeros(())
        align = zero
        spatial = zero
        if self.use_alignment:
            w = pairs.weight if self.weight_alignment_pairs else None
            group = None
            if self.balance_alignment:
                group = pair_group if pair_group is not None else torch.zeros_like(pairs.point)
            align = alignment_loss(point_logits, pairs.point, pairs.mask_logit, w, True, group, n_groups)
        if self.use_spatial:
            if point_image_feats is None or pairs.image_feat is None:
                raise ValueError("spatial consistency needs point_image_feats and pairs.image_feat")
            in_s = pairs.mask_logit > self.target_logit_threshold
            spatial = spatial_consistency_loss(point_image_feats, pairs.point, pairs.image_feat, in_s)
        return LossTerms(align + self.lambda_spatial * spatial, align, spatial)
