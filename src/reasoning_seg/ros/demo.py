"""The end-to-end demo: a recorded RGB-D stream through the real node graph, then queries.

1. Generate a SIMULATED room (seeded) and record a handheld-style RGB-D sequence of it to disk.
2. Start the reasoning_seg node and the player as separate processes (DDS on loopback, its own
   ROS domain), exactly as ``reasoning_seg_bringup`` would; the 2D model is the ground-truth
   *simulated* segmenter because no LISA weights are available here.
3. After playback, ask the node the scene's queries through its service, like any client would.
4. Write per query: the target cloud (PLY), a picture of map + target (PNG); and one JSON summary
   with timings per stage, the frames integrated/dropped, and the IoU against ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _pick_queries(scene, limit: int) -> list:
    """One query of each kind first (explicit, affordance, spatial), then the rest, up to ``limit``.

    Targets are furniture (not the room shell): what a manipulation stack would be asked about.
    """
    furniture = {o.instance_id for o in scene.objects if not o.is_structure}
    seen, first, rest = set(), [], []
    for q in (q for q in scene.queries if q.target_instance_id in furniture):
        (rest if q.kind in seen else first).append(q)
        seen.add(q.kind)
    return (first + rest)[:limit]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reasoning_seg_demo`` / ``python -m reasoning_seg.ros.demo``."""
    p = argparse.ArgumentParser(prog="reasoning_seg_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--frames", type=int, default=90, help="frames in the recorded sequence (30 fps)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.5,
        help="playback rate multiplier (0.5: player and node share 2 cores here)",
    )
    p.add_argument("--queries", type=int, default=3, help="how many of the scene's queries to ask")
    p.add_argument(
        "--sim-profile",
        default="lisa7b",
        help="failure profile of the SIMULATED 2D model: lisa7b (LISA-7B-like errors), lisa13b, oracle",
    )
    p.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "57")))
    a = p.parse_args(argv)

    os.environ["ROS_DOMAIN_ID"] = str(a.domain_id)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from reasoning_seg.camera import CameraIntrinsics
    from reasoning_seg.config import PipelineConfig
    from reasoning_seg.metrics import precision_recall, voxel_iou
    from reasoning_seg.result import OrientedBox
    from reasoning_seg.ros.bringup import default_params_file, node_command, player_command
    from reasoning_seg.ros.conversions import cloud_msg_to_numpy, pose_to_matrix
    from reasoning_seg.ros.query_client import call_segment, result_summary, write_ply
    from reasoning_seg.sim.scene import SyntheticScene
    from reasoning_seg.srv import Segment
    from reasoning_seg.visualize import render_map_picture

    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scene = SyntheticScene.generate(a.seed)
    scene.save(out / "scene")
    intr = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5)
    poses = scene.trajectory(a.frames, seed=a.seed)
    shutil.rmtree(out / "sequence", ignore_errors=True)  # the demo owns its output folder
    scene.record_sequence(out / "sequence", intr, poses)
    t_record = time.perf_counter() - t0
    print(
        f"[demo] simulated scene (seed {a.seed}) recorded: {a.frames} frames in {t_record:.1f} s -> "
        f"{out / 'sequence'}",
        flush=True,
    )

    params_file = default_params_file()
    voxel = PipelineConfig.from_yaml(params_file).map.voxel_size
    log = open(out / "node.log", "w")  # noqa: SIM115 - closed in finally
    node_proc = subprocess.Popen(
        node_command(
            params_file,
            # A recording: reliable camera QoS (README), so every frame arrives whatever the load
            # and the answers do not depend on which frames a busy machine happened to drop.
            overrides={
                "segmenter.scene": str(out / "scene"),
                "segmenter.sim_profile": a.sim_profile,
                "sensor_qos": "reliable",
            },
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rclpy.init()
    client = rclpy.create_node("reasoning_seg_demo")
    latest: dict[str, object] = {}
    latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    client.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda m: latest.__setitem__("diag", {kv.key: kv.value for s in m.status for kv in s.values}),
        10,
    )
    client.create_subscription(
        PointCloud2, "/reasoning_seg/map_cloud", lambda m: latest.__setitem__("map", m), latched
    )
    summary: dict = {
        "seed": a.seed,
        "frames": a.frames,
        "sim_profile": a.sim_profile,
        "record_s": round(t_record, 2),
        "queries": [],
    }
    code = 0
    try:
        seg_client = client.create_client(Segment, "/reasoning_seg/segment")
        if not seg_client.wait_for_service(timeout_sec=60.0):
            raise RuntimeError("the node did not come up; see node.log")
        client.destroy_client(seg_client)
        t_play = time.perf_counter()
        player = subprocess.Popen(
            player_command(
                str(out / "sequence"),
                overrides={"rate": a.rate, "wait_for_subscribers": 1, "start_delay": 1.0},
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        while player.poll() is None:
            rclpy.spin_once(client, timeout_sec=0.1)
        # Let the node finish integrating what is queued, then read its counters.
        settle = time.perf_counter() + 3.0
        while time.perf_counter() < settle:
            rclpy.spin_once(client, timeout_sec=0.1)
        summary["playback_s"] = round(time.perf_counter() - t_play, 2)
        summary["node_counters"] = latest.get("diag", {})
        print(
            f"[demo] playback done in {summary['playback_s']} s; node counters: {summary['node_counters']}",
            flush=True,
        )

        deadline = time.perf_counter() + 15.0
        while "map" not in latest and time.perf_counter() < deadline:
            rclpy.spin_once(client, timeout_sec=0.1)
        m = cloud_msg_to_numpy(latest["map"]) if "map" in latest else {}
        map_pts = m["points"].astype(np.float64) if m else np.zeros((0, 3))
        map_cols = m["colors"].astype(np.float32) / 255.0 if m else np.zeros((0, 3), np.float32)
        gt_labels = scene.label_points(map_pts, max_distance=1.5 * voxel)

        for i, q in enumerate(_pick_queries(scene, a.queries)):
            resp = call_segment(client, q.text, timeout=120.0)
            s = result_summary(resp.success, resp.message, resp.result)
            cloud = cloud_msg_to_numpy(resp.result.cloud)
            pred = cloud["points"].astype(np.float64) if resp.result.num_points else np.zeros((0, 3))
            gt = map_pts[gt_labels == q.target_instance_id]
            prec, rec = precision_recall(pred, gt, voxel)
            s["kind"] = q.kind
            s["ground_truth"] = {
                "target_instance_id": q.target_instance_id,
                "iou": round(voxel_iou(pred, gt, voxel), 4),
                "precision": round(prec, 4),
                "recall": round(rec, 4),
                "gt_voxels_in_map": len(gt),
            }
            if resp.result.num_points:
                write_ply(out / f"target_{i}.ply", resp.result)
            T = pose_to_matrix(resp.result.box.center)
            sz = resp.result.box.size
            box = OrientedBox(T[:3, 3], T[:3, :3], np.array([sz.x, sz.y, sz.z]))
            render_map_picture(
                out / f"target_{i}.png",
                map_pts,
                map_cols,
                pred,
                box,
                f"'{q.text}' -> {resp.result.num_points} pts, IoU {s['ground_truth']['iou']:.2f}",
            )
            summary["queries"].append(s)
            print(
                f"[demo] '{q.text}' ({q.kind}): {resp.message}; IoU vs ground truth "
                f"{s['ground_truth']['iou']:.3f}; timings {s['timings_s']}",
                flush=True,
            )
            if not resp.success:
                code = 1
    except Exception as exc:  # noqa: BLE001 - report, clean up, non-zero exit
        print(f"[demo] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_proc.terminate()
        try:
            node_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        log.close()
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] wrote {out / 'summary.json'} and target_*.ply / target_*.png in {out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
