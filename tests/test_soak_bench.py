"""Fast checks of the soak benchmark's measurement code and of the bringup/launch argument mirror.

The soak itself takes minutes (``bench/soak_bench.py``); here its pieces run on tiny inputs: the memory
fit must see a leak and must not see the warm-up, the query book-keeping must count every kind of lost
query, the player wrapper must really publish and report its counters, and ``reasoning_seg_bringup``
must take the same arguments as ``launch/bringup.launch.py`` and map them to the same parameters.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("soak_bench", ROOT / "bench" / "soak_bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["soak_bench"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


sb = _load_bench()


# ------------------------------------------------------------------------------------ memory
def test_memory_trend_sees_a_leak_and_not_a_flat_line() -> None:
    t = np.arange(0, 600, 2.0)
    rng = np.random.default_rng(0)
    flat = 500 + rng.normal(0, 3, t.size)  # GC jitter, no trend
    leak = 500 + 2.0 * t / 60.0 + rng.normal(0, 3, t.size)  # 2 MiB per minute
    f, k = sb.memory_trend(list(t), list(flat), 0.2), sb.memory_trend(list(t), list(leak), 0.2)
    assert abs(f.slope_mib_per_min) < 0.3
    assert k.slope_mib_per_min == pytest.approx(2.0, abs=0.3)
    assert k.samples == int(np.sum(t >= 0.2 * t[-1]))
    assert k.max_mib >= k.end_mib - 1e-9


def test_memory_trend_excludes_the_warm_up() -> None:
    t = np.arange(0, 100, 1.0)
    rss = np.where(t < 15, 100 + 20 * t, 400.0)  # steep map growth during the first 15%, then flat
    m = sb.memory_trend(list(t), list(rss), 0.2)
    assert m.slope_mib_per_min == pytest.approx(0.0, abs=1e-9)
    assert m.start_mib == m.end_mib == 400.0
    # With no warm-up excluded the same data looks like a leak: the exclusion is what makes it flat.
    assert sb.memory_trend(list(t), list(rss), 0.0).slope_mib_per_min > 10
    # A fixed warm-up in seconds replaces the fraction: 10 s is too short for this curve, 15 s is not.
    assert sb.memory_trend(list(t), list(rss), 0.2, warmup_s=10.0).slope_mib_per_min > 1
    assert sb.memory_trend(list(t), list(rss), 0.9, warmup_s=15.0).samples == 85
    # Samples of a vanished process (NaN) are ignored, not fitted.
    gone = sb.memory_trend([0.0, 1.0, 2.0], [float("nan")] * 3, 0.2)
    assert gone.samples == 0 and np.isnan(gone.slope_mib_per_min)


def test_rss_covers_the_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        assert child.pid in sb.process_tree(os.getpid())
        own = sb.rss_mib(os.getpid())
        # The child's 64 MiB buffer counts towards the parent's tree once it is resident.
        deadline = 0
        while sb.rss_mib(os.getpid()) < own + 50 and deadline < 100:
            import time

            time.sleep(0.05)
            deadline += 1
        assert sb.rss_mib(os.getpid()) >= own + 50
    finally:
        child.kill()
        child.wait()
    assert np.isnan(sb.rss_mib(child.pid))


# ------------------------------------------------------------------------------------ queries
def test_query_log_counts_every_lost_query() -> None:
    q = sb.QueryLog()
    q.sent = 5
    q.record(True, "found 10 points", 0.5, {"view_selection": 0.1, "segmentation": 0.3})
    q.record(True, "not found: x", 0.7, {"view_selection": 0.2, "segmentation": 0.4, "3d_net": 0.05})
    q.record(False, "busy: another query is running (concurrent_queries=reject)", 0.01, {})
    q.timed_out += 1
    # one query never answered at all
    assert q.answered == 2 and q.refused == {"busy": 1}
    assert q.dropped == 3 and q.settled_bad == 2
    assert q.latencies_s == [0.5, 0.7]
    assert sb.classify_refusal("2D model not ready (loading)") == "2D model not ready"
    rows = sb.stage_table(q.timings)
    assert [r[0] for r in rows] == [sb.STAGE_LABELS[s] for s in ("view_selection", "segmentation", "3d_net")]
    assert rows[0][1:] == (2, pytest.approx(150.0), pytest.approx(195.0))
    assert rows[2][1] == 1  # the 3D net ran in one query only


def _report(slope: float, dropped: int) -> object:
    rep = sb.SoakReport("cmd", 1.0, 30.0, 3.0, duration_s=60.0, published=1800, received=900, integrated=600)
    rep.node_memory = sb.MemoryTrend(10, 100.0, 101.0, 102.0, slope)
    rep.queries.sent = 20
    rep.queries.answered = 20 - dropped
    rep.queries.latencies_s = [0.4] * rep.queries.answered
    return rep


def test_verdicts_and_table() -> None:
    ok = _report(0.2, 0)
    ok.rss_series = [(0.0, 400.0, 90.0, 100), (2.0, 410.0, 91.0, 200)]
    assert ok.passed()
    assert [v[0] for v in ok.verdicts()] == [True, True, False]  # 10 Hz integrated is not 30 Hz
    assert not _report(1.5, 0).passed()  # memory grows
    assert not _report(0.2, 1).passed()  # a query was lost
    text = sb.render(ok)
    assert "**PASS** node memory growth" in text and "**FAIL** 30 Hz sustained" in text
    assert "| frames integrated into the map | 600 (10.0 Hz) |" in text
    assert "| **end to end (client)** | 20 | 400.0 | 400.0 |" in text
    assert "| 2 | 410.0 | 91.0 | 200 |" in text


# ------------------------------------------------------------------------------------ player wrapper
@pytest.mark.ros
def test_player_wrapper_publishes_and_reports(tmp_path: Path, ros_context, ros_domain_id: int) -> None:
    """The wrapper's counters, and a real subscriber that receives what it says it published."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from PIL import Image as PILImage
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CameraInfo, Image

    from reasoning_seg.camera import look_at
    from reasoning_seg.ros.conversions import image_msg_to_rgb8

    seq = tmp_path / "seq"
    (seq / "seq-01").mkdir(parents=True)
    np.savetxt(seq / "camera-intrinsics.txt", np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]]))
    for i in range(3):
        PILImage.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(
            seq / "seq-01" / f"frame-{i:06d}.color.png"
        )
        PILImage.fromarray(np.full((24, 32), 1500, np.uint16)).save(
            seq / "seq-01" / f"frame-{i:06d}.depth.png"
        )
        np.savetxt(seq / "seq-01" / f"frame-{i:06d}.pose.txt", look_at([0.1 * i, -1, 0.5], [0, 2, 0.4]))
    # A subscriber on every topic, up before the player (which waits for it), reliable like the player.
    got: dict[str, list] = {"color": [], "depth": [], "info": [], "pose": []}
    sub = rclpy.create_node("soak_listener", context=ros_context)
    qos = QoSProfile(depth=10)
    for key, typ, topic in (
        ("color", Image, "camera/color/image_raw"),
        ("depth", Image, "camera/depth/image_raw"),
        ("info", CameraInfo, "camera/color/camera_info"),
        ("pose", PoseStamped, "camera/pose"),
    ):
        sub.create_subscription(typ, topic, lambda m, k=key: got[k].append(m), qos)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(sub)
    summary = tmp_path / "player.json"
    params = {"folder": str(seq), "rate": 10.0, "loop": False, "restamp": True, "wait_for_subscribers": 1}
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_domain_id)}
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "soak_bench.py"),
        "--player-params",
        json.dumps(params),
        "--player-summary",
        str(summary),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and min(map(len, got.values())) < 3:
            ex.spin_once(timeout_sec=0.05)
        assert proc.wait(timeout=30) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        ex.shutdown()
        sub.destroy_node()
    data = json.loads(summary.read_text())
    from reasoning_seg.ros.player import TFMessage

    per_frame = 4 if TFMessage is None else 5  # + /tf where tf2_msgs is installed
    assert data["steps"] == 3 and data["messages"] == 3 * per_frame and data["loops"] == 1
    # What the player counted did arrive, in order, with the recorded content.
    assert {k: len(v) for k, v in got.items()} == {"color": 3, "depth": 3, "info": 3, "pose": 3}
    assert [int(image_msg_to_rgb8(m)[0, 0, 0]) for m in got["color"]] == [0, 40, 80]
    assert [round(m.pose.position.x, 6) for m in got["pose"]] == [0.0, 0.1, 0.2]


