"""Process-level helpers shared by the package's executables (node, player)."""

from __future__ import annotations

import signal
import threading


def ignore_further_sigint() -> None:
    """From now on ignore SIGINT: call it when an executable starts shutting down.

    Why: Ctrl-C in a terminal reaches every process of the foreground group and ``ros2 launch``
    forwards one more, so a node gets SIGINT twice or more; one that landed in the middle of
    ``executor.shutdown()`` raised ``KeyboardInterrupt`` there (a traceback, exit code -2, DDS
    handles left). The handler is not restored: the process ends right after its shutdown, and a
    restored handler would let a late SIGINT kill it in that last moment. SIGTERM and SIGKILL still
    end a shutdown that hangs. Only the main thread can set handlers: elsewhere this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
