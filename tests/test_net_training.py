"""The label-free 3D network's training path (issue 6, second slice).

Pseudo-labels from the node's own stages on a tiny recorded SIMULATED room, their file format, the
dataset's voxel / pair bookkeeping under augmentation, the Lightning trainer (loss goes down,
checkpoints, resume, ablation switches, hybrid mode) and the network's checkpoints.
Everything runs on CPU, single-threaded (see ``tests/test_net.py`` for why).
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reasoning_seg.camera import visible_pixels
from reasoning_seg.config import PipelineConfig
from reasoning_seg.eval.benchmark import RowSpec, SceneSetSpec, build_map, make_segmenter, prepare_scene
from reasoning_seg.net.data import DataConfig, PseudoLabelDataset, augmentation_matrix, collate
from reasoning_seg.net.model import CheckpointError, LabelFree3DNet, NetConfig, centred, voxelise
from reasoning_seg.net.pseudo_labels import (
    PseudoLabelError,
    generate_scene_labels,
    load_scene_labels,
    pixel_to_feature_cell,
    save_scene_labels,
    trace_query,
)
from reasoning_seg.net.pseudo_labels import main as pseudo_label_main
from reasoning_seg.net.sparse_conv import SparseTensor
from reasoning_seg.net.train import PseudoLabelDataModule, TrainConfig, main, run_training
from reasoning_seg.net.unet import UNetConfig
from reasoning_seg.segmenter import ViewInput
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter, feature_grid_cells

SPEC = SceneSetSpec(seeds=[3], frames=16, width=96, height=72, depth_noise=False, max_queries=6)
PARAMS = {
    "map.voxel_size": 0.08,
    "views.num_views": 3,
    "views.local_views": 1,
    "fusion.min_mask_pixels": 3,
}
NET_VOXEL = 0.1
TINY = UNetConfig(out_channels=16, init_dim=8, planes=(8, 16, 16, 16, 16, 16, 8, 8), stem_kernel=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Single-threaded: tiny tensors gain nothing from OpenMP on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pipeline_config() -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.update(PARAMS)
    return cfg


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("scenes")
    scene, root = prepare_scene(3, SPEC, cache)
    return scene, root, SPEC.pick_queries(scene.queries, 3)


@pytest.fixture(scope="module")
def labels_file(recorded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, root, queries = recorded
    labels = generate_scene_labels(root, pipeline_config(), queries)
    return save_scene_labels(labels, tmp_path_factory.mktemp("pseudo") / f"{root.name}.npz")


def read_metrics(out: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for f in sorted((out / "logs").glob("version_*/metrics.csv")):
        with f.open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


# ----------------------------------------------------------------------------- simulated SAM features


def test_simulated_sam_features_are_an_option_that_changes_nothing_else(recorded) -> None:
    scene, _, queries = recorded
    intr = SPEC.intrinsics
    views = [
        ViewInput(i, np.zeros((72, 96, 3), np.uint8), np.zeros((72, 96), np.float32), intr, pose)
        for i, pose in enumerate(scene.trajectory(4, seed=1))
    ]
    plain = SimulatedSegmenter(scene).segment(views, queries[1].text)
    sim = SimulatedSegmenter(scene, image_features=True)
    with_f = sim.segment(views, queries[1].text)
    for a, b in zip(plain, with_f, strict=True):
        assert a.image_features is None
        np.testing.assert_array_equal(a.mask_logits, b.mask_logits)
        np.testing.assert_array_equal(a.seg_embedding, b.seg_embedding)
        assert a.confidence == b.confidence and b.image_features.shape == (256, 64, 64)
    # Image-only: another query on the same view gives the same features.
    other = sim.segment(views[:1], queries[2].text)[0].image_features
    np.testing.assert_array_equal(other, with_f[0].image_features)

    # Each cell carries the code of the object at its centre pixel: same object -> similar features.
    inst = scene.render(intr, views[0].T_world_cam)[2]
    rows, cols = feature_grid_cells(72, 96, 64)
    assert (rows[rows >= 0] < 72).all() and (rows == -1).sum() == 64 - 48  # 96 px side: 48 rows of image
    f = with_f[0].image_features
    ids = np.full((64, 64), -1)
    ids[np.ix_(rows >= 0, cols >= 0)] = inst[np.ix_(rows[rows >= 0], cols[cols >= 0])]
    unit = f / np.linalg.norm(f, axis=0, keepdims=True)
    objects = [i for i in np.unique(ids) if i > 0 and (ids == i).sum() >= 4]
    assert len(objects) >= 2
    mean = {i: unit[:, ids == i].mean(axis=1) for i in objects}
    within = np.mean([float(mean[i] @ mean[i]) for i in objects])
    between = np.mean([float(mean[i] @ mean[j]) for i in objects for j in objects if i < j])
    assert within > 0.5 and between < within - 0.2


def test_pixel_to_feature_cell_follows_sams_padded_square() -> None:
    rows, cols = feature_grid_cells(72, 96, 64)
    for r in range(64):
        for c in range(64):
            if rows[r] < 0 or cols[c] < 0:
                continue
            flat = np.array([rows[r] * 96 + cols[c]])
            assert pixel_to_feature_cell(flat, 72, 96, 64, 64)[0] == r * 64 + c
    # The last pixel row of a 96x72 image is in feature row floor(71.5 * 64 / 96) = 47.
    assert pixel_to_feature_cell(np.array([71 * 96]), 72, 96, 64, 64)[0] // 64 == 47


# ----------------------------------------------------------------------------- pseudo-labels


def test_pseudo_labels_are_what_the_node_answers(recorded, labels_file: Path) -> None:
    scene, root, queries = recorded
    labels = load_scene_labels(labels_file)
    pipe, _ = build_map(root, pipeline_config())
    pipe.segmenter = make_segmenter(scene, RowSpec("node"), pipe.config)
    assert len(labels.queries) == len(queries) and sum(q.found for q in labels.queries) >= 2
    for q in labels.queries:
        result = pipe.query(q.text)
        assert result.found == q.found, (q.text, q.not_found_reason, result.message)
        assert len(result.points) == (int((q.probability >= 0.5).sum()) if q.found else 0)
        assert result.keyframe_ids == [int(labels.keyframe_ids[k]) for k in q.view_keyframe]
        assert q.unified_source == "fusion" or not q.found
        np.testing.assert_allclose(np.linalg.norm(q.unified), 1.0, rtol=1e-5)
    # The same map (its surface extraction may order the points differently).
    ours, theirs = labels.points.astype(np.float64), pipe.surface().points
    np.testing.assert_allclose(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)], atol=1e-5)


def test_pseudo_labels_found_means_enough_points_as_in_the_node(recorded, labels_file: Path) -> None:
    """Too few points at the threshold: not found in the labels, as in the node.

    A query fusion found with fewer than query.min_points points at the threshold is not found, in
    the labels exactly as in the node (one rule: result.select_target).
    """
    _, root, queries = recorded
    labels = load_scene_labels(labels_file)
    counts = {q.text: int((q.probability >= 0.5).sum()) for q in labels.queries if q.found}
    text = min(counts, key=counts.get)
    cfg = pipeline_config()
    cfg.update({"query.min_points": counts[text] + 1})
    strict = generate_scene_labels(root, cfg, [q for q in queries if q.text == text][:1]).queries[0]
    before = next(q for q in labels.queries if q.text == text)
    # Only the verdict moves (the map's points may come out in another order: compare sorted).
    np.testing.assert_array_equal(np.sort(strict.probability), np.sort(before.probability))
    assert not strict.found and f"need {counts[text] + 1}" in strict.not_found_reason


def test_pseudo_labels_round_trip_and_pairs_are_visibility_checked_samples(
    recorded, labels_file: Path
) -> None:
    scene, root, queries = recorded
    cfg = pipeline_config()
    labels = load_scene_labels(labels_file)
    # Round trip: saving what was loaded gives the same arrays back.
    again = load_scene_labels(save_scene_labels(labels, labels_file.with_name("copy.npz")))
    for name in ("points", "colors", "gt_instance", "keyframe_ids", "vis_offsets", "vis_point", "feats"):
        np.testing.assert_array_equal(getattr(labels, name), getattr(again, name))
    for a, b in zip(labels.queries, again.queries, strict=True):
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(a.probability, b.probability)
        assert (a.text, a.view_outcomes, a.view_reasons) == (b.text, b.view_outcomes, b.view_reasons)
    assert labels.has_features and labels.meta["config"]["map.voxel_size"] == 0.08

    # Pairs of one found query: exactly the depth-visible points of each view, with its mask logits
    # and SAM features sampled at their pixels.
    j = next(i for i, q in enumerate(labels.queries) if q.found)
    q = labels.queries[j]
    pipe, _ = build_map(root, cfg)
    sim = SimulatedSegmenter(scene, image_features=True, seed=cfg.segmenter.sim_seed)
    trace = trace_query(pipe.keyframes.snapshot(), labels.points.astype(np.float64), q.text, sim, cfg)
    pairs = labels.pairs(j)
    for v, (view, seg) in enumerate(zip(trace.views, trace.segmentations, strict=True)):
        vis, pix = visible_pixels(
            labels.points.astype(np.float64), view.T_world_cam, view.intrinsics, view.depth, 0.05
        )
        mine = pairs["view"] == v
        np.testing.assert_array_equal(pairs["point"][mine], np.flatnonzero(vis))
        expect = seg.mask_logits.reshape(-1)[pix[vis]].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(pairs["logit"][mine], expect)
        cells = pixel_to_feature_cell(pix[vis], 72, 96, 64, 64)
        want = seg.image_features.reshape(256, -1)[:, cells].T.astype(np.float16)
        np.testing.assert_array_equal(labels.feats[pairs["feat_row"][mine]], want)
        assert np.all(pairs["weight"][mine] == np.float32(trace.fused.view_weights[v]))
    truth = labels.gt_mask(j)
    assert truth is not None and truth.sum() > 0 and q.target_id > 0


def test_loader_refuses_corrupt_and_foreign_files(labels_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_scene_labels(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(labels_file.read_bytes()[:5000])
    with pytest.raises(PseudoLabelError, match="not a readable pseudo-label file"):
        load_scene_labels(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    with pytest.raises(PseudoLabelError, match="not a reasoning_seg.pseudo_labels file"):
        load_scene_labels(foreign)
    with np.load(labels_file) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    bad_version = dict(arrays, meta=np.frombuffer(json.dumps({**meta, "version": 99}).encode(), np.uint8))
    np.savez(tmp_path / "v99.npz", **bad_version)
    with pytest.raises(PseudoLabelError, match="version 99"):
        load_scene_labels(tmp_path / "v99.npz")
    short = dict(arrays)
    short["q00001.logits"] = short["q00001.logits"][:-1]
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(PseudoLabelError, match="logits do not match"):
        load_scene_labels(tmp_path / "short.npz")
    # A zip that is not an npz of arrays at all.
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:
        z.writestr("meta.npy", b"garbage")
    with pytest.raises(PseudoLabelError):
        load_scene_labels(tmp_path / "zip.npz")
    with pytest.raises(PseudoLabelError):
        PseudoLabelDataset([foreign])


def test_pseudo_label_cli_records_and_labels_scenes(tmp_path: Path, capsys) -> None:
    argv = ["--out", str(tmp_path), "--seeds", "3", "--frames", "8", "--size", "64x48", "--max-queries", "2"]
    assert pseudo_label_main(argv + ["--no-depth-noise", "--param", "map.voxel_size=0.1"]) == 0
    (written,) = sorted(tmp_path.glob("*.npz"))
    labels = load_scene_labels(written)
    assert len(labels.queries) == 2 and labels.has_features and labels.meta["config"]["map.voxel_size"] == 0.1
    assert labels.meta["segmenter"] == "simulated-lisa7b"
    assert pseudo_label_main(argv + ["--param", "bogus.knob=1"]) == 2
    assert "unknown parameter" in capsys.readouterr().err


# ----------------------------------------------------------------------------- dataset + augmentation


def test_augmentation_keeps_voxels_and_pairs_consistent(labels_file: Path) -> None:
    labels = load_scene_labels(labels_file)
    raw = PseudoLabelDataset([labels_file], DataConfig(voxel_size=NET_VOXEL, dedupe_pairs=False))
    merged = PseudoLabelDataset([labels_file], DataConfig(voxel_size=NET_VOXEL))
    m = augmentation_matrix(np.random.default_rng(5))
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    assert m[2, 2] == 1.0 and np.all(m[2, :2] == 0)  # the up axis stays up
    for index in range(len(raw)):
        item = raw.item(index, m)
        q = labels.queries[item["key"][1]]
        assert q.found and item["query"] == q.text
        # Every point lies in the voxel the item says, after the same transform.
        moved = centred(labels.points) @ m.T
        grid = np.floor(moved / NET_VOXEL).astype(np.int64)
        np.testing.assert_array_equal(item["coords"][item["inverse"]], grid - grid.min(0))
        # Pairs follow their points into the voxels; views fusion dropped are left out.
        pairs = labels.pairs(q)
        keep = pairs["weight"] > 0
        np.testing.assert_array_equal(item["pair_point"], item["inverse"][pairs["point"][keep]])
        np.testing.assert_array_equal(item["pair_logit"], pairs["logit"][keep])
        # Merging pairs per (voxel, view) keeps exactly those (voxel, view) combinations.
        mer = merged.item(index, m)
        assert set(zip(mer["pair_point"], mer["pair_view"], strict=True)) == set(
            zip(item["pair_point"], item["pair_view"], strict=True)
        )
        assert len(mer["pair_point"]) < len(item["pair_point"])
        for g in range(0, len(mer["pair_point"]), 37):  # merged = mean over the group's pairs
            group = (item["pair_point"] == mer["pair_point"][g]) & (item["pair_view"] == mer["pair_view"][g])
            np.testing.assert_allclose(
                mer["pair_feat"][g], item["pair_feat"][group].mean(0), rtol=1e-5, atol=1e-6
            )
            p_mean = (1 / (1 + np.exp(-item["pair_logit"][group].astype(np.float64)))).mean()
            expect = np.log(np.clip(p_mean, 1e-6, 1 - 1e-6) / np.clip(1 - p_mean, 1e-6, 1))
            assert mer["pair_logit"][g] == pytest.approx(np.clip(expect, -13.8, 13.8), abs=1e-4)
        np.testing.assert_array_equal(mer["embedding"], q.unified)
        # Voxel pseudo-label = mean fused probability of its points.
        v0 = item["inverse"][np.argmax(q.probability)]
        np.testing.assert_allclose(item["fused"][v0], q.probability[item["inverse"] == v0].mean(), rtol=1e-6)
    # The rotation changes the voxels, not the number of pairs or their order.
    ident = raw.item(0)
    assert len(ident["pair_point"]) == len(raw.item(0, m)["pair_point"])
    merged_logit = merged.item(0)["pair_logit"]
    assert np.all(np.abs(merged_logit) <= 13.8 + 1e-6)


def test_collate_batches_scenes_and_reindexes_pairs(labels_file: Path) -> None:
    ds = PseudoLabelDataset([labels_file], DataConfig(voxel_size=NET_VOXEL), augment=False)
    items = [ds[0], ds[1]]
    batch = collate(items)
    n0 = len(items[0]["coords"])
    assert batch["coords"].shape == (n0 + len(items[1]["coords"]), 4)
    assert batch["offsets"].tolist() == [0, n0, batch["coords"].shape[0]]
    np.testing.assert_array_equal(batch["coords"][:n0, 1:].numpy(), items[0]["coords"])
    assert (batch["batch_index"][:n0] == 0).all() and (batch["batch_index"][n0:] == 1).all()
    m0 = len(items[0]["pair_point"])
    np.testing.assert_array_equal(batch["pair_point"][:m0].numpy(), items[0]["pair_point"])
    np.testing.assert_array_equal(batch["pair_point"][m0:].numpy(), items[1]["pair_point"] + n0)
    assert batch["pair_feat"].shape == (len(batch["pair_point"]), 256)
    assert batch["embedding"].shape == (2, 256) and not torch.isnan(batch["gt"]).any()


# ----------------------------------------------------------------------------- Lightning


def tiny_run(labels_file: Path, out: Path, **kw) -> dict:
    base = {
        "pseudo_labels": [str(labels_file)],
        "out": str(out),
        "net": "tiny",
        "data": DataConfig(voxel_size=NET_VOXEL, augment=False),
        "batch_size": 8,  # every item in one batch: one step per epoch, the same batch each step
        "epochs": 8,
        "progress_bar": False,
        "log_every_n_steps": 1,
    }
    base.update(kw)
    return run_training(TrainConfig(**base))


@pytest.fixture(scope="module")
def trained(labels_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train")
    return out, tiny_run(labels_file, out)


def test_lightning_fit_lowers_the_loss_and_writes_checkpoints(trained) -> None:
    out, summary = trained
    rows = read_metrics(out)
    loss = logged(rows, "train/loss")
    assert len(loss) == 8 == summary["global_step"]
    assert loss[-1] < 0.8 * loss[0], loss
    align, spatial = logged(rows, "train/align"), logged(rows, "train/spatial")
    np.testing.assert_allclose(loss, np.add(align, spatial), rtol=1e-5)  # lambda = 1, no gt term
    assert spatial[-1] < spatial[0] and align[-1] < align[0]
    lr = logged(rows, "lr-SGD")
    assert lr[0] == pytest.approx(0.1) and lr[-1] < lr[0]  # A.2 lr, poly decay
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "model.pt").is_file()
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 8
    assert summary["step_s_median"] > 0


def test_resume_continues_the_step_count(trained, labels_file: Path) -> None:
    out, _ = trained
    summary = tiny_run(labels_file, out, epochs=11, resume="last")
    assert summary["global_step"] == 11 and summary["resumed_from"].endswith("last.ckpt")
    steps = logged(read_metrics(out), "step")
    assert max(steps) == 10  # steps 0-7 in the first run, 8-10 after resuming
    with pytest.raises(FileNotFoundError):
        tiny_run(labels_file, out / "elsewhere", resume="last")


@pytest.mark.parametrize(
    ("flags", "zero", "nonzero"),
    [
        (["--no-spatial"], "train/spatial", "train/align"),
        (["--no-align", "--with-gt"], "train/align", "train/gt"),
    ],
)
def test_ablation_switches_remove_their_loss_term(
    labels_file: Path, tmp_path: Path, flags: list[str], zero: str, nonzero: str
) -> None:
    out = tmp_path / "run"
    argv = ["--pseudo-labels", str(labels_file), "--out", str(out), "--net", "tiny", "--max-steps", "2"]
    argv += ["--voxel-size", str(NET_VOXEL), "--log-every", "1", "--no-progress", "--batch-size", "2"]
    assert main(argv + flags) == 0
    rows = read_metrics(out)
    assert all(v == 0.0 for v in logged(rows, zero)) and len(logged(rows, zero)) == 2
    assert all(v > 0.0 for v in logged(rows, nonzero))
    total = logged(rows, "train/loss")
    parts = np.add(logged(rows, "train/align"), logged(rows, "train/spatial"))
    np.testing.assert_allclose(total, parts + np.array(logged(rows, "train/gt")), rtol=1e-5)


def test_cli_refuses_bad_arguments(labels_file: Path, tmp_path: Path, capsys) -> None:
    base = ["--pseudo-labels", str(labels_file), "--out", str(tmp_path / "x"), "--net", "tiny"]
    assert main(base + ["--no-align", "--no-spatial"]) == 2
    assert main(["--pseudo-labels", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "error:" in capsys.readouterr().err


def test_data_module_splits_the_total_batch_over_devices(labels_file: Path) -> None:
    dm = PseudoLabelDataModule([labels_file], batch_size=4, data=DataConfig(voxel_size=NET_VOXEL))
    assert dm.per_device_batch_size == 4  # no trainer: one device
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["scene"]) == min(4, len(dm.train_set))


# ----------------------------------------------------------------------------- the network object


def test_net_save_load_gives_the_same_predictions(labels_file: Path, trained, tmp_path: Path) -> None:
    labels = load_scene_labels(labels_file)
    q = next(q for q in labels.queries if q.found)
    torch.manual_seed(0)
    net = LabelFree3DNet(NetConfig(unet=TINY, voxel_size=NET_VOXEL))
    net.train()
    net(voxelise_batch(labels))  # move BatchNorm running statistics away from their initial values
    before = net.predict(labels.points, labels.colors, q.unified)
    assert before.shape == (len(labels.points),) and before.dtype == np.float32
    assert ((before >= 0) & (before <= 1)).all()
    loaded = LabelFree3DNet.load(net.save(tmp_path / "net.pt", meta={"note": "test"}))
    np.testing.assert_array_equal(loaded.predict(labels.points, labels.colors, q.unified), before)
    assert loaded.config == net.config and loaded.checkpoint_meta == {"note": "test"}
    mask = loaded.predict_mask(labels.points, labels.colors, q.unified)
    np.testing.assert_array_equal(mask, before > 0.5)
    # predict() sees the voxels of an un-augmented training item; each point gets its voxel's value.
    ds = PseudoLabelDataset([labels_file], DataConfig(voxel_size=NET_VOXEL), augment=False)
    item = ds.item(0)
    batch = collate([item])
    net.eval()
    with torch.no_grad():
        feats = net(SparseTensor.from_coords(batch["coords"], batch["feats"]))
        prob = net.query_head.probabilities(feats, torch.from_numpy(item["embedding"])).numpy()
    q0 = labels.queries[item["key"][1]]
    np.testing.assert_allclose(
        net.predict(labels.points, labels.colors, q0.unified), prob[item["inverse"]], atol=1e-6
    )

    # The trainer's exports load too, and agree with each other.
    out, _ = trained
    exported = LabelFree3DNet.load(out / "model.pt")
    from_ckpt = LabelFree3DNet.load(out / "checkpoints" / "last.ckpt")
    assert exported.config.unet.out_channels == 32  # the "tiny" preset
    got = exported.predict(labels.points, labels.colors, q.unified)
    assert got.shape == (len(labels.points),)
    # The last checkpoint holds the same trained weights as the export: the same predictions, and
    # not those of a freshly initialised net of the same preset.
    np.testing.assert_allclose(from_ckpt.predict(labels.points, labels.colors, q.unified), got, atol=1e-6)
    fresh = LabelFree3DNet(exported.config).predict(labels.points, labels.colors, q.unified)
    assert np.abs(fresh - got).max() > 1e-3
    with pytest.raises(ValueError, match="embedding"):
        from_ckpt.predict(labels.points, labels.colors, q.unified[:10])


def voxelise_batch(labels) -> SparseTensor:
    vox = voxelise(centred(labels.points), labels.colors, NET_VOXEL)
    return SparseTensor.from_batch([torch.from_numpy(vox.coords)], [torch.from_numpy(vox.feats)])


def test_corrupt_and_foreign_checkpoints_give_a_clear_error(tmp_path: Path) -> None:
    net = LabelFree3DNet(NetConfig(unet=TINY, voxel_size=NET_VOXEL))
    path = net.save(tmp_path / "net.pt")
    with pytest.raises(FileNotFoundError):
        LabelFree3DNet.load(tmp_path / "missing.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        LabelFree3DNet.load(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        LabelFree3DNet.load(tmp_path / "text.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a reasoning_seg.label_free_3d_net checkpoint"):
        LabelFree3DNet.load(tmp_path / "foreign.pt")
    state = torch.load(path, weights_only=True)
    state["config"]["unet"]["out_channels"] = 24  # weights no longer fit
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        LabelFree3DNet.load(tmp_path / "mismatch.pt")
    state["config"]["unet"]["bogus"] = 1
    torch.save(state, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="bogus"):
        LabelFree3DNet.load(tmp_path / "unknown.pt")
