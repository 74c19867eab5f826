"""The batched torch path of view selection and fusion gives the numpy path's answers (issue 8).

Runs on CPU (torch's CPU device) and, where one is present, on CUDA. The scene is the SIMULATED
corridor of :mod:`reasoning_seg.synthetic_stream` at 160x120: its depth images, the world points they
unproject to (plus points hidden behind walls and behind the cameras) and red-pixel masks.
"""

from __future__ import annotations

import functools
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reasoning_seg.pipeline as pipeline_module  # noqa: E402
from reasoning_seg.camera import CameraIntrinsics, transform_points, visible_pixels  # noqa: E402
from reasoning_seg.config import FusionConfig, PipelineConfig, ViewSelectionConfig  # noqa: E402
from reasoning_seg.fusion import (  # noqa: E402
    DEVICE_ARRAYS,
    METHODS,
    fuse,
    torch_device,
    visible_pixels_torch,
)
from reasoning_seg.keyframes import KeyframeWindow  # noqa: E402
from reasoning_seg.pipeline import ReasoningSegPipeline  # noqa: E402
from reasoning_seg.segmenter import ViewInput, ViewSegmentation  # noqa: E402
from reasoning_seg.synthetic_stream import CorridorStream  # noqa: E402
from reasoning_seg.view_selection import coverage, select_local_views, select_views  # noqa: E402

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
        assert np.array_equal(visible[j].cpu().numpy(), vis_np)
        assert np.array_equal(flat[j].cpu().numpy(), flat_np)
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


def test_a_pipeline_query_is_the_same_with_the_stages_on_a_device(frames, monkeypatch):
    cfg = PipelineConfig()
    cfg.map.voxel_size = 0.05
    cfg.map.backend = "torch"
    cfg.map.device = "cpu"
    cfg.segmenter.embedding_dim = DIM
    pipe = ReasoningSegPipeline(cfg, RedSegmenter())
    for f in CorridorStream(INTR).frames(120):
        pipe.add_frame(f)
    ref = pipe.query("the red box", num_views=4)
    # What the pipeline does once it passes a device to these stages (see bench/query_bench.py).
    monkeypatch.setattr(pipeline_module, "select_views", functools.partial(select_views, device="cpu"))
    monkeypatch.setattr(
        pipeline_module, "select_local_views", functools.partial(select_local_views, device="cpu")
    )
    monkeypatch.setattr(pipeline_module, "fuse", functools.partial(fuse, device="cpu"))
    out = pipe.query("the red box", num_views=4)
    assert ref.found and len(ref.keyframe_ids) > 4  # the local stage ran
    assert out.keyframe_ids == ref.keyframe_ids
    np.testing.assert_array_equal(out.points, ref.points)
