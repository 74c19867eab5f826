"""The benchmark runner end to end on a tiny scene set, and its experiment-file validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from reasoning_seg.eval.benchmark import (
    Experiment,
    build_map,
    main,
    make_segmenter,
    prepare_scene,
    run_experiment,
)

TINY = {
    "title": "tiny",
    "scenes": {"seeds": [3], "frames": 24, "width": 160, "height": 120, "depth_noise": False},
    "base_params": {"map.voxel_size": 0.05, "views.num_views": 4},
    "rows": [
        {"name": "naive oracle", "params": {"fusion.method": "naive"}, "profile": "oracle"},
        {"name": "naive lisa", "params": {"fusion.method": "naive"}, "profile": "lisa7b"},
    ],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = run_experiment(Experiment.from_dict(TINY), out, pictures=2, log=lambda m: None)
    return out, doc


def test_writes_json_markdown_and_failure_pictures(tiny_run):
    out, doc = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["naive oracle", "naive lisa"]
    n_queries = sum(sum(s["queries"].values()) for s in saved["scene_info"])
    assert all(len(v) == n_queries for v in saved["queries"].values())
    md = (out / "results.md").read_text()
    assert "| naive oracle | oracle |" in md and "Acc@0.25" in md and "by query kind" in md
    assert doc["pictures"]
    assert all((out / "failures").joinpath(p.split("/")[-1]).is_file() for p in doc["pictures"])
    # One page shows every failure's cut-away picture (inlined), with the row and query named.
    page = (out / "failures" / "index.html").read_text(encoding="utf-8")
    cutaways = [p for p in doc["pictures"] if p.endswith("-cutaway.png")]
    assert cutaways and page.count("data:image/png;base64,") == len(cutaways) == len(doc["pictures"]) // 2
    assert "[naive lisa]" in page or "[naive oracle]" in page
    assert (out / "scenes").is_dir()  # the recording is cached for the next run


def test_oracle_scores_well_and_beats_the_simulated_lisa(tiny_run):
    _, doc = tiny_run
    oracle, lisa = (r["summary"] for r in doc["rows"])
    assert oracle["overall"]["queries"] > 10
    assert oracle["overall"]["acc_25"] > 0.6
    assert oracle["overall"]["miou"] > lisa["overall"]["miou"]
    assert oracle["false_found_rate"] == 0.0  # a perfect 2D model never sees an absent target


def test_scores_are_consistent_with_ground_truth(tiny_run):
    _, doc = tiny_run
    for s in doc["queries"]["naive oracle"]:
        assert 0.0 <= s["iou"] <= 1.0
        if not s["found"]:
            assert s["iou"] == 0.0
        if s["target_id"] == 0:
            assert s["gt_points"] == 0 and s["category"] == ""


def _voxel_set(points, voxel: float) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in k) for k in np.floor(np.asarray(points) / voxel).astype(np.int64)}


def test_iou_recomputed_independently_for_some_queries(tiny_run):
    """Re-ask three queries and recompute voxel IoU with Python sets (not metrics.py's code)."""
    out, doc = tiny_run
    exp = Experiment.from_dict(TINY)
    row = exp.rows[1]  # the simulated LISA: imperfect answers, so IoU is not trivially 0 or 1
    scene, root = prepare_scene(3, exp.scenes, out / "scenes")
    cfg = exp.config_for(row)
    pipe, _ = build_map(root, cfg)
    pipe.segmenter = make_segmenter(scene, row, cfg)
    surface = pipe.surface()
    voxel = cfg.map.voxel_size
    labels = scene.label_points(surface.points, max_distance=1.5 * voxel)
    recorded = {s["query"]: s for s in doc["queries"][row.name]}
    picked = [q for q in exp.scenes.pick_queries(scene.queries, 3) if q.target_instance_id][:3]
    assert len(picked) == 3
    nontrivial = 0
    for q in picked:
        result = pipe.query(q.text)
        truth = _voxel_set(surface.points[labels == q.target_instance_id], voxel)
        pred = _voxel_set(result.points, voxel) if result.found else set()
        iou = len(pred & truth) / len(pred | truth) if pred | truth else 0.0
        assert recorded[q.text]["iou"] == pytest.approx(iou, abs=1e-9), q.text
        assert recorded[q.text]["found"] == result.found
        nontrivial += 0.0 < iou < 1.0
    assert nontrivial >= 1


def test_cli_overrides_and_table(tmp_path, capsys):
    exp = dict(TINY, rows=TINY["rows"][:1])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    table = tmp_path / "table.md"
    args = ["--out", str(tmp_path / "o"), "--frames", "12", "--size", "128x96", "--table", str(table)]
    rc = main([str(path), *args])
    assert rc == 0
    assert "| naive oracle |" in capsys.readouterr().out
    assert "12 frames each at 128x96" in table.read_text()


@pytest.mark.parametrize(
    "change, why",
    [
        ({"bogus": 1}, "unknown experiment keys"),
        ({"rows": []}, "at least one row"),
        ({"rows": [{"name": "a", "params": {"fusion.nope": 1}}]}, "unknown parameter"),
        ({"rows": [{"name": "a", "params": {"views.num_views": 0}}]}, "outside"),
        ({"rows": [{"name": "a", "params": {"map.voxel_size": 0.05}}]}, "changes the map"),
        ({"rows": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"scenes": {"seeds": []}}, "seeds is empty"),
    ],
)
def test_bad_experiment_files_are_refused_before_running(change, why):
    with pytest.raises(ValueError, match=why):
        Experiment.from_dict(dict(TINY, **change))


def test_cli_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\nrows: []\n")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "at least one row" in capsys.readouterr().err


def test_rows_with_pose_drift_get_their_own_recording_and_drift_aware_truth(tmp_path):
    """A drift row is scored against what its drifted map holds (sim/truth.py), beside a still row."""
    exp = dict(TINY, scenes=dict(TINY["scenes"], max_queries=12))
    exp["rows"] = [
        {"name": "oracle", "params": {}, "profile": "oracle"},
        {"name": "oracle, drift", "params": {}, "profile": "oracle", "pose_drift": 0.004},
        {
            "name": "oracle, drift, closed",
            "params": {},
            "profile": "oracle",
            "pose_drift": 0.004,
            "loop_closure": True,
        },
    ]
    doc = run_experiment(Experiment.from_dict(exp), tmp_path, pictures=0, log=lambda m: None)
    assert [(s["seed"], s["pose_drift"], s["loop_closure"]) for s in doc["scene_info"]] == [
        (3, 0.0, False),
        (3, 0.004, False),
        (3, 0.004, True),
    ]
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir()) == [
        "seed0003-160x120-24f-clean",
        "seed0003-160x120-24f-clean-drift0.004",
    ]
    still, drift, closed = (r["summary"]["overall"] for r in doc["rows"])
    # With the truth following the map, a perfect 2D model stays good under a few cm of drift, and
    # after the loop closure (true poses, map rebuilt from the keyframes) as good as without drift.
    assert still["acc_25"] > 0.6 and drift["acc_25"] > 0.5 and closed["acc_25"] > still["acc_25"] - 0.15
    md = (tmp_path / "results.md").read_text()
    assert "pose drift per row (0, 0.004 m/sqrt(frame))" in md
    with pytest.raises(ValueError, match="pose_drift"):
        Experiment.from_dict(dict(TINY, rows=[{"name": "x", "pose_drift": -1.0}]))
