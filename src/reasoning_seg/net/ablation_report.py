"""The ablation's Markdown table (step 4 of :mod:`.experiment`)."""

from __future__ import annotations

import math
from typing import Any

from reasoning_seg.eval.benchmark import write_markdown as benchmark_markdown
from reasoning_seg.net.ablation_config import (
    FUSION_ROW,
)

# ---------------------------------------------------------------------------------------------
# 4. The table
# ---------------------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def _num(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def _delta(x: Any, ref: Any) -> str:
    if x is None or ref is None or not (math.isfinite(x) and math.isfinite(ref)):
        return ""
    return f" ({100 * (x - ref):+.1f})"


_TARGET_NOTE = {"views": "", "fused": " (fused 3D label)", "truth": " (truth: w/ label)"}


def write_markdown(result: dict[str, Any]) -> str:
    """``bench/results/net_ablation.md``: the Table-4 rows, how they were made, and the details."""
    sc, doc = result["scale"], result["evaluation"]
    rows = {r["name"]: r for r in doc["rows"]}
    ref = rows.get(FUSION_ROW, {}).get("summary", {}).get("overall", {})
    flags = {v["name"]: v for v in result["variants"]}
    pl = result["pseudo_labels"]
    n_q = sum(sum(s["queries"].values()) for s in doc["scene_info"])
    # Steps the models went through (a run cut by --max-minutes or continued with --init-from
    # differs from the scale's nominal steps).
    done = [t.get("total_steps", t.get("steps")) for t in result.get("training", {}).values()]
    steps = sorted({int(s) for s in done if s}) or [int(sc["steps"])]
    steps_text = "/".join(str(s) for s in steps)
    lines = [
        "# Label-free 3D network: Table 4 ablation in the benchmark world",
        "",
        "MLLM-For3D Table 4 (a-c) on held-out SIMULATED rooms: a 3D network trained only on fused "
        "multi-view pseudo-labels of *other* rooms answers the node's queries (§3.3), against the fusion "
        "it learned from. Every number comes from simulated rooms and a simulated 2D model (LISA-7B-like "
        "failure rates, SIMULATED SAM features, SIMULATED [SEG] embeddings that mix category, colour and "
        f"instance directions with weights {tuple(result['seg_embedding_mix'])}); it ranks the variants, it "
        "does not predict real-world accuracy.",
        "",
        f"Reproduce: `{result['command']}` (scale '{sc['name']}', {result['total_seconds']:.0f} s in total; "
        "`--full` is the GPU-machine scale).",
        "",
        f"- Training: {pl['rooms']} rooms (seeds {sc['train_seeds']}), {pl['queries']} queries, "
        f"{pl['found']} with a fused target (the training items). Fused pseudo-label vs the simulation's "
        f"truth on those: mean point IoU {_pct(pl['fused_point_iou_mean'])}, IoU >= 0.5 for "
        f"{_pct(pl['fused_point_acc50'])}%. Network '{sc['net']}' at {sc['net_voxel']} m, input "
        f"{'colour + height' if sc.get('height_input', False) else 'colour'}, "
        f"{steps_text} {sc.get('optimizer', 'sgd').upper()} steps of {sc['batch_size']} scenes x "
        f"{sc.get('queries_per_item', 1)} queries (lr {sc['lr']}, poly decay, A.2 augmentations).",
        f"- Evaluation: {len(doc['scenes']['seeds'])} unseen rooms (seeds {doc['scenes']['seeds']}), "
        f"{n_q} queries, recorded at {sc['width']}x{sc['height']}, {sc['frames']} frames, map voxel "
        f"{sc['map_voxel']} m; the node's query path with `net.checkpoint` set (the network answers when "
        "fusion found a target; 'not found' stays fusion's verdict).",
        "",
        "| Method | L_align (Eq. 1) | L_spatial (Eq. 2) | Acc@0.25 | Acc@0.5 | mIoU | found | false found "
        "| answered by the 3D net |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        o, s = r["summary"]["overall"], r["summary"]
        v = flags.get(r["name"])
        target = "" if v is None else _TARGET_NOTE[v.get("alignment_target", "views")]
        align = "–" if v is None else ("✓" + target if v["use_align"] else "✗ (fused-label BCE)")
        spatial = "–" if v is None else ("✓" if v["use_spatial"] else "✗")
        deltas = {
            k: "" if r["name"] == FUSION_ROW else _delta(o[k], ref.get(k))
            for k in ("acc_25", "acc_50", "miou")
        }
        methods = r.get("methods", {})
        net_n = methods.get("3d_net", 0)
        total = sum(methods.values())
        lines.append(
            f"| {r['name']} | {align} | {spatial} | {_pct(o['acc_25'])}{deltas['acc_25']} | "
            f"{_pct(o['acc_50'])}{deltas['acc_50']} | {_pct(o['miou'])}{deltas['miou']} | "
            f"{_pct(s['found_rate'])} | "
            f"{_pct(s['false_found_rate'])} | {net_n}/{total} |"
        )
    # The verdict is about label-free rows: a row trained on the simulation's truth is a ceiling.
    nets = [
        r
        for r in doc["rows"]
        if r["name"] in flags and flags[r["name"]].get("alignment_target", "views") != "truth"
    ]
    if nets and ref:
        best = max(nets, key=lambda r: r["summary"]["overall"]["miou"])
        gap = 100 * (best["summary"]["overall"]["miou"] - ref["miou"])
        verdict = "beats" if gap > 0 else "does not beat"
        lines += [
            "",
            f"**At this scale the 3D net {verdict} fusion only on the held-out rooms**: the best network row "
            f"('{best['name']}') is {gap:+.1f} mIoU points from fusion only.",
        ]
    items = steps[-1] * sc["batch_size"] * sc.get("queries_per_item", 1)
    lines += [
        "",
        f"Scale '{sc['name']}': a '{sc['net']}' U-Net trained for {steps_text} steps ({items} query-items, "
        f"{items / max(1, pl['found']):.1f} passes over the training items) on {pl['rooms']} rooms. "
        "Deltas in parentheses are against fusion only. Acc@k: % of queries with 3D IoU >= k; mIoU: mean "
        "IoU over the same queries (misses count 0); false found: % of absent-target queries answered "
        "'found' (`reasoning_seg.eval.metrics`).",
        "",
        "**w/o token-for-query (4b), our definition.** With Eq. 1 off nothing trains the projection of the "
        "[SEG] embedding, so the network could not answer queries at all. The paper does not say what "
        "replaces it; here the backbone is trained with Eq. 2 only, then (backbone frozen) the query "
        "projection is fitted by BCE against the fused 3D pseudo-label (each voxel's mean fused "
        "probability) instead of the per-view 2D logits of Eq. 1 "
        "(`reasoning_seg.net.experiment.fit_query_projection`).",
        "",
        "## Timings",
        "",
        f"- Pseudo-labels (recording + node stages on {pl['rooms']} rooms): {pl['seconds']} s",
    ]
    for key, t in result["training"].items():
        extra = " (incl. query-projection fit)" if "query_projection" in t else ""
        if t.get("init_from"):
            extra += f", continuing {t['init_from']} ({t['total_steps']} steps in all)"
        lines.append(
            f"- Training '{key}': {t['steps']} steps in {t['seconds']} s{extra}, median step "
            f"{t['step_s_median']:.3f} s, {t['train_items']} items, final loss {_num(t['final_loss'])}"
        )
    lines.append(f"- Evaluation ({len(doc['rows'])} rows): {result['eval_seconds']} s")
    details = benchmark_markdown(doc).split("\n")
    keep = [ln.replace("## ", "### ") for ln in details if not ln.startswith(("# ", "Reproduce:"))]
    while keep and not keep[0].strip():
        keep.pop(0)
    lines += ["", "## Evaluation details (benchmark runner output)", "", *keep]
    return "\n".join(lines).rstrip() + "\n"
