"""The label-free 3D network at query time (issue 6, third slice; MLLM-For3D §3.3).

The node answers with a trained network when ``net.checkpoint`` is set and fusion found a target,
and falls back to fusion, saying why, in every other case: no checkpoint, a checkpoint that cannot
be loaded, no unified ``[SEG]`` embedding, or fusion's own "not found". The network here is tiny
and barely trained (what is tested is the wiring, not its accuracy: that is
``bench/results/net_ablation.md``); everything runs on CPU, single-threaded.
"""

from __future__ import annotations

import csv
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from reasoning_seg.config import PipelineConfig  # noqa: E402
from reasoning_seg.eval.benchmark import RowSpec, SceneSetSpec, build_map, make_segmenter, prepare_scene  # noqa: E402
from reasoning_seg.net.data import DataConfig, PseudoLabelDataset  # noqa: E402
from reasoning_seg.net.experiment import (  # noqa: E402
    VARIANTS,
    AblationScale,
    SceneQueriesDataset,
    collate_scene_queries,
    fit_query_projection,
    train_scene_queries,
)
from reasoning_seg.net.model import LabelFree3DNet, centred, voxelise  # noqa: E402
from reasoning_seg.net.pseudo_labels import generate_scene_labels, save_scene_labels, trace_query  # noqa: E402
from reasoning_seg.net.train import TrainConfig, run_training  # noqa: E402
from reasoning_seg.pipeline import METHOD_3D_NET, ReasoningSegPipeline  # noqa: E402
from reasoning_seg.segmenter import ViewInput, ViewSegmentation  # noqa: E402

SPEC = SceneSetSpec(seeds=[3], frames=16, width=96, height=72, depth_noise=False, max_queries=6)
PARAMS = {
    "map.voxel_size": 0.08,
    "views.num_views": 3,
    "views.local_views": 1,
    "fusion.min_mask_pixels": 3,
}
NET_VOXEL = 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Single-threaded: tiny tensors gain nothing from OpenMP on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**extra: object) -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.update({**PARAMS, **extra})
    return cfg


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    scene, root = prepare_scene(3, SPEC, tmp_path_factory.mktemp("scenes"))
    return scene, root, SPEC.pick_queries(scene.queries, 3)


