"""The benchmark world's runner: a scene set, method rows, the papers' metrics, one table.

Why it exists: no real LISA and no real 3D dataset can be downloaded where this package is built,
so every method is judged in SIMULATED rooms (``reasoning_seg.sim``) with a SIMULATED LISA whose
failure modes are switchable. An *experiment* (YAML, see ``bench/experiments/``) names the scene set
and the rows; a row is a method configuration: pipeline parameter overrides (the same dotted names
the ROS node takes, e.g. ``fusion.method``) plus the simulated segmenter's profile. One command
generates the scenes (cached on disk), builds each map once, asks every query of every scene with
every row, and writes ``results.json``, ``results.md`` and pictures of the worst failures::

    python -m reasoning_seg.eval.benchmark bench/experiments/baselines.yaml --out out/bench/baselines

A row answers with the label-free 3D network (MLLM-For3D §3.3) by setting its checkpoint like any
other parameter, ``params: {net.checkpoint: out/net/model.pt}``; the table then says how many
queries the network answered and how many fell back to fusion (and the per-query messages why).
Training a network first and then evaluating it is :mod:`reasoning_seg.net.experiment`.

Metric definitions: :mod:`reasoning_seg.eval.metrics`. Ground truth: each map point is labelled with
the instance of the mesh surface it lies on (within 1.5 voxels); a query's truth is its target's
points *in this map*, so the numbers measure the query path, not how much of the room was scanned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import PipelineConfig
from reasoning_seg.eval.metrics import QueryScore, score_query, summarise
from reasoning_seg.io.sequence_io import FolderSequence
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.sim.truth import map_truth

__all__ = ["Experiment", "RowSpec", "SceneSetSpec", "main", "run_experiment", "write_markdown"]

#: Parameters a row may not change: the map is built once per scene and shared by every row.
_MAP_SECTIONS = ("map", "keyframes")


@dataclass
class SceneSetSpec:
    """Which simulated rooms to generate and how to record them."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    frames: int = 100
    width: int = 640
    height: int = 480
    depth_noise: bool = True
    pose_drift: float = 0.0
    max_queries: int = 0  # per scene, 0 = all; a sample stratified by query kind otherwise

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("scenes.seeds is empty")
        if self.frames < 2:
            raise ValueError(f"scenes.frames must be >= 2, got {self.frames}")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"scenes size {self.width}x{self.height} is too small")
        if self.pose_drift < 0:
            raise ValueError("scenes.pose_drift must be >= 0")
        if self.max_queries < 0:
            raise ValueError("scenes.max_queries must be >= 0")

    def pick_queries(self, queries: list[Any], seed: int) -> list[Any]:
        """All queries, or ``max_queries`` of them taken round-robin over kinds (seeded shuffle per kind).

        Rooms have well over a hundred verified queries, most of them spatial; a stratified sample
        keeps every kind represented when a run has to be short.
        """
        if not self.max_queries or len(queries) <= self.max_queries:
            return list(queries)
        rng = np.random.default_rng(seed)
        by_kind: dict[str, list[Any]] = {}
        for q in queries:
            by_kind.setdefault(q.kind, []).append(q)
        pools = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(by_kind.items())]
        picked: list[Any] = []
        while len(picked) < self.max_queries:
            for pool in pools:
                if pool and len(picked) < self.max_queries:
                    picked.append(pool.pop())
        return picked

    @property
    def intrinsics(self) -> CameraIntrinsics:
        """A Kinect-like pinhole camera (fx = fy = 525 at 640x480), scaled to the set's resolution."""
        return CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5).scaled(self.width, self.height)

    def cache_key(self, seed: int) -> str:
        """Folder name of one recorded scene: everything that changes the recording is in it."""
        noise = "noisy" if self.depth_noise else "clean"
        drift = f"-drift{self.pose_drift:g}" if self.pose_drift else ""
        return f"seed{seed:04d}-{self.width}x{self.height}-{self.frames}f-{noise}{drift}"


