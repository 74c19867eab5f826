"""``make demo``'s program, shortened: it writes the report, and the report renders in a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser import chromium, headless

pytestmark = pytest.mark.ros


def test_the_demo_writes_a_report_that_renders(tmp_path: Path, ros_domain_id: int) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reasoning_seg.ros.demo",
            "--out",
            str(out),
            "--frames",
            "30",
            "--queries",
            "1",
            "--domain-id",
            str(ros_domain_id),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (out / "node.log").read_text(errors="replace")[-4000:] if (out / "node.log").exists() else ""
    why = f"demo output:\n{run.stdout[-3000:]}{run.stderr[-3000:]}\nnode and player log:\n{log}"
    assert run.returncode == 0, why
    summary = json.loads((out / "summary.json").read_text())
    # A recording played with pacing: every frame reaches the node, whatever the machine's load.
    assert summary["node_counters"]["frames_received"] == "30", (summary["node_counters"], why)
    (q,) = summary["queries"]
    assert q["query"] == "the shelf" and q["found"] and q["ground_truth"]["iou"] > 0.5, (q, why)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "the shelf" in page and page.count("data:image/png;base64,") == 1
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium to render the report (scripts/setup.sh installs Debian's where apt works)")
    dom = headless(browser, (out / "index.html").as_uri(), "--dump-dom")
    assert re.search(r'data-images-loaded="1/1"', dom.stdout), dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr
