"""Headless Chromium for the report tests (Debian's ``chromium``; absent -> those tests skip)."""

from __future__ import annotations

import shutil
import subprocess


def chromium() -> str | None:
    """Path of a Chromium-family browser, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(browser: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    """Load ``url`` headless (console messages on stderr as ``CONSOLE`` lines), with ``extra`` flags."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # runs as root in CI containers
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
