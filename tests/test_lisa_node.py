"""The node configured with the LISA backend, over real DDS: loads at start, reports readiness, answers.

The checkpoint is a tiny random one in the published layout (no weights can be downloaded here), so
the answers are random; what is tested is that the node loads a LISA folder from parameters, says
when it is ready or why it is not, and runs queries through the real model.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.lisa.random_checkpoint import TINY, write_random_lisa_checkpoint
from reasoning_seg.ros.node import ReasoningSegNode, executor_threads
from reasoning_seg.ros.player import play
from reasoning_seg.ros.query_client import call_segment
from reasoning_seg.sim.scene import SyntheticScene

pytestmark = pytest.mark.ros

INTR = CameraIntrinsics(160, 120, 131.25, 131.25, 79.5, 59.5)


def _start(ros_context, params: list[Parameter]):
    node = ReasoningSegNode(context=ros_context, parameter_overrides=params)
    executor = MultiThreadedExecutor(num_threads=executor_threads(node.cfg), context=ros_context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return node, executor, thread


def _stop(node, executor, thread) -> None:
    executor.shutdown()
    thread.join(timeout=5)
    node.destroy_node()


def _wait_status(node, predicate, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate(node.model_status):
        time.sleep(0.05)
    return node.model_status


def test_node_loads_lisa_from_parameters_and_answers_with_it(ros_context, tmp_path):
    ckpt, clip = write_random_lisa_checkpoint(tmp_path / "LISA-tiny", TINY, seed=0)
    scene = SyntheticScene.generate(3)
    scene.record_sequence(tmp_path / "seq", INTR, scene.trajectory(12, seed=3))
    node, executor, thread = _start(
        ros_context,
        [
            Parameter("segmenter.backend", value="lisa"),
            Parameter("segmenter.lisa_path", value=str(ckpt)),
            Parameter("segmenter.lisa_vision_tower", value=str(clip)),
            Parameter("segmenter.lisa_device", value="cpu"),
            Parameter("segmenter.embedding_dim", value=TINY.out_dim),
            Parameter("map.voxel_size", value=0.04),
        ],
    )
    client = rclpy.create_node("lisa_client", context=ros_context)
    try:
        assert _wait_status(node, lambda s: s != "loading") == "ready"
        play(
            {"folder": str(tmp_path / "seq"), "wait_for_subscribers": 1, "start_delay": 1.0, "rate": 1.0},
            context=ros_context,
            timeout_sec=60,
        )
        deadline = time.monotonic() + 15
        while node.pipeline.stats.frames_integrated < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        resp = call_segment(client, "something I can sit on", timeout=120.0)
        assert resp.success, resp.message
        assert resp.result.segmenter == "lisa:LISA-tiny"
        assert "[SEG]" in resp.result.answer  # the rigged tiny model answers "[SEG]"
        assert [t.stage for t in resp.result.timings][:3] == ["snapshot", "view_selection", "segmentation"]
    finally:
        client.destroy_node()
        _stop(node, executor, thread)


def test_corrupt_checkpoint_leaves_the_node_up_and_says_why(ros_context, tmp_path):
    bad = tmp_path / "LISA-broken"
    bad.mkdir()
    (bad / "config.json").write_text("{ this is not json")
    node, executor, thread = _start(
        ros_context,
        [
            Parameter("segmenter.backend", value="lisa"),
            Parameter("segmenter.lisa_path", value=str(bad)),
            Parameter("segmenter.lisa_device", value="cpu"),
        ],
    )
    client = rclpy.create_node("lisa_client_bad", context=ros_context)
    try:
        status = _wait_status(node, lambda s: s != "loading")
        assert status.startswith("failed") and "config.json" in status
        resp = call_segment(client, "the chair", timeout=30.0)
        assert not resp.success and "not ready" in resp.message and "config.json" in resp.message
        assert node.pipeline.stats.frames_received == 0  # still up; nothing else disturbed
    finally:
        client.destroy_node()
        _stop(node, executor, thread)
