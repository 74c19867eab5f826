"""What the node's parts share: QoS profiles, limits and small helpers (see :mod:`.node`)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from reasoning_seg_msgs.action import SegmentQuery

from reasoning_seg.ros.params import NodeConfig

_CAMERA_QUEUE = 30  # reliable camera subscription depth, and the colour/depth pairing queue depth
# Sensor stamps going back by more than this many seconds are a restarted source (a replayed bag, a
# reset simulation), not an out-of-order frame: buffers are reset and the stream is accepted again.
_TIME_JUMP_BACK = 2.0
_LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# Requests every service and the action keep while all their handlers are busy. A DDS service drops
# what overflows its history without an answer, so the depth is the documented flood limit (README):
# beyond this many requests in flight at once, the oldest unserved ones are lost.
_REQUESTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
_INVALID_QUERY_PREFIXES = ("query must be", "query is ", "query contains no words")
_MAX_ECHO = 64  # characters of a client's target_frame / frame_id echoed back in messages
_WAIT_SLICE = 0.1  # s: a queued query re-checks for cancellation this often
_TRACK_TICK = 0.1  # s: how often tracked queries are checked for being due
_RATE_WINDOW = 10.0  # s: frame rates in /diagnostics are averaged over this sliding window
_MAX_CORRECTION_POSES = 1_000_000  # a Path longer than this is refused (a day of 10 Hz poses is 864k)
_REMEMBERED = 16  # latest answers kept for RemoveTarget (plus one per tracked query)
_USER = ""  # marker owner of the user's latest query; tracked queries own markers under their text


def _param_range(name: str) -> tuple[float, float]:
    """The declared (lo, hi) range of a node parameter (one source for the checks of requests)."""
    return next(f.metadata["range"] for f in fields(NodeConfig) if f.name == name)


_MARGIN_RANGE = _param_range("removal_margin")
_PERIOD_RANGE = _param_range("persistent_period")


def _answer_service(why: str, *args):
    """A guarded callback's answer: a service response with ``success`` false and ``why``, else None."""
    resp = args[1] if len(args) == 2 else None
    if resp is None or not hasattr(resp, "success"):
        return None
    resp.success = False
    if hasattr(resp, "message"):
        resp.message = why
    return resp


def _abort_goal(why: str, goal_handle) -> SegmentQuery.Result:
    """A guarded action's answer: the goal aborted, its result saying why."""
    try:
        goal_handle.abort()
    except Exception:  # noqa: BLE001 - already in a terminal state
        pass
    return SegmentQuery.Result(success=False, message=why)


def printable(text: str) -> str:
    """``text`` with control and escape characters shown as escapes (a query must not drive a terminal)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


@dataclass
class _Tracked:
    """A persistent query (TrackQuery) and when it last ran."""

    query: str
    num_views: int
    score_threshold: float
    period: float
    last_run: float = -math.inf  # monotonic seconds
    last_version: int = -1  # map version it last ran on
    skip_counted: float = -math.inf  # when a skipped round was last counted


def gpu_memory_mb() -> float | None:
    """MiB of CUDA memory PyTorch holds on all devices, or None when this process does not use CUDA.

    Only looks at torch if something already imported it (the 2D model or the 3D net): importing it
    here would cost seconds and memory for nothing, and it must not initialise CUDA either.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not (cuda.is_available() and cuda.is_initialized()):
            return None
        return sum(cuda.memory_allocated(i) for i in range(cuda.device_count())) / 2**20
    except Exception:  # noqa: BLE001 - diagnostics must never take the node down
        return None
