"""Shared pytest setup: an isolated ROS 2 environment for tests that talk over DDS.

Why each piece exists:

- ``ROS_LOG_DIR`` points at a throw-away directory: rclpy otherwise writes log files under
  ``~/.ros/log`` and fails outright when that is not writable (CI sandboxes).
- ``RMW_IMPLEMENTATION`` is pinned so a stray environment cannot switch the middleware, and
  ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` keeps discovery off the network.
- ``ros_context`` gives every test its own initialised :class:`rclpy.context.Context` on a
  **domain id no other running test uses**, on this machine, across processes: several engineers
  (and pytest-xdist workers) run ROS tests at the same time, and two tests sharing a domain would
  receive each other's messages. Uniqueness is enforced with an exclusive lock file per domain id,
  held for the duration of the test.

Tests that need ROS are marked ``@pytest.mark.ros`` (registered here); without rclpy they fail, never skip
is not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domain_lock import reserve_domain_id

_log_dir: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Set the ROS environment before any test module imports rclpy."""
    global _log_dir
    config.addinivalue_line("markers", "ros: test needs rclpy and talks over DDS on loopback")
    _log_dir = tempfile.mkdtemp(prefix="reasoning_seg_roslog_")
    if not os.path.exists("/dev/nvidiactl"):
        # No GPU: Triton kernels (map.backend triton, net.backend spconv) run in Triton's interpreter,
        # which must be chosen before Triton is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["ROS_LOG_DIR"] = _log_dir
    os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _log_dir:
        shutil.rmtree(_log_dir, ignore_errors=True)


@pytest.fixture
def ros_domain_id() -> Iterator[int]:
    """A ROS domain id reserved for this test alone (see module docstring)."""
    with reserve_domain_id() as domain:
        yield domain


@pytest.fixture
def ros_context(ros_domain_id: int) -> Iterator[Any]:
    """A fresh, initialised ``rclpy.Context`` on this test's own domain; shut down afterwards.

    Create nodes with ``context=ros_context`` and executors with ``context=ros_context``; destroy
    nodes and shut executors down in the test (or its own fixtures) before this fixture's
    teardown runs, as rclpy requires.
    """
    import rclpy  # a missing rclpy must fail the ROS tests, never skip them
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        yield ctx
    finally:
        ctx.try_shutdown()


@pytest.fixture
def spin_until() -> Callable[..., bool]:
    """``spin_until(executor, predicate, timeout=10.0) -> bool``: spin until ``predicate()`` holds.

    Returns whether it held; spins in short slices so a test never sleeps longer than needed.
    """

    def _spin(executor: Any, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            executor.spin_once(timeout_sec=0.02)
        return True

    return _spin
