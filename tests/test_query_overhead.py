"""The batched torch path of view selection and fusion gives the numpy path's answers (issue 8).

Runs on CPU (torch's CPU device) and, where one is present, on CUDA. The scene is the SIMULATED
corridor of :mod:`reasoning_seg.io.synthetic_stream` at 160x120: its depth images, the world points they
unproject to (plus points hidden behind walls and behind the cameras) and red-pixel masks.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reasoning_seg.pipeline as pipeline_module  # noqa: E402
import reasoning_seg.query.fusion as fusion_module  # noqa: E402
import reasoning_seg.query.fusion_torch as fusion_torch_module  # noqa: E402
import reasoning_seg.query.view_selection as view_selection_module  # noqa: E402
from reasoning_seg.camera import (  # noqa: E402
    CameraIntrinsics,
    invert_transform,
    transform_points,
    visible_pixels,
)
from reasoning_seg.config import FusionConfig, PipelineConfig, ViewSelectionConfig  # noqa: E402
from reasoning_seg.io.synthetic_stream import CorridorStream  # noqa: E402
from reasoning_seg.mapping.keyframes import KeyframeWindow  # noqa: E402
from reasoning_seg.mapping.torch_tsdf import TRUNCATED, TorchBlockGrid  # noqa: E402
from reasoning_seg.mapping.voxel_map import MapSurface  # noqa: E402
from reasoning_seg.pipeline import ReasoningSegPipeline  # noqa: E402
from reasoning_seg.query.fusion import (  # noqa: E402
    METHODS,
    FusionCache,
    fuse,
    torch_device,
    view_filter_reason,
    visible_pixels_torch,
)
from reasoning_seg.query.fusion_torch import DEVICE_ARRAYS  # noqa: E402
from reasoning_seg.query.result import dbscan_labels, largest_cluster, package_result  # noqa: E402
from reasoning_seg.query.view_selection import coverage, kmeans, select_local_views, select_views  # noqa: E402
from reasoning_seg.segmenter import ViewInput, ViewSegmentation  # noqa: E402

INTR = CameraIntrinsics(160, 120, 131.25, 131.25, 79.5, 59.5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DIM = 16


@pytest.fixture(scope="module")
def frames():
    stream = CorridorStream(INTR)
    return [stream[i] for i in range(0, 240, 8)]


@pytest.fixture(scope="module")
def points(frames):
    """World points seen by the frames, points occluded behind walls, and points behind the cameras."""
    rng = np.random.default_rng(0)
    chunks = []
    for f in frames[::3]:
        cam, _ = f.intrinsics.unproject(f.depth)
        chunks.append(transform_points(f.T_world_cam, cam[::7]))
    surface = np.concatenate(chunks)
    surface += rng.normal(scale=0.01, size=surface.shape)  # some fall outside the depth tolerance
    hidden = surface[::5] + [0.0, 0.0, 0.0] + rng.normal(scale=0.5, size=(len(surface[::5]), 3))
    return np.concatenate([surface, hidden])


def red_mask(color: np.ndarray) -> np.ndarray:
    c = color.astype(np.int16)
    return (c[..., 0] > 100) & (c[..., 0] > 2 * c[..., 1])


def views_and_segs(frames, hallucinating: bool = True):
    """Views with soft red-pixel masks: one unsure view, and (optionally) one naming another object."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=DIM)
    other = rng.normal(size=DIM)
    views, segs = [], []
    for k, f in enumerate(frames[::4]):
        views.append(ViewInput(k, f.color, f.depth, f.intrinsics, f.T_world_cam))
        logits = np.where(red_mask(f.color), 3.0, -3.0) + rng.normal(scale=2.0, size=f.depth.shape)
        emb = (other if hallucinating and k == 2 else target) + rng.normal(scale=0.1, size=DIM)
        conf = 0.2 if k == 4 else 0.9
        segs.append(ViewSegmentation(logits.astype(np.float32), conf, emb.astype(np.float32)))
    return views, segs


