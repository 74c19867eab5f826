"""Multi-view fusion (MLLM-For3D §3.1, REALM majority vote) on tiny hand-made scenes.

Every scene here is a wall of depth 2 m in front of cameras that only translate along x (identity
rotation), so which view sees which point, and through which pixel, can be worked out by hand:
u = 50 * (x - camera_x) / 2 + 31.5 for the 64x48 camera below.
"""

from dataclasses import replace

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics, visible_pixels
from reasoning_seg.config import FusionConfig, PipelineConfig
from reasoning_seg.query.fusion import METHODS, fuse, fuse_naive, instance_hypotheses, token_attention
from reasoning_seg.segmenter import ViewInput, ViewSegmentation

INTR = CameraIntrinsics(64, 48, 50.0, 47.0, 32.5, 22.0)  # fx != fy, off-centre: a swap shows
DIM = 16
WALL = 2.0


def pose(x=0.0):
    T = np.eye(4)
    T[0, 3] = x
    return T


def flat_depth(d=WALL):
    return np.full((48, 64), d, np.float32)


def view(x=0.0, depth=None, kid=0):
    return ViewInput(
        kid, np.zeros((48, 64, 3), np.uint8), flat_depth() if depth is None else depth, INTR, pose(x)
    )


def patch(cx, half=0.1, step=0.02):
    """Points of a square patch on the wall centred at (cx, 0)."""
    g = np.arange(-half, half + 1e-9, step)
    xx, yy = np.meshgrid(g + cx, g)
    return np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, WALL)], axis=1)


def mask_of(v, pts):
    """The pixels where ``v`` sees ``pts``, grown by one pixel (a SAM mask of that object)."""
    visible, pix = visible_pixels(pts, v.T_world_cam, v.intrinsics, v.depth, 0.05)
    m = np.zeros(48 * 64, bool)
    m[pix[visible]] = True
    m = m.reshape(48, 64)
    grown = m.copy()
    grown[1:] |= m[:-1]
    grown[:-1] |= m[1:]
    grown[:, 1:] |= grown[:, :-1]
    grown[:, :-1] |= grown[:, 1:]
    return grown


def emb(axis, noise=0.0, seed=0):
    e = np.zeros(DIM)
    e[axis] = 1.0
    e += noise * np.random.default_rng(seed).standard_normal(DIM)
    return e.astype(np.float32)


def seg(mask, conf=0.9, embedding=None, logit=5.0):
    e = emb(0) if embedding is None else embedding
    return ViewSegmentation(np.where(mask, logit, -logit).astype(np.float32), conf, e)


def cfg(method="token_attention", **kw):
    return FusionConfig(method=method, **kw)


# ------------------------------------------------------------------ the vote itself
@pytest.mark.parametrize("method", ["filtered", "token_attention"])
def test_occluded_point_gets_no_vote_from_a_view(method):
    pts = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.5, 0.0, 2.0]])  # in mask, behind wall, off mask
    mask = np.zeros((48, 64), bool)
    mask[20:28, 28:36] = True
    r = fuse(pts, [view()], [seg(mask)], cfg(method))
    assert r.not_found_reason == ""
    assert r.observed.tolist() == [1, 0, 1]
    assert r.probability[0] == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-6)  # sigmoid of the logit
    assert r.probability[1] == 0.0 and r.probability[2] == 0.0


def test_a_visible_point_outside_the_mask_votes_against_and_an_occluded_one_does_not():
    p = np.array([[0.0, 0.0, 2.0]])
    on, off = np.zeros((48, 64), bool), np.zeros((48, 64), bool)
    on[20:28, 28:36] = True  # covers p's pixel (31.5, 23.5) -> (32, 24)
    off[20:28, 2:10] = True  # somewhere else, same area
    binary = cfg(mask_mode="binary")
    # View 2 sees p outside its mask: a vote against, counted in the denominator.
    r = fuse(p, [view(kid=1), view(kid=2)], [seg(on), seg(off)], binary)
    assert r.observed[0] == 2 and r.probability[0] == pytest.approx(0.5)
    # Same masks, but in view 2 a nearer surface hides p: view 2 casts no vote at all.
    occluder = flat_depth()
    occluder[20:28, 28:36] = 1.0
    r = fuse(p, [view(kid=1), view(depth=occluder, kid=2)], [seg(on), seg(off)], binary)
    assert r.observed[0] == 1 and r.probability[0] == pytest.approx(1.0)