@dataclass
class RowSpec:
    """One method configuration: a line of the table."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    profile: str = "lisa7b"
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    # Pose drift of this row's recordings (m / sqrt(frame), SLAM-like random walk; None = the scene
    # set's). Rows with the same drift share one map per room.
    pose_drift: float | None = None
    # Simulate a loop closure before the queries: the keyframes take the recording's true poses
    # (Pipeline.correct_poses) and the map is rebuilt from them; truth is then the mesh's labels.
    loop_closure: bool = False

    def __post_init__(self) -> None:
        if self.pose_drift is not None and not (math.isfinite(self.pose_drift) and self.pose_drift >= 0):
            raise ValueError(f"row '{self.name}': pose_drift must be >= 0, got {self.pose_drift}")


@dataclass
class Experiment:
    """A scene set and the rows to compare on it (usually loaded from YAML)."""

    title: str
    scenes: SceneSetSpec
    rows: list[RowSpec]
    description: str = ""
    base_params: dict[str, Any] = field(default_factory=dict)
    min_gt_points: int = 20

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        """Build from the YAML mapping; errors name the bad key."""
        if not isinstance(d, dict):
            raise ValueError("an experiment file must hold a mapping")
        unknown = set(d) - {"title", "description", "scenes", "rows", "base_params", "min_gt_points"}
        if unknown:
            raise ValueError(f"unknown experiment keys {sorted(unknown)}")
        try:
            scenes = SceneSetSpec(**(d.get("scenes") or {}))
            rows = [RowSpec(**r) for r in d.get("rows") or []]
        except TypeError as exc:
            raise ValueError(f"malformed experiment: {exc}") from exc
        if not rows:
            raise ValueError("an experiment needs at least one row")
        names = [r.name for r in rows]
        if len(set(names)) != len(names):
            raise ValueError(f"row names must be unique: {names}")
        exp = cls(
            title=str(d.get("title", "benchmark")),
            description=str(d.get("description", "")),
            scenes=scenes,
            rows=rows,
            base_params=dict(d.get("base_params") or {}),
            min_gt_points=int(d.get("min_gt_points", 20)),
        )
        for row in exp.rows:  # fail before hours of work, not after
            exp.config_for(row)
            if any(k.split(".", 1)[0] in _MAP_SECTIONS for k in row.params):
                raise ValueError(f"row '{row.name}' changes the map; put map.* / keyframes.* in base_params")
        return exp

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        """Load an experiment file."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def config_for(self, row: RowSpec) -> PipelineConfig:
        """The pipeline configuration of a row: defaults, then ``base_params``, then the row's params."""
        cfg = PipelineConfig()
        cfg.update(self.base_params)
        cfg.update(row.params)
        return cfg


# ---------------------------------------------------------------------------------------------
# Scenes and maps
# ---------------------------------------------------------------------------------------------


def prepare_scene(seed: int, spec: SceneSetSpec, cache_dir: Path) -> tuple[Any, Path]:
    """Generate and record one simulated room, or reuse the recording cached under ``cache_dir``."""
    from reasoning_seg.sim.scene import SyntheticScene

    root = cache_dir / spec.cache_key(seed)
    done = root / "recorded.ok"
    scene = SyntheticScene.generate(seed)
    if not done.is_file():
        if root.exists():  # an interrupted recording: start it over
            import shutil

            shutil.rmtree(root)
        poses = scene.trajectory(spec.frames, seed=seed)
        kwargs: dict[str, Any] = {"depth_noise": spec.depth_noise, "noise_seed": seed}
        if spec.pose_drift:
            kwargs["pose_drift"] = spec.pose_drift
        scene.record_sequence(root, spec.intrinsics, poses, **kwargs)
        done.write_text("ok\n")
    return scene, root


def build_map(sequence_dir: Path, config: PipelineConfig) -> tuple[ReasoningSegPipeline, float]:
    """Integrate a recorded sequence into a fresh pipeline; returns it and the seconds it took."""
    pipe = ReasoningSegPipeline(config)
    t0 = time.perf_counter()
    for frame in FolderSequence(sequence_dir):
        try:
            pipe.add_frame(frame)
        except ValueError:  # rejected frames are counted in pipe.stats; the map goes on
            continue
    return pipe, time.perf_counter() - t0