@pytest.fixture(scope="module")
def labels_file(recorded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, root, queries = recorded
    labels = generate_scene_labels(root, config(), queries)
    return save_scene_labels(labels, tmp_path_factory.mktemp("pseudo") / f"{root.name}.npz")


@pytest.fixture(scope="module")
def model_file(labels_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network trained for a few steps on the scene's own pseudo-labels, exported by the trainer."""
    out = tmp_path_factory.mktemp("train")
    run_training(
        TrainConfig(
            pseudo_labels=[str(labels_file)],
            out=str(out),
            net="tiny",
            data=DataConfig(voxel_size=NET_VOXEL, augment=False),
            batch_size=8,
            epochs=4,
            progress_bar=False,
            log_every_n_steps=1,
        )
    )
    return out / "model.pt"


@pytest.fixture(scope="module")
def mapped(recorded):
    """The scene's map, built once; each test gets a pipeline sharing it (configs differ)."""
    scene, root, queries = recorded
    pipe, _ = build_map(root, config())
    found = [q for q in queries if pipe_with(pipe, scene).trace(q.text).fused.not_found_reason == ""]
    assert found, "the tiny scene needs a query fusion answers"
    return scene, pipe, found[0]


def pipe_with(base: ReasoningSegPipeline, scene, **params: object) -> ReasoningSegPipeline:
    """A pipeline with ``base``'s map and keyframes, its own config and the SIMULATED LISA-7B."""
    pipe = ReasoningSegPipeline(config(**params))
    pipe.map, pipe.keyframes = base.map, base.keyframes
    pipe.segmenter = make_segmenter(scene, RowSpec("node"), pipe.config)
    return pipe


# ----------------------------------------------------------------------------- the pipeline


def test_pipeline_answers_with_the_3d_net_when_a_checkpoint_is_configured(mapped, model_file: Path) -> None:
    scene, base, q = mapped
    net = LabelFree3DNet.load(model_file)
    surface = base.surface()
    trace = pipe_with(base, scene).trace(q.text)
    prob = net.predict(surface.points, surface.colors, trace.fused.unified_embedding)
    # A threshold the barely-trained network crosses for some points but not all (net.threshold's range).
    thr = float(np.clip(np.quantile(prob, 0.7), 0.01, 0.99))
    pipe = pipe_with(
        base, scene, **{"net.checkpoint": str(model_file), "net.threshold": thr, "net.min_points": 1}
    )
    assert pipe.net_status == "not loaded yet" and pipe.net is None

    r = pipe.query(q.text)
    assert r.success and r.method == METHOD_3D_NET == "3d_net", r.message
    assert pipe.net_status.startswith("ready: model.pt") and pipe.net is not None
    assert "answered by the 3D net" in r.message
    stages = list(r.timings)
    assert "3d_net" in stages and stages.index("fusion") < stages.index("3d_net") < stages.index("packaging")
    np.testing.assert_array_equal(r.unified_embedding, trace.fused.unified_embedding)
    # The answer is the network's thresholded probability over the map, not fusion's.
    sel = prob >= thr
    assert r.found and 0 < sel.sum() < len(sel)
    np.testing.assert_allclose(r.points, surface.points[sel])
    np.testing.assert_allclose(r.point_confidence, prob[sel], atol=1e-6)
    assert r.confidence == pytest.approx(float(prob[sel].mean()), rel=1e-5)
    fused = pipe_with(base, scene).query(q.text)
    assert fused.method == "fusion:token_attention" and len(fused.points) != len(r.points)
    assert r.keyframe_ids == fused.keyframe_ids  # same views, only the last stage differs


def test_without_a_checkpoint_fusion_answers_and_says_so(mapped) -> None:
    scene, base, q = mapped
    pipe = pipe_with(base, scene)
    r = pipe.query(q.text)
    assert r.success and r.method == "fusion:token_attention"
    assert "answered by fusion: no 3D-net checkpoint configured" in r.message
    assert "3d_net" not in r.timings and pipe.net_status == "not configured"
    assert r.unified_embedding is not None
    np.testing.assert_allclose(np.linalg.norm(r.unified_embedding), 1.0, rtol=1e-5)


def test_a_corrupt_or_missing_checkpoint_falls_back_to_fusion_with_the_reason(
    mapped, model_file: Path, tmp_path: Path
) -> None:
    scene, base, q = mapped
    cut = tmp_path / "cut.pt"
    cut.write_bytes(model_file.read_bytes()[:1500])
    expected = pipe_with(base, scene).query(q.text)
    for path, why in ((cut, "corrupt or truncated"), (tmp_path / "missing.pt", "does not exist")):
        pipe = pipe_with(base, scene, **{"net.checkpoint": str(path)})
        status = pipe.load_net()  # never raises
        assert status.startswith("failed") and why in status and pipe.net_status == status
        r = pipe.query(q.text)
        assert r.success and r.method == "fusion:token_attention"
        assert "answered by fusion: 3D net failed" in r.message and why in r.message
        np.testing.assert_array_equal(r.points, expected.points)  # exactly fusion's answer
    # A network built for another [SEG] size is refused at load time, not at the first query.
    pipe = pipe_with(base, scene, **{"net.checkpoint": str(model_file), "segmenter.embedding_dim": 128})
    assert "expects 256-d [SEG] embeddings" in pipe.load_net()


def test_no_unified_embedding_or_no_target_leaves_fusion_answering(mapped, model_file: Path) -> None:
    scene, base, q = mapped
    ckpt = {"net.checkpoint": str(model_file)}
    # The naive projection (Table 4a) computes no unified [SEG] embedding: nothing to ask the net.
    naive = pipe_with(base, scene, **{**ckpt, "fusion.method": "naive"}).query(q.text)
    assert naive.method == "fusion:naive" and naive.unified_embedding is None
    assert "gave no unified [SEG] embedding" in naive.message

    # Every view filtered out (the model was never confident): fusion's "not found" stands.
    class Unsure:
        name = "unsure"
        embedding_dim = 256

        def segment(self, views: list[ViewInput], query: str) -> list[ViewSegmentation]:
            h, w = views[0].intrinsics.height, views[0].intrinsics.width
            logits = np.full((h, w), -8.0, np.float32)
            logits[: h // 2, : w // 2] = 8.0
            emb = np.ones(256, np.float32) / 16.0
            return [ViewSegmentation(logits, 0.05, emb, "maybe [SEG]") for _ in views]

    pipe = pipe_with(base, scene, **ckpt)
    pipe.segmenter = Unsure()
    r = pipe.query(q.text)
    assert r.success and not r.found and r.method == "fusion:token_attention"
    assert r.message.startswith("not found: every view was filtered out")
    assert r.message.endswith("(3D net not run: fusion found no target)")
    assert r.unified_embedding is None and "3d_net" not in r.timings


def test_pseudo_labels_trace_the_same_stages_as_the_pipeline(mapped) -> None:
    scene, base, q = mapped
    pipe = pipe_with(base, scene)
    ours = pipe.trace(q.text)
    theirs = trace_query(
        base.keyframes.snapshot(), base.surface().points, q.text, pipe.segmenter, pipe.config
    )
    assert [v.keyframe_id for v in ours.views] == [v.keyframe_id for v in theirs.views]
    np.testing.assert_array_equal(ours.local, theirs.local)
    np.testing.assert_array_equal(ours.fused.probability, theirs.fused.probability)
    assert theirs.outcomes and all(o for o in theirs.outcomes)  # the simulation says what it did


def test_table4b_query_projection_fit_lowers_the_fused_label_loss(labels_file: Path) -> None:
    from reasoning_seg.net.model import NetConfig
    from reasoning_seg.net.unet import UNetConfig

    torch.manual_seed(0)
    tiny = UNetConfig(out_channels=16, init_dim=8, planes=(8, 16, 16, 16, 16, 16, 8, 8), stem_kernel=3)
    net = LabelFree3DNet(NetConfig(unet=tiny, voxel_size=NET_VOXEL))
    backbone = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    info = fit_query_projection(net, [labels_file], NET_VOXEL, steps=40, lr=0.05, log=lambda _m: None)
    assert info["loss_last"] < 0.7 * info["loss_first"] and info["items"] >= 2
    for k, v in net.backbone.state_dict().items():  # only the projection moved
        torch.testing.assert_close(v, backbone[k])
    assert not any(p.requires_grad for p in net.query_head.parameters())


def test_scene_query_items_carry_the_standard_items_pairs(labels_file: Path) -> None:
    data = DataConfig(voxel_size=NET_VOXEL, augment=False)
    ds = SceneQueriesDataset([labels_file], data, queries_per_item=3, max_spatial_pairs=50)
    standard = PseudoLabelDataset([labels_file], data, augment=False)
    queries = [qi for _, qi in standard.items][:3]
    item = ds.item(0, queries, None, np.random.default_rng(0))
    assert item["embedding"].shape == (len(queries), 256)
    for k, qi in enumerate(queries):
        ref = standard.item(standard.items.index((0, qi)))
        np.testing.assert_array_equal(item["coords"], ref["coords"])
        mine = item["pair_query"] == k
        order = np.lexsort((ref["pair_view"], ref["pair_point"]))
        np.testing.assert_array_equal(item["pair_point"][mine], ref["pair_point"][order])
        np.testing.assert_allclose(item["pair_logit"][mine], ref["pair_logit"][order], atol=1e-3)
        np.testing.assert_array_equal(item["pair_weight"][mine], ref["pair_weight"][order])
        np.testing.assert_array_equal(item["embedding"][k], ref["embedding"])
    assert len(item["s_point"]) <= 50 * len(queries) and item["s_feat"].shape == (len(item["s_point"]), 256)
    # Two scenes in a batch: rows and queries of the second are shifted past the first's.
    batch = collate_scene_queries([item, item])
    n, m, q = len(item["coords"]), len(item["pair_point"]), len(queries)
    assert batch["coords"].shape == (2 * n, 4) and (batch["coords"][n:, 0] == 1).all()
    np.testing.assert_array_equal(batch["pair_point"][m:].numpy(), item["pair_point"] + n)
    np.testing.assert_array_equal(batch["pair_query"][m:].numpy(), item["pair_query"] + q)
    assert batch["embedding"].shape == (2 * q, 256)


def test_scene_query_items_swap_only_the_eq1_target_for_fused_and_truth(labels_file: Path) -> None:
    data = DataConfig(voxel_size=NET_VOXEL, augment=False)
    views = SceneQueriesDataset([labels_file], data, queries_per_item=3, max_spatial_pairs=50)
    queries = sorted(views.queries[0])[:3]
    ref = views.item(0, queries, None, np.random.default_rng(0))
    scene = views.base.scene(0)
    vox = voxelise(centred(scene.points), scene.colors, NET_VOXEL, data.color_center, data.height)
    counts = np.bincount(vox.inverse, minlength=len(vox.coords))
    for target in ("fused", "truth"):
        ds = SceneQueriesDataset([labels_file], data, 3, 50, alignment_target=target)
        item = ds.item(0, queries, None, np.random.default_rng(0))
        for key in ("coords", "pair_point", "pair_query", "pair_weight", "s_point", "embedding"):
            np.testing.assert_array_equal(item[key], ref[key])  # same pairs, same Eq. 2 set
        for k, qi in enumerate(queries):
            q = scene.queries[qi]
            per_point = q.probability if target == "fused" else scene.gt_mask(q).astype(np.float64)
            per_vox = np.bincount(vox.inverse, per_point, len(counts)) / np.maximum(counts, 1)
            mine = item["pair_query"] == k
            want = np.clip(per_vox[item["pair_point"][mine]], 1e-6, 1 - 1e-6)
            got = 1.0 / (1.0 + np.exp(-item["pair_logit"][mine].astype(np.float64)))
            np.testing.assert_allclose(got, want, atol=1e-5)
    truth_item = SceneQueriesDataset([labels_file], data, 3, 50, alignment_target="truth").item(
        0, queries, None, np.random.default_rng(0)
    )
    assert not np.allclose(truth_item["pair_logit"], ref["pair_logit"])  # the target really changed
    with pytest.raises(ValueError, match="alignment_target"):
        SceneQueriesDataset([labels_file], data, alignment_target="labels")


@pytest.mark.parametrize(("variant", "zero"), [(0, None), (2, "train/spatial")])
def test_scene_query_training_writes_a_net_and_drops_the_ablated_term(
    labels_file: Path, tmp_path: Path, variant: int, zero: str | None
) -> None:
    scale = AblationScale(
        name="test",
        train_seeds=[3],
        test_seeds=[4],
        net="tiny",
        net_voxel=NET_VOXEL,
        steps=4,
        batch_size=1,
        queries_per_item=4,
        threads=1,
    )
    v = VARIANTS[variant]
    summary = train_scene_queries(v, scale, [labels_file], tmp_path, seed=0)
    assert summary["steps"] == 4 and LabelFree3DNet.load(tmp_path / "model.pt").config.unet.out_channels == 32
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    align = [float(r["train/align"]) for r in rows if r.get("train/align")]
    spatial = [float(r["train/spatial"]) for r in rows if r.get("train/spatial")]
    assert len(align) == 4 and all(a > 0 for a in align)
    assert all(x == 0 for x in spatial) if zero else all(x > 0 for x in spatial)


def test_scene_query_training_warm_starts_from_a_saved_model(labels_file: Path, tmp_path: Path) -> None:
    scale = AblationScale(
        name="test", train_seeds=[3], test_seeds=[4], net="tiny", net_voxel=NET_VOXEL, steps=4,
        batch_size=1, queries_per_item=4, threads=1,
    )  # fmt: skip
    train_scene_queries(VARIANTS[0], scale, [labels_file], tmp_path / "a", seed=0)
    first = LabelFree3DNet.load(tmp_path / "a" / "model.pt")
    # One more step at a negligible learning rate: the weights are the first run's, not a fresh init.
    more = dataclasses.replace(scale, steps=1, lr=1e-12, init_from=str(tmp_path / "a" / "model.pt"))
    summary = train_scene_queries(VARIANTS[0], more, [labels_file], tmp_path / "b", seed=1)
    assert summary["total_steps"] == 5 and summary["init_from"] == more.init_from
    again = LabelFree3DNet.load(tmp_path / "b" / "model.pt")
    fresh = dataclasses.replace(scale, steps=1, lr=1e-12)
    train_scene_queries(VARIANTS[0], fresh, [labels_file], tmp_path / "c", seed=1)
    other = LabelFree3DNet.load(tmp_path / "c" / "model.pt")
    for (k, w), w2 in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        if w.is_floating_point() and "running" not in k:
            torch.testing.assert_close(w2, w, atol=1e-6, rtol=0)
    assert any(not torch.allclose(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))
    with pytest.raises(ValueError, match="another network"):
        train_scene_queries(
            VARIANTS[0], dataclasses.replace(more, net_voxel=2 * NET_VOXEL), [labels_file], tmp_path / "d"
        )


def test_ablation_scales_refuse_overlapping_rooms() -> None:
    with pytest.raises(ValueError, match="in both sets"):
        AblationScale(name="x", train_seeds=[0, 1], test_seeds=[1, 2])


# ----------------------------------------------------------------------------- the node


@pytest.mark.ros
def test_node_loads_the_3d_net_from_a_parameter_and_answers_with_it(
    ros_context, recorded, model_file: Path, tmp_path: Path
) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from reasoning_seg_msgs.srv import LoadMap

    from reasoning_seg.ros.node import ReasoningSegNode, executor_threads
    from reasoning_seg.ros.query_client import call_segment, call_service

    scene, root, queries = recorded
    base, _ = build_map(root, config())
    base.save(tmp_path / "map")
    q = next(q for q in queries if pipe_with(base, scene).trace(q.text).fused.not_found_reason == "")

    def start(checkpoint: Path):
        params = [Parameter(k, value=v) for k, v in PARAMS.items()] + [
            Parameter("segmenter.scene", value=str(root)),
            Parameter("net.checkpoint", value=str(checkpoint)),
            Parameter("net.threshold", value=0.01),  # the barely-trained net: keep (almost) every point
            Parameter("net.min_points", value=1),
            Parameter("map_publish_period", value=0.0),
            Parameter("diagnostics_period", value=0.2),
            Parameter("map_directory", value=str(tmp_path)),
        ]
        node = ReasoningSegNode(context=ros_context, parameter_overrides=params)
        executor = MultiThreadedExecutor(num_threads=executor_threads(node.cfg), context=ros_context)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        return node, executor, thread

    def wait(pred, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not pred():
            time.sleep(0.05)

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    client = rclpy.create_node("net_client", context=ros_context)
    diags: list[DiagnosticArray] = []
    client.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    for ckpt in (model_file, bad):
        node, executor, thread = start(ckpt)
        try:
            wait(
                lambda n=node: n.net_status not in ("loading", "not loaded yet") and n.model_status == "ready"
            )
            loaded = call_service(
                client, LoadMap, "/reasoning_seg/load_map", LoadMap.Request(directory="map")
            )
            assert loaded.success, loaded.message
            resp = call_segment(client, q.text, timeout=60.0)
            assert resp.success, resp.message
            r = resp.result
            diags.clear()
            spinner = SingleThreadedExecutor(context=ros_context)
            spinner.add_node(client)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not diags:
                spinner.spin_once(timeout_sec=0.1)
            spinner.remove_node(client)
            spinner.shutdown()
            values = {kv.key: kv.value for d in diags for s in d.status for kv in s.values}
            if ckpt == model_file:
                assert node.net_status.startswith("ready: model.pt")
                assert r.method == r.METHOD_3D_NET and r.found and "answered by the 3D net" in r.message
                assert "3d_net" in [t.stage for t in r.timings]
                expect = node.pipeline.net.predict(
                    node.pipeline.surface().points,
                    node.pipeline.surface().colors,
                    node.pipeline.trace(q.text).fused.unified_embedding,
                )
                assert r.num_points == int((expect >= 0.01).sum())
                assert values["net3d"].startswith("ready")
            else:
                assert node.net_status.startswith("failed") and "corrupt or truncated" in node.net_status
                assert (
                    r.method == "fusion:token_attention" and "answered by fusion: 3D net failed" in r.message
                )
                assert values["net3d"].startswith("failed")
        finally:
            executor.shutdown()
            thread.join(timeout=5)
            node.destroy_node()
    client.destroy_node()
