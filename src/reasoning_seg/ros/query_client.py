"""``reasoning_seg_query``: ask the running node a question from the command line.

What ``ros2 service call /reasoning_seg/segment reasoning_seg_msgs/srv/Segment "{query: ...}"`` does on a
full ROS 2 install, plus a readable summary and optional PLY/JSON output of the target, so it also
works where ros2cli is not installed (PyPI wheels). ``--action`` uses the action instead and prints
progress feedback. ``--track`` / ``--untrack`` start and stop a persistent query (the node re-publishes
its answer as the map grows; ``--untrack`` without a query stops all), and ``--remove`` clears a
picked target's voxels from the map (without a query: the latest answer's target).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from reasoning_seg_msgs.action import SegmentQuery
from reasoning_seg_msgs.msg import SegmentationResult
from reasoning_seg_msgs.srv import RemoveTarget, Segment, TrackQuery

from reasoning_seg.ros.conversions import cloud_msg_to_numpy, pose_to_matrix


def result_summary(success: bool, message: str, r: SegmentationResult) -> dict:
    """JSON-friendly view of a reply (what the CLI prints and the demo writes)."""
    T = pose_to_matrix(r.box.center) if r.num_points else np.eye(4)
    return {
        "success": success,
        "message": message,
        "query": r.query,
        "found": r.found,
        "confidence": round(float(r.confidence), 4),
        "num_points": int(r.num_points),
        "answer": r.answer,
        "method": r.method,
        "segmenter": r.segmenter,
        "frame_id": r.header.frame_id,
        "box": {
            "center": T[:3, 3].round(4).tolist(),
            "size": [round(r.box.size.x, 4), round(r.box.size.y, 4), round(r.box.size.z, 4)],
            "rotation": T[:3, :3].round(6).tolist(),
        },
        "keyframe_ids": list(r.keyframe_ids),
        "timings_s": {t.stage: round(t.seconds, 5) for t in r.timings},
    }


def write_ply(path: str | Path, r: SegmentationResult) -> int:
    """Write the target cloud (x y z, rgb, confidence) as ASCII PLY; returns the point count."""
    data = cloud_msg_to_numpy(r.cloud)
    pts = data.get("points", np.zeros((0, 3)))
    rgb = data.get("colors", np.zeros((len(pts), 3), np.uint8))
    conf = data.get("confidence", np.zeros(len(pts), np.float32))
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(pts)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "property float confidence",
        "end_header",
    ]
    lines += [
        f"{p[0]:.5f} {p[1]:.5f} {p[2]:.5f} {c[0]} {c[1]} {c[2]} {s:.4f}"
        for p, c, s in zip(pts, rgb, conf, strict=True)
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(pts)


def spin_until_done(node: Node, future, timeout: float) -> None:
    """Spin ``node`` until ``future`` is done, on an executor of the node's own context.

    Tests and embedding applications run nodes in non-default contexts, which the global executor
    cannot spin.
    """
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        executor.spin_until_future_complete(future, timeout_sec=timeout)
    finally:
        executor.remove_node(node)
        executor.shutdown()


def call_service(node: Node, srv_type, service: str, request, timeout: float = 60.0):
    """Call ``service`` and wait for the response; TimeoutError when it is absent or does not answer."""
    client = node.create_client(srv_type, service)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {service} not available after {timeout:.0f}s (is the node running?)")
        future = client.call_async(request)
        spin_until_done(node, future, timeout)
        if not future.done():
            raise TimeoutError(f"no answer from {service} within {timeout:.0f}s")
        return future.result()
    finally:
        node.destroy_client(client)


def call_segment(
    node: Node,
    query: str,
    num_views: int = 0,
    score_threshold: float = 0.0,
    target_frame: str = "",
    service: str = "/reasoning_seg/segment",
    timeout: float = 60.0,
    include_view_images: bool = False,
) -> Segment.Response:
    """Call the Segment service and wait; raises TimeoutError when the node does not answer.

    ``include_view_images`` asks for each view's image and 2D mask in ``result.views``
    (:func:`~reasoning_seg.ros.conversions.view_images_from_msgs` decodes them).
    """
    req = Segment.Request(
        query=query,
        num_views=num_views,
        score_threshold=float(score_threshold),
        target_frame=target_frame,
        include_view_images=include_view_images,
    )
    return call_service(node, Segment, service, req, timeout)


def call_track(
    node: Node,
    query: str,
    num_views: int = 0,
    score_threshold: float = 0.0,
    period: float = 0.0,
    clear: bool = False,
    service: str = "/reasoning_seg/track_query",
    timeout: float = 60.0,
) -> TrackQuery.Response:
    """Start (``clear=False``) or stop (``clear=True``; ``query=""`` = all) tracking a query."""
    req = TrackQuery.Request(
        query=query,
        num_views=num_views,
        score_threshold=float(score_threshold),
        period=float(period),
        clear=clear,
    )
    return call_service(node, TrackQuery, service, req, timeout)


def call_remove(
    node: Node,
    query: str = "",
    margin: float = 0.0,
    service: str = "/reasoning_seg/remove_target",
    timeout: float = 60.0,
) -> RemoveTarget.Response:
    """Remove a query's target from the map (``query=""``: the latest answer's target)."""
    return call_service(
        node, RemoveTarget, service, RemoveTarget.Request(query=query, margin=float(margin)), timeout
    )


def call_action(
    node: Node,
    query: str,
    num_views: int,
    score_threshold: float,
    target_frame: str,
    action: str,
    timeout: float,
) -> SegmentQuery.Result:
    """Send a SegmentQuery goal, print feedback, return the result."""
    client = ActionClient(node, SegmentQuery, action)
    if not client.wait_for_server(timeout_sec=timeout):
        raise TimeoutError(f"action {action} not available after {timeout:.0f}s")
    goal = SegmentQuery.Goal(
        query=query, num_views=num_views, score_threshold=float(score_threshold), target_frame=target_frame
    )

    def feedback(msg) -> None:
        f = msg.feedback
        print(f"  [{f.stage}] {f.views_done}/{f.views_total} views", file=sys.stderr)

    send = client.send_goal_async(goal, feedback_callback=feedback)
    spin_until_done(node, send, timeout)
    handle = send.result()
    if handle is None or not handle.accepted:
        raise RuntimeError("goal rejected")
    res = handle.get_result_async()
    spin_until_done(node, res, timeout)
    if not res.done():
        handle.cancel_goal_async()
        raise TimeoutError(f"no result within {timeout:.0f}s (goal cancelled)")
    return res.result().result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reasoning_seg_query``."""
    argv = sys.argv if argv is None else argv
    ros_args = rclpy.utilities.remove_ros_args(argv)
    p = argparse.ArgumentParser(prog="reasoning_seg_query", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "query",
        nargs="?",
        default="",
        help="what to find, e.g. 'something I can use to cut this paper' (may be empty with --untrack, "
        "--remove)",
    )
    p.add_argument("--views", type=int, default=0, help="number of views (0 = node default)")
    p.add_argument("--threshold", type=float, default=0.0, help="score threshold (0 = node default)")
    p.add_argument("--frame", default="", help="frame to report in (empty = map frame)")
    p.add_argument("--node", default="/reasoning_seg", help="fully qualified node name")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--action", action="store_true", help="use the SegmentQuery action (progress feedback)")
    mode.add_argument("--track", action="store_true", help="keep the query answered as the map grows")
    mode.add_argument("--untrack", action="store_true", help="stop tracking the query (none given: all)")
    mode.add_argument("--remove", action="store_true", help="remove the query's target from the map")
    p.add_argument(
        "--period", type=float, default=0.0, help="--track: min seconds between re-runs (0 = node default)"
    )
    p.add_argument(
        "--margin", type=float, default=0.0, help="--remove: extra metres cleared (0 = node default)"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the node")
    p.add_argument("--ply", help="write the target cloud to this PLY file")
    p.add_argument("--json", help="write the summary to this JSON file")
    a = p.parse_args(ros_args[1:])
    rclpy.init(args=argv)
    node = rclpy.create_node("reasoning_seg_query")
    try:
        if a.track or a.untrack:
            t = call_track(
                node, a.query, a.views, a.threshold, a.period, a.untrack, f"{a.node}/track_query", a.timeout
            )
            print(
                json.dumps({"success": t.success, "message": t.message, "active": list(t.active)}, indent=2)
            )
            return 0 if t.success else 1
        if a.remove:
            rm = call_remove(node, a.query, a.margin, f"{a.node}/remove_target", a.timeout)
            out = {"success": rm.success, "message": rm.message, "num_points_removed": rm.num_points_removed}
            print(json.dumps(out, indent=2))
            return 0 if rm.success else 1
        if a.action:
            r = call_action(
                node, a.query, a.views, a.threshold, a.frame, f"{a.node}/segment_query", a.timeout
            )
        else:
            r = call_segment(node, a.query, a.views, a.threshold, a.frame, f"{a.node}/segment", a.timeout)
        summary = result_summary(r.success, r.message, r.result)
        print(json.dumps(summary, indent=2))
        if a.ply and r.result.num_points:
            write_ply(a.ply, r.result)
        if a.json:
            Path(a.json).write_text(json.dumps(summary, indent=2))
        return 0 if r.success else 1
    except (TimeoutError, RuntimeError) as exc:
        print(f"reasoning_seg_query: {exc}", file=sys.stderr)
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