@pytest.mark.parametrize("device", DEVICES)
def test_batched_depth_test_equals_the_per_view_numpy_one(frames, points, device):
    dev = torch.device(device)
    small = INTR.scaled(80, 60)  # mixed resolutions share one flat depth buffer
    cams = [(f.T_world_cam, f.intrinsics, f.depth) for f in frames[:5]]
    cams.append((frames[5].T_world_cam, small, frames[5].depth[::2, ::2].copy()))
    depth = frames[6].depth.copy()
    depth[::3] = np.nan  # missing readings are no evidence
    depth[1::3] = 0.0
    cams.append((frames[6].T_world_cam, frames[6].intrinsics, depth))
    visible, flat, z = visible_pixels_torch(points, cams, 0.05, dev)
    for j, (T, k, d) in enumerate(cams):
        vis_np, flat_np = visible_pixels(points, T, k, d, 0.05)
        # Same float64 operations; they may differ only where a projection lands within a rounding
        # error of a pixel border (or a depth difference of the tolerance): allow exactly those.
        differ = (visible[j].cpu().numpy() != vis_np) | (flat[j].cpu().numpy() != flat_np)
        assert differ.sum() <= max(2, 1e-4 * len(points)), differ.sum()
        if differ.any():
            uv, zc = k.project(transform_points(invert_transform(T), points[differ]))
            border = np.abs(uv - np.floor(uv) - 0.5).min(axis=1) < 1e-6
            pix = np.round(uv).astype(np.int64)
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < k.width) & (pix[:, 1] >= 0) & (pix[:, 1] < k.height)
            dd = np.full(len(zc), np.inf)
            dd[inside] = np.asarray(d, np.float64)[pix[inside, 1], pix[inside, 0]]
            edge = np.abs(np.abs(dd - zc) - 0.05) < 1e-6
            assert np.all(border | edge), (uv, zc, dd)
    assert visible.any(1).all() and not visible.all()  # the scene exercises both outcomes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask_mode", ["probability", "binary"])
def test_fusion_on_a_device_gives_the_numpy_result(frames, points, device, method, mask_mode):
    views, segs = views_and_segs(frames)
    cfg = FusionConfig(method=method, mask_mode=mask_mode, min_agreement=0.3)
    ref = fuse(points, views, segs, cfg)
    out = fuse(points, views, segs, cfg, device=device)
    assert ref.not_found_reason == "" and ref.probability.max() > 0.5, "the case must find the target"
    np.testing.assert_array_equal(out.observed, ref.observed)
    np.testing.assert_allclose(out.probability, ref.probability, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.view_weights, ref.view_weights)
    np.testing.assert_array_equal(out.attention, ref.attention)
    assert out.filtered_reasons == ref.filtered_reasons
    assert out.not_found_reason == ref.not_found_reason


def test_not_found_is_the_same_on_both_paths(frames, points):
    views, segs = views_and_segs(frames)
    segs = [ViewSegmentation(np.full_like(s.mask_logits, -5.0), 0.9, s.seg_embedding) for s in segs]
    cfg = FusionConfig(min_mask_pixels=0, min_agreement=0.0)
    ref, out = fuse(points, views, segs, cfg), fuse(points, views, segs, cfg, device="cpu")
    assert ref.not_found_reason and out.not_found_reason == ref.not_found_reason
    assert not out.probability.any()