# ------------------------------------------------------------------ token attention
def hallucination_scene():
    """Three views agree on patch A; a fourth hallucinates patch B, which only it can see.

    Views 0-2 sit at x = 0 and see A (x = 0) but not B (x = 1.5, u = 69: off the image). View 3
    sits at x = 1 and sees both (A at u = 6.5, B at u = 44); its mask and [SEG] embedding are
    those of B.
    """
    a, b = patch(0.0), patch(1.5)
    pts = np.vstack([a, b])
    views = [view(x, kid=k) for k, x in enumerate([0.0, 0.0, 0.0, 1.0])]
    segs = [seg(mask_of(views[k], a), conf=0.9, embedding=emb(0, 0.05, seed=k)) for k in range(3)]
    segs.append(seg(mask_of(views[3], b), conf=0.95, embedding=emb(1, 0.05, seed=3)))
    return pts, np.arange(len(pts)) < len(a), views, segs


def test_a_hallucinating_view_is_down_weighted_and_its_region_dropped():
    pts, is_a, views, segs = hallucination_scene()
    r = fuse(pts, views, segs, cfg())
    assert r.not_found_reason == ""
    assert r.attention.sum() == pytest.approx(1.0)
    assert r.attention[3] < 0.08 and r.attention[3] < r.attention[:3].min() / 4  # from 1/4 of the weight
    assert r.alignment[:3].min() > 0.95 and r.alignment[3] < 0.2
    assert r.probability[is_a].min() > 0.9  # the agreed target, with view 3's 'no' votes discounted
    assert r.probability[~is_a].max() < 0.5  # the hallucinated patch stays below threshold
    # Naive unprojection marks the hallucinated patch (only view 3 sees it), and so does equal
    # weighting after filtering: the token attention is what removes it.
    naive = fuse(pts, views, segs, cfg("naive"))
    assert naive.probability[~is_a].min() >= 0.5
    assert fuse(pts, views, segs, cfg("filtered")).probability[~is_a].min() >= 0.5
    # The unified embedding is the agreeing views' object.
    # (Measured 0.991 with attention < 0.08 on the dissenter; equal weights would give
    # 0.75 / sqrt(0.75^2 + 0.25^2) = 0.95.)
    assert r.unified_embedding is not None and r.unified_embedding[0] > 0.97


def test_more_attention_rounds_suppress_the_dissenter_harder():
    embs = np.stack([emb(0), emb(0), emb(0), emb(1)])
    conf = np.full(4, 0.9)
    w = [token_attention(embs, conf, rounds)[0][3] for rounds in (1, 2, 3, 6)]
    assert w[0] == pytest.approx(np.sqrt(1 / 10) / (3 * np.sqrt(9 / 10) + np.sqrt(1 / 10)))  # from the mean
    assert all(x > y for x, y in zip(w, w[1:], strict=False)) and w[-1] < 1e-3


def test_attention_sums_to_one_and_filtered_views_get_none():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = int(rng.integers(1, 8))
        a, s, u, agreement = token_attention(rng.standard_normal((k, DIM)), rng.uniform(0.1, 1, k), 3)
        assert a.sum() == pytest.approx(1.0) and (a >= 0).all()
        assert np.linalg.norm(u) == pytest.approx(1.0) and agreement == pytest.approx(a @ s)
    pts, _, views, segs = hallucination_scene()
    segs[1].confidence = 0.1  # below the default floor
    for method in METHODS:
        r = fuse(pts, views, segs, cfg(method))
        assert r.attention.sum() == pytest.approx(1.0), method
        assert r.attention[1] == 0.0 and r.view_weights[1] == 0.0 and "confidence" in r.filtered_reasons[1]


# ------------------------------------------------------------------ not found
def test_every_view_filtered_is_not_found_with_the_reasons():
    pts = patch(0.0)
    tiny = np.zeros((48, 64), bool)
    tiny[24, 32] = True
    views = [view(kid=7), view(kid=8)]
    for method in ("filtered", "token_attention", "majority_vote"):
        r = fuse(pts, views, [seg(mask_of(views[0], pts), conf=0.05), seg(tiny)], cfg(method))
        assert "every view was filtered out" in r.not_found_reason
        assert (
            "keyframe 7: confidence 0.05" in r.not_found_reason
            and "keyframe 8: mask area 1 px" in r.not_found_reason
        )
        assert not r.probability.any() and r.unified_embedding is None


