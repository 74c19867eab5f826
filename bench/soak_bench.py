"""Soak and latency benchmark (issue 8): the real node graph fed at 30 Hz for minutes, queried every few s.

What it runs, as separate processes on loopback DDS in their own ROS domain (as ``reasoning_seg_bringup``
would start them):

- the reasoning_seg **node** (``bringup.node_command``: the package's parameters file plus overrides);
- a **player** (:class:`reasoning_seg.ros.player.PlayerNode` in a small wrapper process, so its counters can
  be read while it runs) looping a recorded RGB-D sequence with ``restamp`` at ``--rate-hz`` frames per
  second. By default the recording is the demo's **simulated** room (``SyntheticScene``, seed 3, 90
  frames of one hand-held loop, 640x480, recorded to ``--out``), and the 2D model is the simulated
  (ground-truth driven) segmenter, since no LISA weights can be downloaded here;
- this process, the **client**: every ``--query-period`` s it sends the next of the scene's queries through
  ``~/segment`` without waiting for the previous answer (like independent callers), measures the
  end-to-end latency of each answer, keeps the node's per-stage timings from the result, listens to
  ``/diagnostics``, and samples the resident memory (``VmRSS`` of ``/proc/<pid>/status``, summed over
  the process tree) of the node and the player every ``--sample-period`` s.

The first ``--warmup-fraction`` of the soak is excluded from the memory verdict: the map of a looped room
stops growing after the first passes, and allocators settle; what is left must be flat. The table says
how many frames were published, received and integrated (the frame rate the node really sustained),
why frames were dropped, and how many queries were answered, refused or timed out.

    python bench/soak_bench.py --minutes 1                       # quick look
    python bench/soak_bench.py --minutes 10 --table bench/results/soak.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # domain_lock: the test suite's ROS domain reservation

from domain_lock import reserve_domain_id  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))

#: Stages reported in the latency table, in pipeline order, with the issue's names for them.
STAGE_LABELS: dict[str, str] = {
    "snapshot": "map snapshot",
    "view_selection": "view selection (global)",
    "segmentation": "2D model (all views)",
    "fusion": "fusion (all rounds)",
    "local_view_selection": "view selection (local, REALM)",
    "3d_net": "3D net",
    "packaging": "packaging (threshold, box)",
    "publishing": "publishing (result, cloud, markers)",
}
MIB = 1024.0 * 1024.0


def log(msg: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"[soak_bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ measurement
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/*/stat``), so a launcher that forks is covered too."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        # The command name is in parentheses and may contain spaces: the ppid follows the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants in MiB (``VmRSS``); NaN when the process is gone."""
    total, seen = 0.0, False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0  # kB -> MiB
                        seen = True
                        break
        except OSError:
            continue
    return total if seen else float("nan")