@pytest.mark.parametrize("device", DEVICES)
def test_view_selection_on_a_device_picks_the_same_views(frames, points, device):
    window = KeyframeWindow(PipelineConfig().keyframes)
    for f in frames:
        window.add(f)
    kfs = window.snapshot()
    assert len(kfs) > 8
    np.testing.assert_array_equal(coverage(kfs, points, 0.05, device=device), coverage(kfs, points, 0.05))
    for max_points in (500, 10**6):  # subsampled (hash on the device) and whole
        cfg = ViewSelectionConfig(max_points=max_points)
        ids = [k.keyframe_id for k in select_views(kfs, points, 4, cfg, 0.05)]
        assert [k.keyframe_id for k in select_views(kfs, points, 4, cfg, 0.05, device=device)] == ids
    candidate = points[np.linalg.norm(points[:, :2] - points[0, :2], axis=1) < 0.8]
    ref = select_local_views(kfs, candidate, 3, {kfs[0].keyframe_id}, 0.05)
    out = select_local_views(kfs, candidate, 3, {kfs[0].keyframe_id}, 0.05, device=device)
    assert ref and [k.keyframe_id for k in out] == [k.keyframe_id for k in ref]


def test_device_names():
    assert torch_device(None) is None and torch_device("numpy") is None and torch_device("") is None
    assert torch_device("CPU:0") == torch.device("cpu:0")
    assert torch_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else None)


def test_device_copies_are_reused_and_die_with_their_array():
    meta = torch.device("meta")  # a non-CPU device on every machine: copies, like CUDA
    a = np.arange(12, dtype=np.float64).reshape(4, 3)
    t1 = DEVICE_ARRAYS.get(a, meta, torch.float64)
    assert DEVICE_ARRAYS.get(a, meta, torch.float64) is t1
    assert DEVICE_ARRAYS.get(a.copy(), meta, torch.float64) is not t1  # identity, not contents
    before = len(DEVICE_ARRAYS._entries)
    del a
    gc.collect()
    assert len(DEVICE_ARRAYS._entries) == before - 1


def test_on_the_cpu_the_tensor_is_the_array_and_nothing_is_kept():
    a = np.arange(12, dtype=np.float64).reshape(4, 3)
    before = len(DEVICE_ARRAYS._entries)
    t = DEVICE_ARRAYS.get(a, torch.device("cpu"), torch.float64)
    assert t.data_ptr() == a.ctypes.data and len(DEVICE_ARRAYS._entries) == before


class RedSegmenter:
    """A SIMULATED 2D model: red pixels are the target."""

    name = "simulated-red"
    embedding_dim = DIM

    def segment(self, views, query):
        e = np.ones(DIM, np.float32) / np.sqrt(DIM)
        return [
            ViewSegmentation(np.where(red_mask(v.color), 4.0, -4.0).astype(np.float32), 0.9, e) for v in views
        ]


@pytest.fixture(scope="module")
def corridor_pipe():
    cfg = PipelineConfig()
    cfg.map.voxel_size = 0.05
    cfg.map.backend = "torch"
    cfg.map.device = "cpu"
    cfg.segmenter.embedding_dim = DIM
    pipe = ReasoningSegPipeline(cfg, RedSegmenter())
    for f in CorridorStream(INTR).frames(120):
        pipe.add_frame(f)
    return pipe


@pytest.mark.parametrize("device", DEVICES)
def test_a_pipeline_query_is_the_same_with_the_stages_on_a_device(corridor_pipe, device, monkeypatch):
    pipe = corridor_pipe
    monkeypatch.setattr(pipe.config.fusion, "device", "numpy")
    ref = pipe.query("the red box", num_views=4)
    monkeypatch.setattr(pipe.config.fusion, "device", device)
    calls = []
    monkeypatch.setattr(pipeline_module, "fuse", lambda *a, **k: calls.append(k) or fuse(*a, **k))
    out = pipe.query("the red box", num_views=4)
    assert [k["device"] for k in calls] == [device, device]  # the stages really ran on the device
    assert ref.found and len(ref.keyframe_ids) > 4  # the local stage ran
    assert out.keyframe_ids == ref.keyframe_ids
    np.testing.assert_array_equal(out.points, ref.points)
    np.testing.assert_allclose(out.point_confidence, ref.point_confidence, rtol=0, atol=1e-6)
    assert [r["mask_pixels"] for r in out.view_reports] == [r["mask_pixels"] for r in ref.view_reports]
    assert out.view_reports[0]["mask_pixels"] > 0


