"""The node as its own process, stopped the way a terminal and ``ros2 launch`` stop it.

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, and ``ros2 launch``
forwards one more to each node it started: the node gets SIGINT twice or more. Found while running
the README's launch command over the real launch library (issue 18): the second one broke the
shutdown with a ``KeyboardInterrupt`` traceback and exit code -2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reasoning_seg.ros.bringup import default_params_file, node_command


@pytest.mark.ros
def test_repeated_sigint_ends_the_node_cleanly(ros_context, ros_domain_id: int, tmp_path: Path) -> None:
    import rclpy
    import rclpy.executors
    from diagnostic_msgs.msg import DiagnosticArray

    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id), ROS_LOG_DIR=str(tmp_path / "log"))
    cmd = node_command(default_params_file(), overrides={"map_directory": str(tmp_path / "maps")})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:  # up and spinning: it logged how it pairs images
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "colour/depth paired by" in line:
                break
        assert any("colour/depth paired by" in s for s in lines), "".join(lines)
        # Spinning: its /diagnostics timer has fired (a SIGINT before spin() would be another test).
        listener = rclpy.create_node("sigint_listener", context=ros_context)
        got: list = []
        listener.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
        executor.add_node(listener)
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown()
        listener.destroy_node()
        assert got, "no /diagnostics from the node"
        # A burst of SIGINTs over the whole shutdown, as a terminal plus launch deliver them.
        end = time.monotonic() + 3.0
        while proc.poll() is None and time.monotonic() < end:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + out
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