def percentiles(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50.0, 95.0)) -> list[float]:
    """Percentiles (linear interpolation) or NaNs for an empty list."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [float("nan")] * len(qs)
    return [float(np.percentile(v, q)) for q in qs]


@dataclass
class MemoryTrend:
    """Resident memory over the part of the soak after warm-up."""

    samples: int
    start_mib: float
    end_mib: float
    max_mib: float
    slope_mib_per_min: float  # least-squares line through the samples

    @property
    def growth_mib(self) -> float:
        """End minus start (both after warm-up)."""
        return self.end_mib - self.start_mib


def memory_trend(
    times_s: list[float], rss: list[float], warmup_fraction: float, warmup_s: float = 0.0
) -> MemoryTrend:
    """Fit RSS against time after dropping the first ``warmup_fraction`` of the soak's duration.

    ``warmup_s`` > 0 replaces the fraction by a fixed warm-up in seconds from the first sample, for
    a warm-up declared from an earlier run (a 20-minute soak on the 2-core machine settled after ~10 min).

    A slope rather than end minus start, because single samples jitter with the garbage collector and
    the allocator returning pages; a leak shows as a steady positive slope.
    """
    t = np.asarray(times_s, dtype=np.float64)
    r = np.asarray(rss, dtype=np.float64)
    ok = np.isfinite(r)
    t, r = t[ok], r[ok]
    if t.size == 0:
        return MemoryTrend(0, *([float("nan")] * 4))
    t0 = t[0] + (warmup_s if warmup_s > 0 else warmup_fraction * (t[-1] - t[0]))
    keep = t >= t0
    t, r = t[keep], r[keep]
    slope = float(np.polyfit(t / 60.0, r, 1)[0]) if t.size >= 2 and np.ptp(t) > 0 else float("nan")
    return MemoryTrend(int(t.size), float(r[0]), float(r[-1]), float(r.max()), slope)


def stage_table(timings: list[dict[str, float]]) -> list[tuple[str, int, float, float]]:
    """Per stage: (label, queries that ran it, p50 ms, p95 ms); known stages first, then any others."""
    names = [s for s in STAGE_LABELS if any(s in t for t in timings)]
    names += sorted({s for t in timings for s in t} - set(STAGE_LABELS))
    rows = []
    for s in names:
        vals = [t[s] * 1e3 for t in timings if s in t]
        p50, p95 = percentiles(vals)
        rows.append((STAGE_LABELS.get(s, s), len(vals), p50, p95))
    return rows


def classify_refusal(message: str) -> str:
    """Short reason of a refused query ('busy', '2D model not ready', ...): the text before ':' or '('."""
    head = message.split(":", 1)[0].split("(", 1)[0].strip()
    return head or "no message"


@dataclass
class QueryLog:
    """What the client saw of its queries."""

    sent: int = 0
    answered: int = 0  # success=true (found or not found)
    found: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # success=false, by reason (a plain dict: asdict
    # rebuilds a Counter from (key, value) pairs and would count the pairs)
    timed_out: int = 0
    latencies_s: list[float] = field(default_factory=list)  # client-measured, answered queries only
    timings: list[dict[str, float]] = field(default_factory=list)  # the node's stage timings

    @property
    def dropped(self) -> int:
        """Queries that got no answer: refused, timed out, or still unanswered at the end."""
        return self.sent - self.answered

    @property
    def settled_bad(self) -> int:
        """Queries that ended without an answer (refused or timed out)."""
        return sum(self.refused.values()) + self.timed_out

    def record(self, success: bool, message: str, latency_s: float, timings: dict[str, float]) -> None:
        """Book one reply."""
        if success:
            self.answered += 1
            self.latencies_s.append(latency_s)
            self.timings.append(timings)
        else:
            why = classify_refusal(message)
            self.refused[why] = self.refused.get(why, 0) + 1


# ------------------------------------------------------------------------------------ report
@dataclass
class SoakReport:
    """Everything the table shows (also written as JSON next to the logs)."""

    command: str
    minutes: float
    rate_hz: float
    query_period_s: float
    duration_s: float = 0.0
    published: int = 0  # player steps (colour + depth + info + pose) during the soak window
    published_total: int = 0  # since the player started
    player_max_late_s: float = 0.0
    received: int = 0  # node frames_received during the soak window
    integrated: int = 0  # node frames_integrated during the soak window
    diagnostics: dict[str, str] = field(default_factory=dict)  # last /diagnostics values
    queries: QueryLog = field(default_factory=QueryLog)
    node_memory: MemoryTrend | None = None
    player_memory: MemoryTrend | None = None
    # (t, node RSS, player RSS, node map blocks): memory next to the map's size, which a leak is not
    rss_series: list[tuple[float, float, float, int]] = field(default_factory=list)
    growth_threshold: float = 1.0
    warmup_fraction: float = 0.2
    warmup_minutes: float = 0.0  # > 0: a fixed warm-up instead of the fraction
    machine: str = ""
    notes: list[str] = field(default_factory=list)

    def rates(self) -> tuple[float, float, float]:
        """(published, received, integrated) frames per second over the soak window."""
        d = self.duration_s or float("nan")
        return self.published / d, self.received / d, self.integrated / d

    def verdicts(self) -> list[tuple[bool, str]]:
        """(passed, line) for the issue's two soak criteria, plus the frame rate as measured."""
        out: list[tuple[bool, str]] = []
        m = self.node_memory
        slope = m.slope_mib_per_min if m else float("nan")
        out.append(
            (
                bool(np.isfinite(slope) and slope < self.growth_threshold),
                f"node memory growth after warm-up {slope:+.2f} MiB/min "
                f"(threshold < {self.growth_threshold:g} MiB/min)",
            )
        )
        q = self.queries
        out.append(
            (
                q.dropped == 0 and q.sent > 0,
                f"dropped queries {q.dropped} of {q.sent} (refused {sum(q.refused.values())}, "
                f"timed out {q.timed_out})",
            )
        )
        pub, _, integ = self.rates()
        out.append(
            (
                pub >= 0.95 * self.rate_hz and integ >= 0.95 * self.rate_hz,
                f"{self.rate_hz:g} Hz sustained: published {pub:.1f} Hz, integrated {integ:.1f} Hz",
            )
        )
        return out

    def passed(self) -> bool:
        """Memory and query verdicts (the frame rate is reported, not required: it depends on the host)."""
        v = self.verdicts()
        return v[0][0] and v[1][0]