# ---------------------------------------------------------------------------- the second fusion pass
@pytest.mark.parametrize("device", [None, *DEVICES])
@pytest.mark.parametrize("method", METHODS)
def test_a_second_fusion_pass_only_tests_the_new_views(frames, points, device, method, monkeypatch):
    """REALM's local stage fuses the global views, then all: the cache skips the repeated depth tests."""
    views, segs = views_and_segs(frames, hallucinating=False)
    cfg = FusionConfig(method=method, min_agreement=0.3)
    first, more = slice(0, 4), slice(0, len(views))
    ref = [fuse(points, views[s], segs[s], cfg, device=device) for s in (first, more)]
    tested = []  # cameras each depth test ran for
    if device is None:
        numpy_test = fusion_module.visible_pixels
        monkeypatch.setattr(fusion_module, "visible_pixels", lambda *a: tested.append(1) or numpy_test(*a))
    else:
        batched = fusion_torch_module.visible_pixels_torch
        counted = lambda p, c, *a: tested.append(len(c)) or batched(p, c, *a)  # noqa: E731
        # Both callers: fusion's visibility test and the batched vote of fusion_torch.
        monkeypatch.setattr(fusion_module, "visible_pixels_torch", counted)
        monkeypatch.setattr(fusion_torch_module, "visible_pixels_torch", counted)
    cache = FusionCache()
    out = []
    for s in (first, more):
        tested.clear()
        out.append(fuse(points, views[s], segs[s], cfg, device=device, cache=cache))
    trusted_new = sum(not view_filter_reason(s, cfg) for s in segs[4:])  # (one new view is unsure)
    assert sum(tested) == trusted_new > 0  # the second pass tested only the views the first had not
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_array_equal(o.probability, r.probability)
        np.testing.assert_array_equal(o.observed, r.observed)
        assert o.filtered_reasons == r.filtered_reasons and o.not_found_reason == r.not_found_reason
    assert out[1].probability.max() > 0.5


def test_the_fusion_cache_starts_over_for_other_points(frames, points):
    views, segs = views_and_segs(frames, hallucinating=False)
    cfg = FusionConfig(min_agreement=0.3)
    cache = FusionCache()
    fuse(points, views, segs, cfg, device="cpu", cache=cache)
    moved = points + [0.0, 0.0, 0.3]  # another snapshot: nothing of the first may be reused
    out = fuse(moved, views, segs, cfg, device="cpu", cache=cache)
    ref = fuse(moved, views, segs, cfg)
    np.testing.assert_allclose(out.probability, ref.probability, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out.observed, ref.observed)
    assert cache.mask_pixels(segs[0]) == np.count_nonzero(segs[0].mask)


# ---------------------------------------------------------------------------- device buffers
def test_the_depth_atlas_keeps_the_window_and_uploads_only_new_images():
    atlas = fusion_torch_module._DepthAtlas(max_images=4)
    rng = np.random.default_rng(3)
    imgs = [rng.random((6, 8)).astype(np.float32) for _ in range(5)]
    cpu = torch.device("cpu")

    def check(buffer, offsets, arrays):
        for off, a in zip(offsets, arrays, strict=True):
            np.testing.assert_array_equal(buffer[off : off + a.size].numpy(), a.reshape(-1))

    buf, offs = atlas.locate(imgs[:3], cpu)
    check(buf, offs, imgs[:3])
    again, offs2 = atlas.locate([imgs[2], imgs[0]], cpu)  # a subset, in another order: no rebuild
    assert again is buf and offs2 == [offs[2], offs[0]]
    grown, offs3 = atlas.locate([imgs[3]], cpu)  # a new image: rebuilt, the others kept
    assert grown is not buf
    check(grown, offs3, [imgs[3]])
    kept, offs4 = atlas.locate(imgs[:4], cpu)
    assert kept is grown
    check(kept, offs4, imgs[:4])
    wide = np.arange(12, dtype=np.float64).reshape(3, 4)  # float64 widens the whole buffer, exactly
    mixed, offs5 = atlas.locate([wide, imgs[4]], cpu)
    assert mixed.dtype == torch.float64 and mixed.numel() <= 4 * 48  # at most max_images kept
    check(mixed, offs5, [wide, imgs[4]])
    before = len(atlas._where)
    del wide
    gc.collect()
    assert len(atlas._where) == before - 1  # a dead image's entry goes with it


