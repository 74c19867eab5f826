"""One self-contained HTML page per run: the queries, their answers, timings and pictures.

Self-contained (pictures inlined as data URIs, no scripts or styles from the network) so it can be
mailed, attached to a CI run or opened from a robot's disk. A tiny inline script marks the page
once every picture has decoded (``data-images-loaded="k/n"`` on ``<body>``): the browser test reads
it, and a person never notices it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1500px;color:#222;background:#fafaf8}
h1{font-size:22px} h2{font-size:18px;margin-top:34px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 9px;text-align:left}
.ok{color:#167a3e;font-weight:600} .bad{color:#b3261e;font-weight:600} .none{color:#8a6d00;font-weight:600}
.why{background:#fff3e0;border-left:4px solid #e69500;padding:6px 10px;margin:8px 0}
img{max-width:100%;border:1px solid #ddd} .small{color:#666;font-size:13px}
"""
_SCRIPT = """
addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
"""


@dataclass
class ReportEntry:
    """One query's row and section in the page."""

    query: str
    found: bool
    message: str
    num_points: int = 0
    confidence: float = 0.0
    answer: str = ""
    kind: str = ""
    iou: float | None = None  # against ground truth, when the run knows it (simulated rooms)
    expected: str = ""  # what the README says this query should give
    why: str = ""  # one line for a wrong or not-found answer
    timings: Mapping[str, float] = field(default_factory=dict)
    picture: Path | None = None


def _verdict(e: ReportEntry) -> tuple[str, str]:
    if not e.found:
        return "none", "not found"
    if e.iou is None:
        return "ok", "found"
    return ("ok", "right") if e.iou >= 0.5 else ("bad", "wrong")


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_report(
    path: str | Path,
    title: str,
    entries: Sequence[ReportEntry],
    facts: Mapping[str, object] | None = None,
    intro: str = "",
) -> Path:
    """Write the page to ``path`` (UTF-8) and return it; every text is HTML-escaped."""
    esc = html.escape
    rows = []
    for i, e in enumerate(entries):
        cls, verdict = _verdict(e)
        iou = "" if e.iou is None else f"{e.iou:.2f}"
        total = sum(e.timings.values())
        rows.append(
            f"<tr><td><a href='#q{i}'>{esc(e.query)}</a></td><td>{esc(e.kind)}</td>"
            f"<td class='{cls}'>{verdict}</td><td>{e.num_points}</td><td>{e.confidence:.2f}</td>"
            f"<td>{iou}</td><td>{total:.2f} s</td></tr>"
        )
    sections = []
    for i, e in enumerate(entries):
        cls, verdict = _verdict(e)
        parts = [f"<h2 id='q{i}'>“{esc(e.query)}” — <span class='{cls}'>{verdict}</span></h2>"]
        if e.expected:
            parts.append(f"<p class='small'>Expected: {esc(e.expected)}</p>")
        parts.append(f"<p>{esc(e.message)}</p>")
        if e.answer:
            parts.append(f"<p>Model's answer: “{esc(e.answer)}”</p>")
        if e.why:
            parts.append(f"<div class='why'>Why: {esc(e.why)}</div>")
        if e.timings:
            cells = "".join(f"<td>{esc(k)}<br>{v * 1000:.0f} ms</td>" for k, v in e.timings.items())
            parts.append(f"<table class='small'><tr>{cells}</tr></table>")
        if e.picture is not None:
            alt = f"map and views for {e.query}"
            parts.append(f"<img src='{_inline_png(e.picture)}' alt='{esc(alt, quote=True)}'>")
        sections.append("\n".join(parts))
    fact_rows = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in (facts or {}).items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(intro)}</p>
<table>{fact_rows}</table>
<table><tr><th>query</th><th>kind</th><th>answer</th><th>points</th><th>confidence</th><th>IoU vs truth</th>
<th>time</th></tr>
{"".join(rows)}
</table>
{"".join(f"<section>{s}</section>" for s in sections)}
<script>{_SCRIPT}</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def explain_answer(
    found: bool,
    message: str,
    answer_labels: np.ndarray,
    target_id: int,
    truth_voxels: int,
    names: Mapping[int, str],
) -> str:
    """One line on why an answer is wrong or missing, from ground truth (simulated rooms); "" when right.

    ``answer_labels``: the true instance id of each answer point (0 = none within reach).
    A found answer is right when most of its points are on the target and it covers most of it
    (the page's verdict uses IoU >= 0.5); otherwise the line names the object it picked instead.
    """
    target = names.get(target_id, f"object {target_id}")
    if not found:
        if truth_voxels == 0:
            return f"'{target}' is not in the map: nothing to find. {message}"
        return f"'{target}' is in the map ({truth_voxels} voxels) but the answer was: {message}"
    labels = np.asarray(answer_labels)
    if not len(labels):
        return ""
    ids, counts = np.unique(labels, return_counts=True)
    on_target = counts[ids == target_id].sum() / len(labels)
    top = int(ids[np.argmax(counts)])
    if top != target_id:
        other = names.get(top, "no object (empty space or a wall seam)" if top == 0 else f"object {top}")
        share = counts.max() / len(labels)
        return (
            f"wrong object: {share:.0%} of the answer lies on '{other}' and {on_target:.0%} on '{target}'; "
            "the views' masks show which object the 2D model picked"
        )
    covered = counts[ids == target_id].sum() / max(truth_voxels, 1)
    if covered < 0.5:
        return f"partly right: the answer covers {min(covered, 1.0):.0%} of '{target}'"
    return ""