def _fmt(x: object, digits: int = 1) -> str:
    if isinstance(x, float):
        return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def render(rep: SoakReport) -> str:
    """The markdown of the report: verdicts, run, frames, queries, latency by stage, memory."""
    pub, rec, integ = rep.rates()
    d = rep.diagnostics
    drops = {k: v for k, v in d.items() if k.startswith("dropped.") or k == "sync_dropped"}
    q = rep.queries
    lines = [f"Command: `{rep.command}`", "", rep.machine, ""]
    lines += [f"- **{'PASS' if ok else 'FAIL'}** {text}" for ok, text in rep.verdicts()]
    lines += ["", "| run | value |", "|---|---|"]
    rows = [
        ("soak duration (after the first frame was integrated)", f"{rep.duration_s:.0f} s"),
        ("requested frame rate", f"{rep.rate_hz:g} Hz (recording looped, restamped)"),
        ("query period", f"{rep.query_period_s:g} s, sent without waiting for the previous answer"),
        ("frames published by the player", f"{rep.published} ({pub:.1f} Hz)"),
        ("frames received by the node (paired, posed)", f"{rep.received} ({rec:.1f} Hz)"),
        ("frames integrated into the map", f"{rep.integrated} ({integ:.1f} Hz)"),
        (
            "frames that did not reach the pipeline (published - received: transport, unpaired, no pose)",
            f"{rep.published - rep.received}",
        ),
        ("player: worst lateness behind its schedule", f"{rep.player_max_late_s * 1e3:.0f} ms"),
        ("node drop counters at the end (whole run)", ", ".join(f"{k} {v}" for k, v in drops.items()) or "-"),
        ("node keyframes / map blocks at the end", f"{d.get('keyframes', '?')} / {d.get('map_blocks', '?')}"),
        ("queries sent / answered (found)", f"{q.sent} / {q.answered} ({q.found})"),
        (
            "queries refused / timed out / unanswered",
            f"{sum(q.refused.values())} {dict(q.refused) or ''} / {q.timed_out} / "
            f"{q.sent - q.answered - q.settled_bad}",
        ),
    ]
    lines += [f"| {a} | {b} |" for a, b in rows]
    e2e = percentiles(q.latencies_s)
    lines += [
        "",
        "Latency of answered queries (ms): end to end as the client measured it, and the node's stages "
        "(from the result's `timings`; the 2D model and fusion run twice per query, global then local "
        "views, and are summed).",
        "",
        "| stage | queries | p50 ms | p95 ms |",
        "|---|---|---|---|",
        f"| **end to end (client)** | {len(q.latencies_s)} | {_fmt(e2e[0] * 1e3)} | {_fmt(e2e[1] * 1e3)} |",
    ]
    totals = [sum(t.values()) * 1e3 for t in q.timings]
    tp = percentiles(totals)
    lines.append(f"| sum of node stages | {len(totals)} | {_fmt(tp[0])} | {_fmt(tp[1])} |")
    lines += [
        f"| {label} | {n} | {_fmt(p50)} | {_fmt(p95)} |" for label, n, p50, p95 in stage_table(q.timings)
    ]
    lines += [
        "",
        "Resident memory (VmRSS, MiB) after warm-up (the first "
        + (f"{rep.warmup_minutes:g} min" if rep.warmup_minutes > 0 else f"{rep.warmup_fraction:.0%}")
        + " of the soak excluded); slope = least-squares line.",
        "",
        "| process | samples | start | end | max | end - start | slope MiB/min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in (("node", rep.node_memory), ("player", rep.player_memory)):
        if m is not None:
            lines.append(
                f"| {name} | {m.samples} | {_fmt(m.start_mib)} | {_fmt(m.end_mib)} | {_fmt(m.max_mib)} | "
                f"{_fmt(m.growth_mib)} | {_fmt(m.slope_mib_per_min, 2)} |"
            )
    if rep.rss_series:
        series = rep.rss_series
        step = max(1, len(series) // 10)
        picks = series[::step] + ([series[-1]] if (len(series) - 1) % step else [])
        lines += ["", "| t (s) | node RSS MiB | player RSS MiB | map blocks |", "|---|---|---|---|"]
        lines += [f"| {t:.0f} | {_fmt(a)} | {_fmt(b)} | {n} |" for t, a, b, n in picks]
    if rep.notes:
        lines += [""] + [f"Note: {n}" for n in rep.notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ processes
def player_main(params: dict, summary_path: Path, write_period: float = 1.0) -> int:
    """The player process: a :class:`PlayerNode` whose counters are written to ``summary_path`` as it runs.

    ``reasoning_seg_player`` logs its summary only when a recording ends, and a looped recording never
    does; the soak needs the count of published frames while it runs, hence this wrapper.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from reasoning_seg.ros.player import PlayerNode

    stop = {"flag": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = PlayerNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def write() -> None:
        s = node.summary
        keys = ("steps", "messages", "loops", "skipped_frames", "skipped_poses", "max_late_s")
        data = {"t": time.time(), **{k: getattr(s, k) for k in keys}}
        tmp = summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(summary_path)

    # A thread, not the spin loop, writes the counters: a player behind its schedule publishes the late
    # steps back to back inside one timer callback, so spin_once may not return for a long time.
    done = threading.Event()

    def writer() -> None:
        while not done.wait(write_period):
            write()

    thread = threading.Thread(target=writer, name="summary_writer", daemon=True)
    thread.start()
    try:
        while not stop["flag"] and not node.finished.done():
            executor.spin_once(timeout_sec=0.05)
    finally:
        done.set()
        thread.join()
        write()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def read_player(path: Path) -> dict:
    """The player's latest counters (empty before its first write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def prepare_recording(out: Path, seed: int, frames: int) -> tuple[Path, Path]:
    """Record the demo's SIMULATED room (once; reused while seed and length match) -> (sequence, scene)."""
    from reasoning_seg.camera import CameraIntrinsics
    from reasoning_seg.sim.scene import SyntheticScene

    seq, scene_dir, stamp = out / "sequence", out / "scene", out / "recording.json"
    want = {"seed": seed, "frames": frames, "width": 640, "height": 480}
    if stamp.exists() and json.loads(stamp.read_text()) == want and seq.exists() and scene_dir.exists():
        return seq, scene_dir
    import shutil

    shutil.rmtree(seq, ignore_errors=True)
    t0 = time.perf_counter()
    scene = SyntheticScene.generate(seed)
    scene.save(scene_dir)
    scene.record_sequence(
        seq, CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5), scene.trajectory(frames, seed=seed)
    )
    stamp.write_text(json.dumps(want))
    log(f"recorded the simulated room (seed {seed}, {frames} frames) in {time.perf_counter() - t0:.0f} s")
    return seq, scene_dir


def scene_queries(scene_dir: Path) -> list[str]:
    """The scene's queries about furniture, one of each kind first (as the demo asks them)."""
    from reasoning_seg.ros.demo import _pick_queries
    from reasoning_seg.sim.scene import SyntheticScene

    scene = SyntheticScene.load(scene_dir)
    return [q.text for q in _pick_queries(scene, len(scene.queries))]


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGINT (clean ROS shutdown), then SIGKILL if it does not exit; only our own child."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------ the soak
def run_soak(a: argparse.Namespace, command: str) -> SoakReport:
    """Start node and player, query and sample for ``a.minutes``, stop both, return the report."""
    os.environ["ROS_DOMAIN_ID"] = str(a.domain_id)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from reasoning_seg_msgs.srv import Segment

    from reasoning_seg.ros.bringup import default_params_file, node_command

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.sequence:
        seq, scene_dir = Path(a.sequence).resolve(), Path(a.scene).resolve()
    else:
        seq, scene_dir = prepare_recording(out, a.seed, a.frames)
    queries = scene_queries(scene_dir)
    overrides: dict[str, object] = {"segmenter.scene": str(scene_dir), "segmenter.sim_profile": a.sim_profile}
    for kv in a.param:
        k, v = kv.split("=", 1)
        overrides[k] = v
    rep = SoakReport(
        command,
        a.minutes,
        a.rate_hz,
        a.query_period,
        growth_threshold=a.growth_threshold,
        warmup_fraction=a.warmup_fraction,
        warmup_minutes=a.warmup_minutes,
    )
    rep.machine = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"node parameters: `{default_params_file()}` + {overrides}; "
        f"recording: {seq} at x{a.rate_hz / a.sequence_fps:g} ({a.rate_hz:g} Hz); queries: {len(queries)} "
        "of the scene, cycled."
    )

    node_log = open(out / "node.log", "w")
    player_log = open(out / "player.log", "w")
    summary_path = out / "player_summary.json"
    summary_path.unlink(missing_ok=True)
    procs: list[subprocess.Popen] = []
    rclpy.init()
    client = rclpy.create_node("soak_bench_client")
    diag: dict[str, str] = {}

    def on_diag(m: DiagnosticArray) -> None:
        for s in m.status:
            if s.name.startswith("reasoning_seg"):
                diag.clear()
                diag.update({kv.key: kv.value for kv in s.values})

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    seg = client.create_client(Segment, "/reasoning_seg/segment")
    try:
        node = subprocess.Popen(
            node_command(default_params_file(), overrides=overrides),
            stdout=node_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(node)
        if not seg.wait_for_service(timeout_sec=120.0):
            raise RuntimeError(f"the node did not come up; see {out / 'node.log'}")
        player_params = {
            "folder": str(seq),
            "rate": a.rate_hz / a.sequence_fps,
            "fps": a.sequence_fps,
            "loop": True,
            "restamp": True,
            "wait_for_subscribers": 1,
            "start_delay": 0.5,
        }
        player = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--player-params",
                json.dumps(player_params),
                "--player-summary",
                str(summary_path),
            ],
            stdout=player_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(player)

        # Warm-up of the graph: the model loaded and the first frame integrated, so a query can succeed.
        deadline = time.monotonic() + 180.0
        while not (diag.get("model") == "ready" and int(diag.get("frames_integrated", "0")) > 0):
            rclpy.spin_once(client, timeout_sec=0.1)
            if time.monotonic() > deadline or node.poll() is not None or player.poll() is not None:
                raise RuntimeError(f"no frame integrated after 180 s (diagnostics {diag}); see {out}")
        start_diag = dict(diag)
        start_player = read_player(summary_path)
        t_start = time.monotonic()
        t_end = t_start + a.minutes * 60.0
        log(f"soak started: {a.minutes:g} min, {a.rate_hz:g} Hz, a query every {a.query_period:g} s")

        q = rep.queries
        outstanding: list[tuple[object, float]] = []  # (future, sent at)
        next_query, next_sample, next_log = t_start + 1.0, t_start, t_start + 60.0
        times, node_rss, player_rss, blocks = [], [], [], []

        def settle(now: float) -> None:
            for fut, sent in list(outstanding):
                if fut.done():
                    outstanding.remove((fut, sent))
                    resp = fut.result()
                    timings = {t.stage: float(t.seconds) for t in resp.result.timings}
                    q.record(resp.success, resp.message, now - sent, timings)
                    q.found += int(resp.success and resp.result.found)
                elif now - sent > a.query_timeout:
                    outstanding.remove((fut, sent))
                    seg.remove_pending_request(fut)
                    q.timed_out += 1

        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            rclpy.spin_once(client, timeout_sec=0.02)
            now = time.monotonic()
            settle(now)
            if now >= next_query:
                req = Segment.Request(query=queries[q.sent % len(queries)])
                outstanding.append((seg.call_async(req), time.monotonic()))
                q.sent += 1
                next_query += a.query_period
            if now >= next_sample:
                times.append(now - t_start)
                node_rss.append(rss_mib(node.pid))
                player_rss.append(rss_mib(player.pid))
                blocks.append(int(diag.get("map_blocks", -1)))
                next_sample += a.sample_period
            if now >= next_log:
                log(
                    f"{(now - t_start) / 60:.0f} min: node RSS {node_rss[-1]:.0f} MiB, integrated "
                    f"{diag.get('frames_integrated')}, queries {q.sent} sent / {q.answered} answered"
                )
                next_log += 60.0
            if node.poll() is not None or player.poll() is not None:
                rep.notes.append("a process ended during the soak (see node.log / player.log)")
                break
        rep.duration_s = time.monotonic() - t_start
        end_player = read_player(summary_path)
        # The counters in the last /diagnostics before the end; then let the last queries finish.
        end_diag = dict(diag)
        drain = time.monotonic() + a.query_timeout
        while outstanding and time.monotonic() < drain:
            rclpy.spin_once(client, timeout_sec=0.05)
            settle(time.monotonic())
        settle(time.monotonic() + a.query_timeout + 1.0)  # whatever is left timed out

        rep.published = int(end_player.get("steps", 0)) - int(start_player.get("steps", 0))
        rep.published_total = int(end_player.get("steps", 0))
        rep.player_max_late_s = float(end_player.get("max_late_s", 0.0))
        rep.received = int(end_diag.get("frames_received", 0)) - int(start_diag.get("frames_received", 0))
        rep.integrated = int(end_diag.get("frames_integrated", 0)) - int(
            start_diag.get("frames_integrated", 0)
        )
        rep.diagnostics = end_diag
        rep.rss_series = list(zip(times, node_rss, player_rss, blocks, strict=True))
        rep.node_memory = memory_trend(times, node_rss, a.warmup_fraction, 60.0 * a.warmup_minutes)
        rep.player_memory = memory_trend(times, player_rss, a.warmup_fraction, 60.0 * a.warmup_minutes)
        load = os.getloadavg()
        rep.notes.append(
            f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on "
            f"{os.cpu_count()} CPUs shared by node, player, this client"
            + (f" and other jobs; {a.contention_note}" if a.contention_note else "")
        )
        return rep
    finally:
        for p in reversed(procs):
            stop_process(p)
        client.destroy_node()
        rclpy.try_shutdown()
        node_log.close()
        player_log.close()


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 1 when the memory or the dropped-query verdict fails."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak after warm-up")
    p.add_argument("--rate-hz", type=float, default=30.0, help="frames per second the player publishes")
    p.add_argument("--query-period", type=float, default=3.0, help="seconds between queries")
    p.add_argument("--query-timeout", type=float, default=60.0, help="a query unanswered after this is lost")
    p.add_argument("--sample-period", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--warmup-fraction", type=float, default=0.2, help="part of the soak the memory fit skips")
    p.add_argument(
        "--warmup-minutes",
        type=float,
        default=0.0,
        help="fixed warm-up the memory fit skips (overrides the fraction)",
    )
    p.add_argument(
        "--growth-threshold", type=float, default=1.0, help="memory verdict: slope below this (MiB/min)"
    )
    p.add_argument("--seed", type=int, default=3, help="simulated room (same as the demo)")
    p.add_argument("--frames", type=int, default=90, help="frames of the simulated recording (one loop)")
    p.add_argument("--sequence", default="", help="play this recorded folder instead (needs --scene)")
    p.add_argument("--scene", default="", help="scene folder of --sequence (simulated segmenter, queries)")
    p.add_argument("--sequence-fps", type=float, default=30.0, help="frame rate the recording was made at")
    p.add_argument("--sim-profile", default="lisa7b", help="failure profile of the SIMULATED 2D model")
    p.add_argument("--param", action="append", default=[], help="node parameter override name=value")
    p.add_argument("--out", default="out/soak", help="logs, recording, report.json")
    p.add_argument("--table", default="", help="also write the markdown table to this file")
    p.add_argument("--contention-note", default="", help="free text about other load on the machine")
    p.add_argument(
        "--domain-id",
        type=int,
        default=-1,
        help="ROS_DOMAIN_ID of the run (-1: a free one, as the tests pick)",
    )
    p.add_argument("--player-params", help=argparse.SUPPRESS)  # internal: run as the player process
    p.add_argument("--player-summary", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.player_params:
        return player_main(json.loads(a.player_params), Path(a.player_summary))
    if a.sequence and not a.scene:
        p.error("--sequence needs --scene (the simulated segmenter and the queries come from it)")
    command = "python bench/soak_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.domain_id >= 0:
        rep = run_soak(a, command)
    else:
        # Minutes long, beside test suites: wait longer for a free id than a test does.
        with reserve_domain_id(timeout_s=60.0, poll_s=0.2) as domain:
            a.domain_id = domain
            rep = run_soak(a, command)
    text = (
        "### Soak: "
        + f"{rep.minutes:g} min at {rep.rate_hz:g} Hz, a query every {rep.query_period_s:g} s\n\n"
    )
    text += render(rep)
    print(text)
    if a.table:
        Path(a.table).write_text(text)
    report = asdict(rep)
    report["verdicts"] = [{"passed": ok, "text": t} for ok, t in rep.verdicts()]
    (Path(a.out) / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return 0 if rep.passed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