def test_a_device_copy_can_be_declared_instead_of_uploaded():
    meta = torch.device("meta")
    a = np.zeros((5, 3))
    t = torch.empty((5, 3), dtype=torch.float64, device=meta)
    DEVICE_ARRAYS.put(a, t)
    assert DEVICE_ARRAYS.get(a, meta, torch.float64) is t
    assert DEVICE_ARRAYS.get(a, meta, torch.float32) is not t  # another dtype is another copy
    b = np.zeros((5, 3))
    DEVICE_ARRAYS.put(b, torch.from_numpy(b))  # a CPU tensor is the array itself: nothing to keep
    assert DEVICE_ARRAYS.get(b, torch.device("cpu"), torch.float64).data_ptr() == b.ctypes.data


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cuda_0_share_device_copies():
    a = np.ones((4, 3))
    assert DEVICE_ARRAYS.get(a, torch.device("cuda"), torch.float64) is DEVICE_ARRAYS.get(
        a, torch.device(f"cuda:{torch.cuda.current_device()}"), torch.float64
    )


# ---------------------------------------------------------------------------- surface extraction
def surface_reference(grid: TorchBlockGrid, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The zero-crossing rule of torch_tsdf, restated voxel by voxel in numpy (float32 like the grid)."""
    ex = grid.export()
    coords, tsdf, weight, color = ex["block_coords"].astype(np.int64), ex["tsdf"], ex["weight"], ex["color"]
    row = {tuple(c): i for i, c in enumerate(coords)}
    i = np.arange(512)
    local = np.stack([i % 8, (i // 8) % 8, i // 64], axis=1)
    vs = np.float32(grid.voxel_size)
    pts, cols = [], []
    for axis in range(3):
        for b, c in enumerate(coords):
            nb_local = local.copy()
            nb_local[:, axis] += 1
            edge = nb_local[:, axis] == 8
            nb_local[edge, axis] = 0
            step = np.eye(3, dtype=np.int64)[axis]
            nb_row = np.where(edge, row.get(tuple(c + step), -1), b)
            nb_flat = nb_local[:, 0] + 8 * nb_local[:, 1] + 64 * nb_local[:, 2]
            ok = nb_row >= 0
            t0, w0 = tsdf[b], weight[b]
            t1 = np.where(ok, tsdf[nb_row, nb_flat], 0.0)
            w1 = np.where(ok, weight[nb_row, nb_flat], 0.0)
            hit = ok & (w0 > min_weight) & (w1 > min_weight) & (t0 * t1 < 0)
            hit &= (np.abs(t0) < TRUNCATED) & (np.abs(t1) < TRUNCATED)
            for v in np.flatnonzero(hit):
                r = t0[v] / (t0[v] - t1[v])
                p = (c * 8 + local[v]).astype(np.float32) * vs
                p[axis] += r * vs
                c0, c1 = color[b, v], color[nb_row[v], nb_flat[v]]
                pts.append(p)
                cols.append(np.clip((c0 + r * (c1 - c0)) / np.float32(255.0), 0, 1))
    return np.array(pts, dtype=np.float64).reshape(-1, 3), np.array(cols, dtype=np.float32).reshape(-1, 3)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_batched_surface_extraction_follows_the_zero_crossing_rule(frames):
    grid = TorchBlockGrid(0.1, 3.0, 4.0)
    for f in frames[:4]:
        grid.integrate(f.depth, f.color, f.intrinsics.K, f.T_world_cam)
    for step in ("integrated", "more blocks", "blocks erased"):
        if step == "more blocks":  # new blocks: the cached block topology must be rebuilt
            for f in frames[4:8]:
                grid.integrate(f.depth, f.color, f.intrinsics.K, f.T_world_cam)
        if step == "blocks erased":
            grid.erase_blocks(grid.block_coords()[::5])
        for min_weight in (0.0, 1.0):
            pts, cols = grid.extract(min_weight)
            ref_pts, ref_cols = surface_reference(grid, min_weight)
            assert len(pts) > 100 and len(pts) == len(ref_pts), step
            both = sorted_rows(np.hstack([pts, cols]))
            np.testing.assert_allclose(both, sorted_rows(np.hstack([ref_pts, ref_cols])), rtol=0, atol=1e-6)
            np.testing.assert_array_equal(both[:, :3], sorted_rows(ref_pts))  # positions: bit for bit
    dev = grid.device_points(pts)
    assert dev.dtype == torch.float64 and np.array_equal(dev.numpy(), pts)
    assert grid.device_points(pts.copy()) is None  # only the array the grid handed out


# ---------------------------------------------------------------------------- packaging, view selection
def test_dbscan_labels_are_open3d_s():
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(5)
    for trial in range(40):
        blobs = [
            rng.normal(rng.uniform(-1, 1, 3), rng.uniform(0.02, 0.2), size=(rng.integers(5, 200), 3))
            for _ in range(rng.integers(1, 5))
        ]
        p = rng.permutation(np.concatenate([*blobs, rng.uniform(-1.5, 1.5, (rng.integers(0, 60), 3))]))
        if trial % 2:  # points on a 2 cm lattice with eps = 2 cm: distances exactly at the radius
            p = rng.permutation(np.unique((np.round(p / 0.02) * 0.02).astype(np.float32), axis=0))
            p = p.astype(np.float64)
        eps, min_points = float(rng.choice([0.02, 0.05, 0.1])), int(rng.integers(2, 10))
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        expected = np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_points))
        np.testing.assert_array_equal(dbscan_labels(p, eps, min_points), expected)
    line = np.c_[np.arange(5.0), np.zeros(5), np.zeros(5)]  # spacing exactly eps: not neighbours
    assert (dbscan_labels(line, 1.0, 2) == -1).all()
    assert largest_cluster(line, 1.0, 2).all()  # no cluster: everything is kept


def test_dbscan_labels_by_hand():
    """Open3D's DBSCAN definition on points whose labels are derived by hand (no Open3D needed).

    Coordinates are binary fractions, so "exactly eps apart" is exact. eps 0.25, min_points 3 (a
    point counts itself). Along x: B = 5.0, 5.125, 5.25 (listed first, so it is cluster 0): 5.125 has
    3 neighbours (core); 5.0 and 5.25 are exactly eps apart, not neighbours (strict), so they have 2
    (border, they join B). A = 0.0 .. 0.375 in steps of 0.125: 0.125 and 0.25 core, 0.0 and 0.375
    border. 0.625 is exactly eps from 0.375: noise. 10.0 and 2.0 / 2.375: noise.
    """
    x = [5.0, 5.125, 5.25, 0.0, 0.125, 0.25, 0.375, 0.625, 10.0, 2.0, 2.375]
    p = np.c_[np.array(x), np.zeros(len(x)), np.zeros(len(x))]
    np.testing.assert_array_equal(dbscan_labels(p, 0.25, 3), [0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1])
    # min_points 2: every point with one neighbour is core; still nothing links across exactly eps.
    np.testing.assert_array_equal(dbscan_labels(p, 0.25, 2), [0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1])
    # eps 0.5: 0.625 joins A, and 2.0 / 2.375 (0.375 apart) form cluster 2.
    np.testing.assert_array_equal(dbscan_labels(p, 0.5, 2), [0, 0, 0, 1, 1, 1, 1, 1, -1, 2, 2])
    # A border point between two clusters joins the lower-numbered one (found first by Open3D's scan).
    # eps 0.42, min_points 4: A = 0.0 .. 0.2 and B = 1.0 .. 1.2 are all core; 0.6 has 3 neighbours
    # (0.2, 1.0 and itself, both 0.4 away), so it is a border point of both clusters.
    a, b = [0.0, 0.05, 0.1, 0.15, 0.2], [1.0, 1.05, 1.1, 1.15, 1.2]
    for first, second in ((a, b), (b, a)):
        x = np.array(first + second + [0.6])
        q = np.c_[x, np.zeros(11), np.zeros(11)]
        np.testing.assert_array_equal(dbscan_labels(q, 0.42, 4), [0] * 5 + [1] * 5 + [0])
    # min_points larger than any neighbourhood: all noise, and largest_cluster keeps everything.
    assert (dbscan_labels(p, 0.25, 4) == -1).all()
    assert dbscan_labels(np.zeros((0, 3)), 0.1, 2).shape == (0,)
    # largest_cluster keeps exactly the bigger cluster with its border points.
    np.testing.assert_array_equal(largest_cluster(p, 0.25, 3), [False] * 3 + [True] * 4 + [False] * 4)


def test_largest_cluster_keeps_the_biggest_blob_and_its_border_points():
    rng = np.random.default_rng(6)
    big = rng.normal(0.0, 0.05, size=(300, 3))
    small = rng.normal(1.0, 0.05, size=(100, 3))
    stray = np.array([[0.5, 0.5, 0.5]])
    keep = largest_cluster(np.concatenate([small, big, stray]), 0.05)
    assert keep[100:400].mean() > 0.9 and not keep[:100].any() and not keep[400]


def test_packaging_selects_by_index_like_by_mask():
    rng = np.random.default_rng(7)
    pts, cols = rng.random((5000, 3)), rng.random((5000, 3)).astype(np.float32)
    prob = rng.random(5000).astype(np.float32)
    r = package_result("q", pts, cols, prob, 0.9, 20)
    sel = prob >= 0.9
    np.testing.assert_array_equal(r.points, pts[sel])
    np.testing.assert_array_equal(r.colors, cols[sel])
    np.testing.assert_array_equal(r.point_confidence, prob[sel])
    local = pts[sel] @ r.box.rotation
    np.testing.assert_array_equal(r.box.size, local.max(0) - local.min(0))


def test_kmeans_labels_are_remembered_per_input():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(30, 6))
    a = kmeans(x, 4, 0)
    assert kmeans(x.copy(), 4, 0) is a and not a.flags.writeable
    assert np.array_equal(kmeans(x, 4, 1), view_selection_module._kmeans(x, 4, 1, 50))
    assert kmeans(x + 1.0, 4, 0) is not a


def test_the_snapshot_hands_the_map_s_device_copy_of_the_surface_to_the_query():
    meta = torch.device("meta")
    points = np.zeros((7, 3))
    on_device = torch.empty((7, 3), dtype=torch.float64, device=meta)
    grid = SimpleNamespace(device_points=lambda p: on_device if p is points else None)
    surface = MapSurface(points, np.zeros((7, 3), np.float32), 1)
    pipeline_module._share_device_surface(SimpleNamespace(grid=grid), surface, "meta")
    assert DEVICE_ARRAYS.get(points, meta, torch.float64) is on_device  # no upload: the map's copy
    other = MapSurface(np.zeros((7, 3)), surface.colors, 2)
    pipeline_module._share_device_surface(SimpleNamespace(grid=grid), other, "meta")
    assert DEVICE_ARRAYS.get(other.points, meta, torch.float64) is not on_device