def make_segmenter(scene: Any, row: RowSpec, config: PipelineConfig) -> Any:
    """The SIMULATED LISA of a row (profile preset plus overrides)."""
    from reasoning_seg.sim import simulated_segmenter as sim

    profile = sim.PROFILES[row.profile]
    if row.profile_overrides:
        profile = dataclasses.replace(profile, **row.profile_overrides)
    return sim.SimulatedSegmenter(
        scene,
        embedding_dim=config.segmenter.embedding_dim,
        profile=profile,
        seed=config.segmenter.sim_seed,
        embedding_mix=sim.seg_embedding_mix(config.segmenter.sim_instance_weight),
    )


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    score: QueryScore
    predicted: np.ndarray
    truth: np.ndarray
    points: np.ndarray
    colors: np.ndarray


def _worst(failures: list[_Failure], limit: int) -> list[_Failure]:
    # Wrong answers first (false found on absent targets, then lowest IoU), larger targets first.
    return sorted(failures, key=lambda f: (not f.score.absent or not f.score.found, f.score.iou))[:limit]


def run_experiment(
    exp: Experiment, out_dir: str | Path, cache_dir: str | Path | None = None, pictures: int = 4, log=print
) -> dict[str, Any]:
    """Run every row on every scene; write ``results.json``, ``results.md`` and failure PNGs.

    Returns the results document (what ``results.json`` holds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "scenes"
    scores: dict[str, list[QueryScore]] = {r.name: [] for r in exp.rows}
    methods: dict[str, Counter] = {r.name: Counter() for r in exp.rows}
    failures: dict[str, list[_Failure]] = {r.name: [] for r in exp.rows}
    scene_info: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def group(r: RowSpec) -> tuple[float, bool]:
        return (exp.scenes.pose_drift if r.pose_drift is None else r.pose_drift, r.loop_closure)

    groups = sorted({group(r) for r in exp.rows})
    for seed, (drift, closed) in ((seed, g) for seed in exp.scenes.seeds for g in groups):
        rows = [r for r in exp.rows if group(r) == (drift, closed)]
        spec = dataclasses.replace(exp.scenes, pose_drift=drift)
        t0 = time.perf_counter()
        scene, root = prepare_scene(seed, spec, cache)
        t_scene = time.perf_counter() - t0
        base = exp.config_for(rows[0])
        pipe, t_map = build_map(root, base)
        voxel = base.map.voxel_size
        if closed:
            seq = FolderSequence(root)
            report = pipe.correct_poses(
                [(n / seq.fps, seq.gt_pose(i)) for i, n in enumerate(seq.frame_numbers)]
            )
            log(
                f"[bench] scene {seed}: loop closure moved {report.keyframes_moved} of {report.keyframes} "
                f"keyframes (at most {report.max_shift_m:.3f} m), map rebuilt in {report.seconds:.1f} s"
            )
            surface = pipe.surface()
            labels = scene.label_points(surface.points, max_distance=1.5 * voxel)
        else:
            surface = pipe.surface()
            # Truth as the (possibly drifted) map holds it (sim/truth.py); without drift, the mesh labels.
            labels = map_truth(scene, root, surface.points, max_distance=1.5 * voxel)
        queries = exp.scenes.pick_queries(scene.queries, seed)
        kinds = Counter(q.kind for q in queries)
        scene_info.append(
            {
                "seed": seed,
                "pose_drift": drift,
                "loop_closure": closed,
                "objects": len(scene.objects),
                "queries": dict(kinds),
                "map_points": len(surface),
                "frames_integrated": pipe.stats.frames_integrated,
                "keyframes": len(pipe.keyframes),
                "record_s": round(t_scene, 2),
                "map_s": round(t_map, 2),
            }
        )
        log(
            f"[bench] scene {seed} (drift {drift:g}): {len(queries)} queries, {len(surface)} map points, "
            f"{pipe.stats.frames_integrated} frames in {t_map:.1f} s (recording {t_scene:.1f} s)"
        )
        for row in rows:
            t_row = time.perf_counter()
            pipe.config = exp.config_for(row)
            pipe.segmenter = make_segmenter(scene, row, pipe.config)
            for q in queries:
                target = q.target_instance_id
                truth = labels == target if target else np.zeros(len(surface), dtype=bool)
                result = pipe.query(q.text)
                methods[row.name][result.method or "none"] += 1
                category = scene.object(target).category if target else ""
                s = score_query(
                    f"seed{seed}",
                    q.text,
                    q.kind,
                    category,
                    target,
                    result.found,
                    result.points,
                    surface.points[truth],
                    voxel,
                    message=result.message,
                    timings=result.timings,
                )
                scores[row.name].append(s)
                wrong = (s.absent and s.found) or (
                    not s.absent and s.gt_points >= exp.min_gt_points and s.iou < 0.5
                )
                if wrong and pictures > 0:
                    predicted = (
                        _points_mask(surface.points, result.points, voxel)
                        if result.found
                        else np.zeros(len(surface), dtype=bool)
                    )
                    failures[row.name].append(_Failure(s, predicted, truth, surface.points, surface.colors))
                    failures[row.name] = _worst(failures[row.name], pictures)
            log(f"[bench]   {row.name}: {len(queries)} queries in {time.perf_counter() - t_row:.1f} s")
    doc: dict[str, Any] = {
        "title": exp.title,
        "description": exp.description,
        "command": " ".join(["python -m reasoning_seg.eval.benchmark", *sys.argv[1:]]),
        "scenes": dataclasses.asdict(exp.scenes),
        "scene_info": scene_info,
        "base_params": exp.base_params,
        "min_gt_points": exp.min_gt_points,
        "cpu_count": os.cpu_count(),
        "total_s": round(time.perf_counter() - t_start, 1),
        "rows": [
            {
                "name": r.name,
                "params": r.params,
                "profile": r.profile,
                "profile_overrides": r.profile_overrides,
                "pose_drift": exp.scenes.pose_drift if r.pose_drift is None else r.pose_drift,
                "loop_closure": r.loop_closure,
                "methods": dict(methods[r.name]),
                "summary": summarise(scores[r.name], exp.min_gt_points),
            }
            for r in exp.rows
        ],
        "queries": {name: [s.to_dict() for s in ss] for name, ss in scores.items()},
    }
    doc["pictures"] = _write_pictures(failures, out / "failures", exp.config_for(exp.rows[0]).map.voxel_size)
    (out / "results.json").write_text(json.dumps(_json_safe(doc), indent=1) + "\n")
    (out / "results.md").write_text(write_markdown(doc))
    return doc


def _points_mask(map_points: np.ndarray, points: np.ndarray, voxel: float) -> np.ndarray:
    """Which map points share a voxel with ``points`` (result points are a subset of the map's)."""
    grid = np.floor(np.asarray(map_points) / voxel).astype(np.int64)
    pred = np.floor(np.asarray(points).reshape(-1, 3) / voxel).astype(np.int64)
    lo = grid.min(axis=0, initial=0) if len(grid) else np.zeros(3, np.int64)
    lo = np.minimum(lo, pred.min(axis=0, initial=0))
    span = np.maximum(grid.max(axis=0, initial=0), pred.max(axis=0, initial=0)) - lo + 1

    def linear(k: np.ndarray) -> np.ndarray:
        k = k - lo
        return (k[:, 0] * span[1] + k[:, 1]) * span[2] + k[:, 2]

    return np.isin(linear(grid), linear(pred))


def _write_pictures(failures: dict[str, list[_Failure]], directory: Path, voxel: float) -> list[str]:
    """One picture per failure (top and side view; cut-away view) and ``index.html`` showing them all."""
    from reasoning_seg.report.figure import comparison_figure
    from reasoning_seg.report.page import ReportEntry, write_report
    from reasoning_seg.report.visualize import render_comparison_picture

    written, entries = [], []
    for row, items in failures.items():
        for i, f in enumerate(items):
            directory.mkdir(parents=True, exist_ok=True)
            slug = "".join(c if c.isalnum() else "_" for c in row).strip("_")[:40]
            path = directory / f"{slug}-{i}.png"
            what = "absent target, answered found" if f.score.absent else f"IoU {f.score.iou:.2f}"
            title = f"[{row}] {f.score.scene}: '{f.score.query}' ({what})"
            render_comparison_picture(path, f.points, f.colors, f.predicted, f.truth, title)
            cut = comparison_figure(
                path.with_name(f"{slug}-{i}-cutaway.png"),
                title,
                f.points,
                f.colors,
                f.predicted,
                f.truth,
                voxel,
            )
            written += [str(path), str(cut)]
            s = f.score
            why = (
                "the target is not in this room, yet the answer says found (red: what it returned)"
                if s.absent
                else f"precision {s.precision:.0%}, recall {s.recall:.0%}: red = answer off the target, "
                "green = target missed, yellow = right"
            )
            entries.append(
                ReportEntry(
                    f"[{row}] {s.scene}: {s.query}",
                    s.found,
                    s.message,
                    s.pred_points,
                    0.0,
                    "",
                    s.kind,
                    None if s.absent else s.iou,
                    "",
                    why,
                    s.timings,
                    cut,
                )
            )
    if entries:
        write_report(
            directory / "index.html",
            "reasoning_seg benchmark: worst failures per row",
            entries,
            intro="SIMULATED rooms and 2D model. Each picture: the map as a cut-away model with the answer "
            "against ground truth.",
        )
    return written


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def write_markdown(doc: dict[str, Any]) -> str:
    """The results as Markdown: main table, breakdowns by query kind and by category, timings."""
    lines = [f"# {doc['title']}", ""]
    if doc.get("description"):
        lines += [doc["description"].strip(), ""]
    sc = doc["scenes"]
    drifts = sorted({r.get("pose_drift", sc["pose_drift"]) for r in doc["rows"]})
    # Queries per room count once, however many drift levels re-record the room.
    first = [
        s
        for s in doc["scene_info"]
        if s.get("pose_drift", sc["pose_drift"]) == drifts[0] and not s.get("loop_closure")
    ] or doc["scene_info"]
    n_queries = sum(sum(s["queries"].values()) for s in first)
    drift_text = (
        f"{drifts[0]}"
        if len(drifts) == 1
        else f"per row ({', '.join(f'{d:g}' for d in drifts)} m/sqrt(frame))"
    )
    lines += [
        f"Reproduce: `{doc['command']}`",
        "",
        f"Scene set: {len(sc['seeds'])} SIMULATED rooms (seeds {sc['seeds']}), {sc['frames']} frames each at "
        f"{sc['width']}x{sc['height']}, depth noise {'on' if sc['depth_noise'] else 'off'}, pose drift "
        f"{drift_text}; {n_queries} queries. 2D model: SIMULATED LISA (profile per row). "
        f"Run on {doc['cpu_count']} CPU cores in {doc['total_s']} s.",
        "",
        "Acc@k: % of queries with 3D IoU >= k; mIoU: mean IoU over the same queries (misses count 0); "
        "mIoU|grounded: mean IoU of queries with IoU >= 0.25; false found: % of absent-target queries "
        "answered 'found'. Definitions: `reasoning_seg.eval.metrics`.",
        "",
        "| Method | 2D model | Acc@0.25 | Acc@0.5 | mIoU | mIoU\\|grounded | false found | found "
        "| query p50 (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        s, o = r["summary"], r["summary"]["overall"]
        prof = r["profile"] + (f" {r['profile_overrides']}" if r["profile_overrides"] else "")
        lines.append(
            f"| {r['name']} | {prof} | {_pct(o['acc_25'])} | {_pct(o['acc_50'])} | {_pct(o['miou'])} | "
            f"{_pct(o['miou_grounded'])} | {_pct(s['false_found_rate'])} | {_pct(s['found_rate'])} | "
            f"{s['timing']['query_p50_s']:.3f} |"
        )
    for key, label in (("by_kind", "query kind"), ("by_category", "target category")):
        groups = sorted({g for r in doc["rows"] for g in r["summary"][key]})
        if not groups:
            continue
        lines += ["", f"## Acc@0.5 / mIoU by {label}", ""]
        lines.append("| Method | " + " | ".join(f"{g} (n={_group_n(doc, key, g)})" for g in groups) + " |")
        lines.append("|---|" + "---|" * len(groups))
        for r in doc["rows"]:
            cells = []
            for g in groups:
                v = r["summary"][key].get(g)
                cells.append("–" if v is None else f"{_pct(v['acc_50'])} / {_pct(v['miou'])}")
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    stages = sorted({k for r in doc["rows"] for k in r["summary"]["timing"]["stage_mean_s"]})
    if stages:
        lines += ["", "## Mean seconds per query stage", ""]
        lines.append("| Method | " + " | ".join(stages) + " | p95 query |")
        lines.append("|---|" + "---|" * (len(stages) + 1))
        for r in doc["rows"]:
            t = r["summary"]["timing"]
            cells = [f"{t['stage_mean_s'].get(st, float('nan')):.4f}" for st in stages]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {t['query_p95_s']:.3f} |")
    if any(not m.startswith("fusion") for r in doc["rows"] for m in r.get("methods", {})):
        lines += ["", "## Which method answered", ""]
        for r in doc["rows"]:
            counts = ", ".join(f"{m}: {n}" for m, n in sorted(r.get("methods", {}).items()))
            lines.append(f"- **{r['name']}**: {counts}")
    rows_params = [f"- **{r['name']}**: `{json.dumps(r['params'])}`" for r in doc["rows"]]
    lines += [
        "",
        "## Row configurations",
        "",
        f"Common: `{json.dumps(doc['base_params'])}`",
        "",
        *rows_params,
    ]
    if doc.get("pictures"):
        lines += ["", f"Failure pictures: {len(doc['pictures'])} PNGs next to results.json (failures/)."]
    return "\n".join(lines) + "\n"


def _group_n(doc: dict[str, Any], key: str, group: str) -> int:
    first = doc["rows"][0]["summary"][key].get(group)
    return int(first["queries"]) if first else 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """Room seeds from the command line: ``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ValueError if malformed)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Command line: run an experiment file, print the Markdown table, optionally copy it into the repo."""
    p = argparse.ArgumentParser(
        prog="python -m reasoning_seg.eval.benchmark", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("experiment", help="experiment YAML (see bench/experiments/)")
    p.add_argument("--out", default="out/bench", help="output folder (results.json, results.md, failures/)")
    p.add_argument("--cache", default="", help="where recorded scenes are kept (default: OUT/scenes)")
    p.add_argument("--seeds", default="", help="override the scene seeds, e.g. 0-3 or 1,5,9")
    p.add_argument("--frames", type=int, default=0, help="override frames per scene")
    p.add_argument("--size", default="", help="override resolution WxH, e.g. 320x240")
    p.add_argument("--pictures", type=int, default=4, help="failure pictures per row")
    p.add_argument("--table", default="", help="also write the Markdown table to this path")
    a = p.parse_args(argv)
    try:
        exp = Experiment.from_yaml(a.experiment)
        if a.seeds:
            exp.scenes.seeds = parse_seeds(a.seeds)
        if a.frames:
            exp.scenes.frames = a.frames
        if a.size:
            w, h = (int(v) for v in a.size.lower().split("x"))
            exp.scenes.width, exp.scenes.height = w, h
        exp.scenes.__post_init__()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc = run_experiment(exp, a.out, a.cache or None, a.pictures, log=lambda m: print(m, file=sys.stderr))
    table = write_markdown(doc)
    print(table)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