# ------------------------------------------------------------------------------------ bringup / launch
def _launch_tables() -> tuple[set[str], dict[str, str]]:
    """Launch argument names and NODE_OVERRIDES of launch/bringup.launch.py (parsed, launch_ros is absent)."""
    tree = ast.parse((ROOT / "launch" / "bringup.launch.py").read_text())
    names: set[str] = set()
    overrides: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            if isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "NODE_OVERRIDES":
                overrides = ast.literal_eval(node.value)
            elif node.targets[0].id == "_DESCRIPTIONS":
                descriptions = ast.literal_eval(node.value)
    return names | set(descriptions), overrides


def test_bringup_mirrors_the_launch_file() -> None:
    from reasoning_seg.ros import bringup

    names, overrides = _launch_tables()
    assert overrides == bringup.NODE_OVERRIDES
    dests = {a.dest for a in bringup.build_parser()._actions if a.dest != "help"}
    assert names == dests
    for needed in (
        "namespace",
        "params_file",
        "sequence",
        "bag",
        "rate",
        "use_rviz",
        "segmenter",
        "lisa_path",
        "lisa_vision_tower",
        "net_checkpoint",
        "device",
        "lisa_device",
        "net_device",
    ):
        assert needed in names


def test_bringup_commands(tmp_path: Path) -> None:
    from reasoning_seg.ros import bringup

    bag = tmp_path / "run"
    bag.mkdir()
    a = bringup.build_parser().parse_args(
        [
            "--namespace",
            "/robot",
            "--bag",
            str(bag),
            "--rate",
            "2",
            "--loop",
            "--net-checkpoint",
            "m.pt",
            "--net-device",
            "cuda:1",
            "--lisa-device",
            "cuda:0",
            "--device",
            "CUDA:0",
        ]
    )
    node, player = bringup.commands(a)
    text = " ".join(node)
    assert "-r __ns:=/robot" in text
    assert f"net.checkpoint:={Path('m.pt').resolve()}" in text
    for kv in ("net.device:=cuda:1", "segmenter.lisa_device:=cuda:0", "map.device:=CUDA:0"):
        assert kv in text
    assert "segmenter.backend" not in text  # not given: the params file's value stays
    # --bag plays a bag even without metadata.yaml (a folder would be guessed otherwise).
    assert f"bag:={bag.resolve()}" in " ".join(player) and "loop:=true" in player and "rate:=2.0" in player
    with pytest.raises(ValueError, match="not both"):
        bringup.commands(bringup.build_parser().parse_args(["--bag", "x", "--sequence", "y"]))


def test_rviz_config_shows_the_outputs() -> None:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "reasoning_seg.rviz").read_text())["Visualization Manager"]
    assert cfg["Global Options"]["Fixed Frame"] == "map"
    by_topic = {d["Topic"]["Value"]: d for d in cfg["Displays"] if "Topic" in d}
    for topic in ("map_cloud", "target_cloud", "markers"):
        d = by_topic[f"/reasoning_seg/{topic}"]
        # The node's outputs are latched: a volatile display would miss them until the next answer.
        assert d["Topic"]["Durability Policy"] == "Transient Local", topic
    target = by_topic["/reasoning_seg/target_cloud"]
    assert target["Color Transformer"] == "Intensity" and target["Channel Name"] == "confidence"
    assert by_topic["/reasoning_seg/markers"]["Class"] == "rviz_default_plugins/MarkerArray"
