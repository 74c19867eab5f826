"""MLLM-For3D Table 4 (b, c) in the benchmark world: train on pseudo-labels, evaluate on unseen rooms.

The benchmark runner (:mod:`reasoning_seg.eval.benchmark`) compares query-time methods on one scene set;
the label-free 3D network first has to be trained on *other* scenes, so this runner chains the
three steps, each with the package's own code:

1. record SIMULATED training rooms and write their pseudo-labels (:mod:`reasoning_seg.net.pseudo_labels`:
   the node's own view selection and fusion, the SIMULATED LISA-7B at its default failure rates,
   SIMULATED SAM features for Eq. 2);
2. train one network per Table-4 variant (:mod:`reasoning_seg.net.train`): the full loss (Eq. 3 =
   Eq. 1 + lambda Eq. 2), without spatial consistency (Table 4 (c): Eq. 1 only), and without
   token-for-query (Table 4 (b), see below);
3. evaluate on held-out rooms with :func:`reasoning_seg.eval.benchmark.run_experiment`: the naive
   projection (Table 4 (a)), fusion only (the node's default), and the node answering with each
   network (``net.checkpoint``); Acc@0.25 / Acc@0.5 / mIoU as defined in :mod:`reasoning_seg.eval.metrics`.

"w/o token-for-query" (Table 4 (b)), our definition: Eq. 1 is the only loss that involves the
query, so with it off nothing trains the projection of the ``[SEG]`` embedding and the network
could not answer a query at all. The paper does not say what replaces it. Here the backbone is
trained with Eq. 2 alone, then (backbone frozen) the linear query projection is fitted by BCE
against the *fused 3D pseudo-label* (each voxel's mean fused probability) instead of the per-view
2D predictions of Eq. 1 (:func:`fit_query_projection`). The row therefore measures what the
token-for-query pairing with 2D logits adds over supervising the query with the fused 3D labels.

Scales: the default runs on 2 CPU cores in well under 25 minutes (a narrow U-Net, low resolution,
few rooms); ``--full`` is the GPU scale (MinkowskiNet14, 640x480, more rooms and steps). Every
number comes from SIMULATED rooms and a SIMULATED 2D model: it ranks the variants, it does not
predict real-world accuracy.

Command line::

    python -m reasoning_seg.net.experiment --out out/net_ablation --table bench/results/net_ablation.md
    python -m reasoning_seg.net.experiment --full --out out/net_ablation_full   # on the GPU machine
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reasoning_seg.config import PipelineConfig
from reasoning_seg.eval.benchmark import (
    Experiment,
    RowSpec,
    SceneSetSpec,
    parse_seeds,
    prepare_scene,
    run_experiment,
)
from reasoning_seg.net.ablation_config import (
    _NAIVE_PARAMS,
    ALIGNMENT_TARGETS,
    ALL_VARIANTS,
    EXTRA_VARIANTS,
    FUSION_ROW,
    NAIVE_ROW,
    SCALES,
    VARIANTS,
    AblationScale,
    Log,
    Variant,
    _fingerprint,
    _matches,
    _variants,
)
from reasoning_seg.net.ablation_report import (
    write_markdown,
)
from reasoning_seg.net.pseudo_labels import (
    PseudoLabelOptions,
    generate_scene_labels,
    load_scene_labels,
    save_scene_labels,
)
from reasoning_seg.net.scene_queries import (
    SceneQueriesDataset,
    SceneQueriesModule,
    collate_scene_queries,
    fit_query_projection,
    train_scene_queries,
    train_variant,
)
from reasoning_seg.sim.simulated_segmenter import seg_embedding_mix

__all__ = [
    "ALIGNMENT_TARGETS",
    "ALL_VARIANTS",
    "SCALES",
    "EXTRA_VARIANTS",
    "VARIANTS",
    "AblationScale",
    "SceneQueriesDataset",
    "SceneQueriesModule",
    "Variant",
    "collate_scene_queries",
    "fit_query_projection",
    "main",
    "run_ablation",
    "train_scene_queries",
    "train_variant",
    "write_markdown",
]

# ---------------------------------------------------------------------------------------------
# 1. Pseudo-labels
# ---------------------------------------------------------------------------------------------


def make_pseudo_labels(
    scale: AblationScale, out: Path, cache: Path, reuse: bool = True, log: Log = print
) -> tuple[list[Path], dict[str, Any]]:
    """Record the training rooms and write one pseudo-label file per room (reused when unchanged).

    Returns the files and statistics: queries, queries fusion found a target for (the training
    items), and the fused pseudo-label's quality against the SIMULATION's ground truth.
    """
    spec = scale.scene_spec(scale.train_seeds, scale.train_queries)
    cfg = PipelineConfig()
    cfg.update(scale.base_params())
    opts = PseudoLabelOptions(max_pairs_per_view=scale.max_pairs_per_view)
    fp = _fingerprint(
        {
            "spec": dataclasses.asdict(spec),
            "config": cfg.flat(),
            "options": dataclasses.asdict(opts),
            "seg_embedding_mix": seg_embedding_mix(scale.instance_weight),
        }
    )
    folder = out / "pseudo"
    stamp = folder / "fingerprint.json"
    if not (reuse and _matches(stamp, fp)):
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    # Stamp first: each room's file appears atomically, so a run killed half-way (a time-limited
    # command on the GPU machine) leaves valid files of this configuration that the next run keeps.
    stamp.write_text(json.dumps({"fingerprint": fp}) + "\n")
    t0 = time.perf_counter()
    files = [folder / f"{spec.cache_key(seed)}.npz" for seed in spec.seeds]
    todo = [(seed, path) for seed, path in zip(spec.seeds, files, strict=True) if not path.is_file()]
    args = [
        (seed, dataclasses.asdict(spec), cfg.flat(), dataclasses.asdict(opts), str(cache), str(path))
        for seed, path in todo
    ]
    if scale.label_workers > 1 and len(todo) > 1:
        # spawn, not fork: the parent may already run torch's thread pool, which fork would break.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            min(scale.label_workers, len(todo)), mp_context=ctx
        ) as pool:
            for msg in pool.map(_label_room, *zip(*args, strict=True)):
                log(msg)
    else:
        for a in args:
            log(_label_room(*a))
    stats = _label_stats(files)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    (folder / "stats.json").write_text(json.dumps(_json_safe(stats)) + "\n")  # for --eval-only
    return files, stats


def _label_room(
    seed: int, spec: dict[str, Any], params: dict[str, Any], opts: dict[str, Any], cache: str, path: str
) -> str:
    """Record one room (cached) and write its pseudo-labels; picklable, for worker processes."""
    torch.set_num_threads(1)
    scene_spec = SceneSetSpec(**spec)
    cfg = PipelineConfig()
    cfg.update(params)
    scene, root = prepare_scene(seed, scene_spec, Path(cache))
    t0 = time.perf_counter()
    labels = generate_scene_labels(
        root, cfg, scene_spec.pick_queries(scene.queries, seed), PseudoLabelOptions(**opts)
    )
    save_scene_labels(labels, path)
    return (
        f"[ablation] {root.name}: {len(labels.queries)} queries labelled in {time.perf_counter() - t0:.1f} s"
    )


def _label_stats(files: Sequence[Path]) -> dict[str, Any]:
    queries = found = 0
    ious: list[float] = []
    for f in files:
        labels = load_scene_labels(f)
        for q in labels.queries:
            queries += 1
            found += q.found
            truth = labels.gt_mask(q)
            if q.found and truth is not None and q.target_id > 0 and truth.any():
                pred = q.probability >= 0.5
                ious.append(float((pred & truth).sum() / max(1, (pred | truth).sum())))
    return {
        "rooms": len(files),
        "queries": queries,
        "found": found,
        "fused_point_iou_mean": float(np.mean(ious)) if ious else math.nan,
        "fused_point_acc50": float(np.mean(np.array(ious) >= 0.5)) if ious else math.nan,
    }


# ---------------------------------------------------------------------------------------------
# 3. Evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_experiment(scale: AblationScale, models: dict[str, Path]) -> Experiment:
    """The held-out benchmark: Table 4 (a), fusion only, and the node answering with each network."""
    rows = [
        RowSpec(NAIVE_ROW, dict(_NAIVE_PARAMS)),
        RowSpec(FUSION_ROW, {}),
    ]
    for v in ALL_VARIANTS:
        if v.key in models:
            rows.append(
                RowSpec(
                    v.name,
                    {
                        "net.checkpoint": str(models[v.key]),
                        "net.device": scale.net_device,
                    },
                )
            )
    return Experiment(
        title="Label-free 3D network ablation (MLLM-For3D Table 4) on held-out SIMULATED rooms",
        scenes=scale.scene_spec(scale.test_seeds, scale.test_queries),
        rows=rows,
        description="",
        base_params=scale.base_params(),
    )


def run_ablation(
    scale: AblationScale,
    out: str | Path,
    cache: str | Path | None = None,
    variants: Sequence[str] | None = None,
    reuse: bool = True,
    seed: int = 0,
    log: Log = print,
    stop_after: str = "",
    eval_only: bool = False,
) -> dict[str, Any]:
    """Pseudo-labels -> training -> held-out evaluation; writes ``OUT/ablation.json`` and returns it.

    ``stop_after`` "labels" or "train" ends early (returns the partial result, writes nothing): with
    the reuse of unchanged pseudo-labels and models, a long run can be split into short commands.
    ``eval_only`` evaluates the models already in ``OUT/train/<variant>/`` (with the label and
    training summaries stored beside them) without the pseudo-labels, e.g. on another machine.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache) if cache else out / "scenes"
    t0 = time.perf_counter()
    if scale.threads > 0:
        torch.set_num_threads(scale.threads)
    chosen = _variants(variants)
    models: dict[str, Path] = {}
    training: dict[str, Any] = {}
    if eval_only:
        try:
            label_stats = json.loads((out / "pseudo" / "stats.json").read_text())
            for v in chosen:
                models[v.key] = out / "train" / v.key / "model.pt"
                training[v.key] = json.loads((out / "train" / v.key / "experiment.json").read_text())[
                    "summary"
                ]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(
                f"--eval-only needs the stored labels summary and trained models: {exc}"
            ) from exc
    else:
        files, label_stats = make_pseudo_labels(scale, out, cache_dir, reuse, log)
        log(f"[ablation] pseudo-labels: {label_stats}")
        if stop_after == "labels":
            return {"pseudo_labels": label_stats}
        for v in chosen:
            models[v.key], training[v.key] = train_variant(v, scale, files, out, reuse, seed, log)
    if stop_after == "train":
        return {"pseudo_labels": label_stats, "training": training}
    t_eval = time.perf_counter()
    exp = evaluation_experiment(scale, models)
    doc = run_experiment(exp, out / "eval", cache_dir, pictures=0, log=log)
    result = {
        "scale": dataclasses.asdict(scale),
        "seg_embedding_mix": list(seg_embedding_mix(scale.instance_weight)),
        "pseudo_labels": label_stats,
        "training": training,
        "variants": [dataclasses.asdict(v) for v in chosen],
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "evaluation": doc,
        "command": " ".join(["python -m reasoning_seg.net.experiment", *sys.argv[1:]]),
    }
    (out / "ablation.json").write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    return result


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m reasoning_seg.net.experiment``."""
    p = argparse.ArgumentParser(
        prog="python -m reasoning_seg.net.experiment",
        description="Train the label-free 3D network on pseudo-labels of SIMULATED rooms and evaluate "
        "the Table 4 variants on held-out rooms.",
    )
    p.add_argument("--out", default="out/net_ablation", help="output folder")
    p.add_argument("--cache", default="", help="recorded-room cache (default OUT/scenes)")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset (SCALES)")
    p.add_argument("--full", action="store_true", help="same as --scale full")
    p.add_argument("--table", default="", help="also write the Markdown table here")
    keys = [v.key for v in ALL_VARIANTS]
    p.add_argument("--variants", default="", help=f"comma list of {keys} (default: the Table 4 rows)")
    p.add_argument("--fresh", action="store_true", help="regenerate pseudo-labels and retrain")
    p.add_argument(
        "--stop-after", choices=("labels", "train"), default="", help="end after this stage (reused later)"
    )
    p.add_argument("--label-workers", type=int, default=0, help="processes for pseudo-labels")
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate the models already trained in OUT (no labels)"
    )
    p.add_argument(
        "--table-only", action="store_true", help="only re-render the table from OUT/ablation.json"
    )
    p.add_argument("--loader-workers", type=int, default=-1, help="DataLoader workers for training")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default="", help="warm-start training from this model.pt (same network)")
    p.add_argument(
        "--instance-weight",
        type=float,
        default=-1.0,
        help="segmenter.sim_instance_weight of the SIMULATED LISA (default: the scale's, 0)",
    )
    p.add_argument("--train-seeds", default="", help="override, e.g. 0-5")
    p.add_argument("--test-seeds", default="", help="override, e.g. 100-102")
    p.add_argument("--steps", type=int, default=0, help="override training steps")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--optimizer", default="", help="sgd (A.2) or adamw")
    p.add_argument("--no-height", action="store_true", help="colour-only voxel input (no height channel)")
    p.add_argument("--queries-per-item", type=int, default=0, help="queries per scene forward")
    p.add_argument("--net", default="", help="override the U-Net preset")
    p.add_argument("--net-voxel", type=float, default=0.0)
    p.add_argument("--size", default="", help="override recording size WxH")
    p.add_argument("--frames", type=int, default=0)
    p.add_argument("--train-queries", type=int, default=-1, help="queries per training room (0 = all)")
    p.add_argument("--test-queries", type=int, default=-1, help="queries per held-out room (0 = all)")
    p.add_argument("--threads", type=int, default=-1, help="torch CPU threads")
    p.add_argument("--accelerator", default="", help="cpu / gpu")
    p.add_argument("--devices", default="", help="Lightning devices")
    p.add_argument("--net-device", default="", help="net.device for evaluation")
    return p


def scale_from_args(a: argparse.Namespace) -> AblationScale:
    """The preset, with the command line's overrides (ValueError on bad values)."""
    base = SCALES["full" if a.full else a.scale]
    changes: dict[str, Any] = {}
    if a.train_seeds:
        changes["train_seeds"] = parse_seeds(a.train_seeds)
    if a.test_seeds:
        changes["test_seeds"] = parse_seeds(a.test_seeds)
    for name in ("steps", "batch_size", "frames", "queries_per_item", "label_workers"):
        if getattr(a, name):
            changes[name] = getattr(a, name)
    if a.lr:
        changes["lr"] = a.lr
    if a.max_minutes:
        changes["max_minutes"] = a.max_minutes
    if a.init_from:
        changes["init_from"] = a.init_from
    if a.instance_weight >= 0:
        changes["instance_weight"] = a.instance_weight
    if a.optimizer:
        changes["optimizer"] = a.optimizer
    if a.no_height:
        changes["height_input"] = False
    if a.net:
        changes["net"] = a.net
    if a.net_voxel:
        changes["net_voxel"] = a.net_voxel
    if a.size:
        w, h = (int(v) for v in a.size.lower().split("x"))
        changes["width"], changes["height"] = w, h
    if a.train_queries >= 0:
        changes["train_queries"] = a.train_queries
    if a.test_queries >= 0:
        changes["test_queries"] = a.test_queries
    if a.threads >= 0:
        changes["threads"] = a.threads
    if a.loader_workers >= 0:
        changes["loader_workers"] = a.loader_workers
    if a.accelerator:
        changes["accelerator"] = a.accelerator
    if a.devices:
        changes["devices"] = int(a.devices) if a.devices.isdigit() else a.devices
    if a.net_device:
        changes["net_device"] = a.net_device
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: runs the ablation and prints the table."""
    a = build_parser().parse_args(argv)
    if a.table_only:
        try:
            result = json.loads((Path(a.out) / "ablation.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        table = write_markdown(result)
        print(table)
        if a.table:
            Path(a.table).write_text(table)
        return 0
    try:
        scale = scale_from_args(a)
        variants = [v.strip() for v in a.variants.split(",") if v.strip()] or None
        unknown = set(variants or []) - {v.key for v in ALL_VARIANTS}
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_ablation(
            scale,
            a.out,
            a.cache or None,
            variants,
            reuse=not a.fresh,
            seed=a.seed,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            stop_after=a.stop_after,
            eval_only=a.eval_only,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.stop_after:
        print(json.dumps(_json_safe(result), indent=1))
        return 0
    table = write_markdown(result)
    (Path(a.out) / "net_ablation.md").write_text(table)
    print(table)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