def test_views_that_disagree_about_the_object_are_not_found():
    # Four views mark the same patch but each names a different object: the model is guessing.
    pts = patch(0.0)
    views = [view(kid=k) for k in range(4)]
    segs = [seg(mask_of(views[k], pts), embedding=emb(k)) for k in range(4)]
    strict = {"min_agreement": 0.65}
    for method in ("token_attention", "majority_vote"):
        r = fuse(pts, views, segs, replace(cfg(method), **strict))
        assert r.agreement == pytest.approx(0.5)  # 1/sqrt(4)
        assert "do not agree" in r.not_found_reason and not r.probability.any()
    # Five views on five objects fall below the default floor (1/sqrt(5) = 0.45 < 0.5).
    five_views = [view(kid=k) for k in range(5)]
    five = [seg(mask_of(five_views[k], pts), embedding=emb(k)) for k in range(5)]
    r = fuse(pts, five_views, five, cfg())
    assert r.agreement == pytest.approx(5**-0.5) and "do not agree" in r.not_found_reason
    # Three views, unequal confidences: the attention drifts towards the most confident one, still
    # not far enough to call it a consensus at the stricter floor.
    three = [seg(mask_of(views[k], pts), conf=c, embedding=emb(k)) for k, c in enumerate([0.9, 0.8, 0.7])]
    r = fuse(pts, views[:3], three, replace(cfg(), **strict))
    assert 0.58 < r.agreement < 0.65 and "do not agree" in r.not_found_reason
    # The ablations without token attention have no such check and mark the patch.
    assert fuse(pts, views, segs, cfg("filtered")).probability.min() > 0.9
    # Agreeing embeddings on the same masks: found.
    same = [seg(mask_of(views[k], pts), embedding=emb(0, 0.05, seed=k)) for k in range(4)]
    r = fuse(pts, views, same, cfg())
    assert r.not_found_reason == "" and r.agreement > 0.95


def test_masks_that_cover_no_map_point_are_not_found():
    pts = patch(0.0)
    sky = np.zeros((48, 64), bool)
    sky[0:8, 0:8] = True  # a confident mask where the map has no points
    views = [view(kid=k) for k in range(2)]
    for method in ("filtered", "token_attention", "majority_vote"):
        r = fuse(pts, views, [seg(sky), seg(sky)], cfg(method))
        assert r.not_found_reason and "mask" in r.not_found_reason, method
        assert not r.probability.any() and r.observed.max() == 2


# ------------------------------------------------------------------ majority vote (REALM)
def majority_scene(conf_a, conf_c):
    """Patches A (x=0), C (x=-0.5) seen by views at x=0; B (x=1.5) seen only by the view at x=1."""
    a, c, b = patch(0.0), patch(-0.5), patch(1.5)
    pts = np.vstack([a, c, b])
    label = np.repeat([0, 1, 2], [len(a), len(c), len(b)])
    views = [view(x, kid=k) for k, x in enumerate([0.0, 0.0, 0.0, 0.0, 1.0])]
    return pts, label, views, a, c, b


def test_majority_vote_keeps_the_hypothesis_most_views_pick():
    pts, label, views, a, c, b = majority_scene(0.6, 0.99)
    segs = [
        seg(mask_of(views[0], a), conf=0.6),
        seg(mask_of(views[1], a), conf=0.6),
        seg(mask_of(views[2], a), conf=0.6),
        seg(mask_of(views[3], c), conf=0.99),  # more confident, but alone
        seg(mask_of(views[4], b), conf=0.99),  # alone, and the only view that sees B
    ]
    r = fuse(pts, views, segs, cfg("majority_vote"))
    assert r.not_found_reason == ""
    assert r.probability[label == 0].min() > 0.9
    assert not r.probability[label != 0].any()
    assert r.view_weights.tolist() == [1, 1, 1, 0, 0]
    assert all("voted for hypothesis" in why for why in r.filtered_reasons[3:])
    # Token attention alone would keep B (only view 4 sees it, and its embedding agrees).
    assert fuse(pts, views, segs, cfg()).probability[label == 2].min() > 0.5


def test_majority_vote_ties_go_to_the_more_trusted_views():
    pts, label, views, a, c, _ = majority_scene(0.6, 0.9)
    segs = [seg(mask_of(views[k], a), conf=0.6) for k in range(2)]
    segs += [seg(mask_of(views[k], c), conf=0.9) for k in range(2, 4)]
    r = fuse(pts, views[:4], segs, cfg("majority_vote"))
    assert r.probability[label == 1].min() > 0.9 and not r.probability[label == 0].any()


def test_instance_hypotheses_are_connected_components_largest_first():
    small, big = patch(0.0, half=0.04), patch(1.0)
    pts = np.vstack([small, big, [[5.0, 5.0, 5.0]]])
    cand = np.ones(len(pts), bool)
    cand[-1] = False
    labels = instance_hypotheses(pts, cand, radius=0.03)
    assert set(labels[: len(small)]) == {1} and set(labels[len(small) : -1]) == {0} and labels[-1] == -1


