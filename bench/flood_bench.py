"""Flood benchmark: N concurrent clients for each service and the action, against the real node.

The node runs as its own process (``reasoning_seg_node``, as the README starts it) on a private ROS
domain over DDS loopback, with a SIMULATED room's map loaded and the simulated 2D model. For each
service, ``N`` requests are sent at once (asynchronously, from one client node) and the bench waits
up to ``--timeout`` seconds; every request ends as *answered* (``success`` true), *refused*
(``success`` false: busy, invalid, out of range) or *lost* (no answer at all). The action gets
``N`` goals with every other one cancelled. The node's RSS is sampled before and after.

    python bench/flood_bench.py --table bench/results/flood.md

This is a benchmark (minutes, load-dependent), not a test: tests/test_node_robustness.py has the
regression tests of the rules it exercises.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # domain_lock: the test suite's ROS domain reservation

from domain_lock import reserve_domain_id  # noqa: E402
from soak_bench import rss_mib, stop_process  # noqa: E402


def _deep():
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


FLOODS = {
    "segment": 400,
    "save_map": 25,
    "load_map": 25,
    "track_query": 60,
    "remove_target": 25,
    "action": 20,
}


@dataclass
class Row:
    """The outcome of one flood."""

    name: str
    sent: int
    answered: int = 0
    refused: int = 0
    lost: int = 0
    seconds: float = 0.0
    rss_before: float = float("nan")
    rss_after: float = float("nan")


def prepare(out: Path) -> tuple[Path, Path, str]:
    """A simulated room, its saved map below ``out/maps`` and an answerable query."""
    from reasoning_seg.camera import CameraIntrinsics
    from reasoning_seg.config import PipelineConfig
    from reasoning_seg.mapping.frames import RGBDFrame
    from reasoning_seg.pipeline import ReasoningSegPipeline
    from reasoning_seg.sim.scene import SyntheticScene

    intr = CameraIntrinsics(160, 120, 131.25, 131.25, 79.5, 59.5)
    scene = SyntheticScene.generate(3)
    scene.save(out / "scene")
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": 0.04, "fusion.visibility_tolerance": 0.08})
    pipe = ReasoningSegPipeline(cfg)
    for i, T in enumerate(scene.trajectory(30, seed=3)):
        color, depth, _ = scene.render(intr, T)
        pipe.add_frame(RGBDFrame(color, depth, intr, T, 100.0 + 0.1 * i, i))
    pipe.save(out / "maps" / "room")
    query = next(q.text for q in scene.queries if q.kind == "spatial")
    return out / "scene", out / "maps", query


def flood(client, srv_type, name: str, requests: list, timeout: float, pid: int) -> Row:
    import rclpy

    DEEP = _deep()
    row = Row(name, len(requests), rss_before=rss_mib(pid))
    # The client's response queue must be as deep as the burst: DDS drops what overflows a keep-last
    # history of the default depth 10 on the *client* side (measured: 6 of 25 remove_target
    # answers lost with the default).
    cli = client.create_client(srv_type, f"/reasoning_seg/{name}", qos_profile=DEEP)
    assert cli.wait_for_service(timeout_sec=30.0), f"{name} not available"
    t0 = time.monotonic()
    futures = [cli.call_async(r) for r in requests]
    # Until every request is answered, or none was for ``timeout`` s (queued queries take their time).
    last_progress, done = t0, 0
    while time.monotonic() - last_progress < timeout and done < len(futures):
        rclpy.spin_once(client, timeout_sec=0.05)
        now_done = sum(f.done() for f in futures)
        if now_done > done:
            done, last_progress = now_done, time.monotonic()
    row.seconds = time.monotonic() - t0
    for f in futures:
        if not f.done():
            row.lost += 1
        elif f.result().success:
            row.answered += 1
        else:
            row.refused += 1
    row.rss_after = rss_mib(pid)
    client.destroy_client(cli)
    return row


def flood_action(client, query: str, n: int, timeout: float, pid: int) -> Row:
    import rclpy
    from rclpy.action import ActionClient
    from reasoning_seg_msgs.action import SegmentQuery

    DEEP = _deep()
    row = Row("segment_query (every other goal cancelled)", n, rss_before=rss_mib(pid))
    ac = ActionClient(
        client,
        SegmentQuery,
        "/reasoning_seg/segment_query",
        goal_service_qos_profile=DEEP,
        result_service_qos_profile=DEEP,
        cancel_service_qos_profile=DEEP,
    )
    assert ac.wait_for_server(timeout_sec=30.0)
    t0 = time.monotonic()
    sends = [ac.send_goal_async(SegmentQuery.Goal(query=query)) for _ in range(n)]
    results: list = [None] * n
    cancelled = set()
    while time.monotonic() - t0 < timeout:
        rclpy.spin_once(client, timeout_sec=0.05)
        for i, s in enumerate(sends):
            if s.done() and results[i] is None and s.result() is not None and s.result().accepted:
                results[i] = s.result().get_result_async()
                if i % 2 == 1 and i not in cancelled:
                    s.result().cancel_goal_async()
                    cancelled.add(i)
        if all(r is not None and r.done() for r in results):
            break
    row.seconds = time.monotonic() - t0
    for r in results:
        if r is None or not r.done():
            row.lost += 1
        elif r.result().result.success:
            row.answered += 1
        else:
            row.refused += 1
    row.rss_after = rss_mib(pid)
    return row


def run(a: argparse.Namespace, domain: int) -> list[Row]:
    import rclpy
    from reasoning_seg_msgs.srv import LoadMap, RemoveTarget, SaveMap, Segment, TrackQuery

    out = Path(a.out or tempfile.mkdtemp(prefix="flood_"))
    scene_dir, maps, query = prepare(out)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain)}
    cmd = [
        sys.executable,
        "-m",
        "reasoning_seg.ros.node",
        "--ros-args",
        "-p",
        f"segmenter.scene:={scene_dir}",
        "-p",
        f"map_directory:={maps}",
        "-p",
        "map.voxel_size:=0.04",
        "-p",
        "fusion.visibility_tolerance:=0.08",
        "-p",
        "pose_source:=topic",
        "-p",
        f"concurrent_queries:={a.concurrent_queries}",
    ]
    node = subprocess.Popen(cmd, env=env, stdout=open(out / "node.log", "w"), stderr=subprocess.STDOUT)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    rclpy.init()
    client = rclpy.create_node("flood_client")
    rows: list[Row] = []
    try:
        load = flood(client, LoadMap, "load_map", [LoadMap.Request(directory="room")], 60.0, node.pid)
        assert load.answered == 1, "the map did not load"
        # Wait for the model: one query answered.
        warm = flood(client, Segment, "segment", [Segment.Request(query=query)], 120.0, node.pid)
        assert warm.answered == 1, "no query answered after warm-up"
        pid = node.pid
        rows.append(
            flood(
                client, Segment, "segment", [Segment.Request(query=query)] * FLOODS["segment"], a.timeout, pid
            )
        )
        rows.append(
            flood(
                client,
                SaveMap,
                "save_map",
                [SaveMap.Request(directory="copy")] * FLOODS["save_map"],
                a.timeout,
                pid,
            )
        )
        rows.append(
            flood(
                client,
                LoadMap,
                "load_map",
                [LoadMap.Request(directory="room")] * FLOODS["load_map"],
                a.timeout,
                pid,
            )
        )
        tracks = [TrackQuery.Request(query=f"{query} {i}", period=0.1) for i in range(FLOODS["track_query"])]
        rows.append(flood(client, TrackQuery, "track_query", tracks, a.timeout, pid))
        flood(client, TrackQuery, "track_query", [TrackQuery.Request(query="", clear=True)], 30.0, pid)
        removes = [RemoveTarget.Request(query=query, margin=0.05)] * FLOODS["remove_target"]
        rows.append(flood(client, RemoveTarget, "remove_target", removes, a.timeout, pid))
        rows.append(flood_action(client, query, FLOODS["action"], a.timeout, pid))
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with {node.returncode}; see {out / 'node.log'}")
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        stop_process(node)
    return rows


def render(rows: list[Row], a: argparse.Namespace) -> str:
    lines = [
        f"### Flood: concurrent requests per service (concurrent_queries={a.concurrent_queries}, "
        f"{os.cpu_count()} cores; a flood ends {a.timeout:g} s after its last answer)\n",
        "| service | sent at once | answered | refused | lost | seconds | node RSS before -> after (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.sent} | {r.answered} | {r.refused} | {r.lost} | {r.seconds:.1f} | "
            f"{r.rss_before:.0f} -> {r.rss_after:.0f} |"
        )
    lines.append(
        "\nanswered = success, refused = an answer with success false (busy, out of range, already "
        "loaded/saved...), lost = never answered (no answer for the wait after the last one). "
        "Command: `python bench/flood_bench.py " + " ".join(sys.argv[1:]) + "`"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="working folder (default: a temporary one)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="a flood ends when no answer came for this long"
    )
    p.add_argument("--concurrent-queries", default="queue", choices=("queue", "reject"))
    p.add_argument("--table", default="", help="also write the markdown table here")
    a = p.parse_args(argv)
    with reserve_domain_id(timeout_s=60.0, poll_s=0.2) as domain:
        rows = run(a, domain)
    text = render(rows, a)
    print(text)
    if a.table:
        Path(a.table).write_text(text)
    return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
