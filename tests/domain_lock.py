"""Reserving a ROS domain id across processes with lock files (tests, soak benchmarks).

DDS discovery is per domain id: two processes that run ROS graphs on the same machine at the same time
must not share one, or a test's client finds another run's node (and a node integrates another run's
frames). Each run holds an exclusive ``flock`` on ``<tmp>/reasoning_seg_ros_domains/<id>.lock`` for as
long as it uses the id; ``flock`` locks vanish when the process dies, so a crashed run leaks nothing.
Standard library only: the test suite's conftest imports it before anything ROS is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "reasoning_seg_ros_domains"
DOMAIN_MIN, DOMAIN_MAX = 1, 100


@contextlib.contextmanager
def reserve_domain_id(
    first: int = DOMAIN_MIN, last: int = DOMAIN_MAX, timeout_s: float = 30.0, poll_s: float = 0.1
) -> Iterator[int]:
    """Hold an exclusive lock on a free domain id in ``[first, last]`` until the context exits.

    The search starts at a pid-dependent offset so concurrent processes rarely contend for the same
    lock file; when every id is taken it retries every ``poll_s`` until ``timeout_s``.
    """
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    span = last - first + 1
    start = (os.getpid() * 7919 + time.monotonic_ns()) % span
    deadline = time.monotonic() + timeout_s
    while True:
        for k in range(span):
            domain = first + (start + k) % span
            fd = os.open(LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                yield domain
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free ROS domain id in {first}..{last} after {timeout_s} s")
        time.sleep(poll_s)