# ------------------------------------------------------------------ dispatch and config
def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown fusion method 'magic'"):
        fuse(patch(0.0), [view()], [seg(np.ones((48, 64), bool))], FusionConfig(method="magic"))
    with pytest.raises(ValueError):
        PipelineConfig().update({"fusion.method": "magic"})
    assert FusionConfig().method == "token_attention"
    for m in METHODS:
        PipelineConfig().update({"fusion.method": m})


def test_naive_is_unchanged_by_the_new_knobs():
    pts, is_a, views, segs = hallucination_scene()
    base = fuse_naive(pts, views, segs, FusionConfig(min_confidence=0.0, min_mask_pixels=0))
    other = fuse(pts, views, segs, cfg("naive", mask_mode="probability", min_agreement=1.0, min_support=9.0))
    np.testing.assert_array_equal(base.probability, other.probability)
    assert set(np.unique(base.probability)) <= {0.0, 0.75, 1.0}  # binary votes, unweighted
    assert base.not_found_reason == "" and base.view_weights.tolist() == [1, 1, 1, 1]


# ------------------------------------------------------------------ through the pipeline
class ScriptedSegmenter:
    """A hand-scripted stand-in for the 2D model: every view segments the wall patch x in [0.3, 0.7].

    ``embedding(i)`` and ``confidence(i)`` give the i-th view's [SEG] embedding and confidence, so a
    test decides whether the views agree.
    """

    name = "scripted"
    embedding_dim = DIM

    def __init__(self, embedding, confidence):
        self.embedding, self.confidence = embedding, confidence

    def segment(self, views, query):
        out = []
        for i, v in enumerate(views):
            x_world = v.T_world_cam[0, 3] + (np.arange(64) - INTR.cx) / INTR.fx * WALL
            y_world = (np.arange(48) - INTR.cy) / INTR.fy * WALL
            mask = (np.abs(y_world)[:, None] < 0.2) & (np.abs(x_world - 0.5)[None, :] < 0.2)
            out.append(seg(mask, conf=self.confidence(i), embedding=self.embedding(i)))
        return out


def wall_pipeline(segmenter, **overrides):
    from reasoning_seg.mapping.frames import RGBDFrame
    from reasoning_seg.pipeline import ReasoningSegPipeline

    config = PipelineConfig()
    config.update({"map.voxel_size": 0.04, "keyframes.min_translation": 0.1, **overrides})
    pipe = ReasoningSegPipeline(config, segmenter)
    for k, x in enumerate([0.0, 0.2, 0.4, 0.6]):
        color = np.full((48, 64, 3), 128, np.uint8)
        # 2.01, not 2.0: a wall exactly on a voxel boundary has no TSDF zero crossing to extract.
        pipe.add_frame(RGBDFrame(color, flat_depth(2.01), INTR, pose(x), stamp=k / 30, frame_id=k))
    return pipe


def test_pipeline_reports_attention_and_names_the_method():
    pipe = wall_pipeline(ScriptedSegmenter(lambda i: emb(0, 0.05, seed=i), lambda i: 0.9))
    r = pipe.query("the patch")
    assert r.success and r.found, r.message
    assert r.method == "fusion:token_attention" and len(r.view_reports) == 4
    assert sum(v["attention"] for v in r.view_reports) == pytest.approx(1.0)
    assert all(v["alignment"] > 0.9 for v in r.view_reports)
    assert np.abs(r.points[:, 0] - 0.5).max() < 0.25  # the scripted patch, not the whole wall


def test_pipeline_says_not_found_with_fusions_reason():
    # Four views on four objects score exactly the default floor (1/sqrt(4)); a stricter one rejects them.
    strict = {"fusion.min_agreement": 0.65}
    disagree = wall_pipeline(ScriptedSegmenter(lambda i: emb(i), lambda i: 0.9), **strict)
    r = disagree.query("the patch")
    assert r.success and not r.found and r.message.startswith("not found: the views do not agree")
    assert len(r.points) == 0
    unsure = wall_pipeline(ScriptedSegmenter(lambda i: emb(0), lambda i: 0.1))
    r = unsure.query("the patch")
    assert r.success and not r.found and r.message.startswith("not found: every view was filtered out")
    naive = wall_pipeline(ScriptedSegmenter(lambda i: emb(i), lambda i: 0.9), **{"fusion.method": "naive"})
    r = naive.query("the patch")
    assert r.found and r.method == "fusion:naive"  # the baseline has no agreement check
