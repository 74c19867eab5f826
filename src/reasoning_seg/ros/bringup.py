"""``reasoning_seg_bringup``: start the node (and optionally the player) without ``ros2 launch``.

``launch/bringup.launch.py`` is the way to start the system on a full ROS 2 install. The PyPI
wheels have no ``launch`` package, so this entry point starts the same executables with the same
parameters file and arguments as separate processes, forwards Ctrl-C, and exits when the node does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def share_dir() -> Path:
    """The package's share directory (installed) or the source tree (development checkout)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            return Path(get_package_share_directory("reasoning_seg"))
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return Path(__file__).resolve().parents[3]


def default_params_file() -> Path:
    """``config/reasoning_seg.yaml`` of the installed package or the checkout."""
    return share_dir() / "config" / "reasoning_seg.yaml"


def node_command(
    params_file: Path, namespace: str = "", overrides: dict[str, object] | None = None
) -> list[str]:
    """Command line of the reasoning_seg node with a params file and ``-p name:=value`` overrides."""
    cmd = [sys.executable, "-m", "reasoning_seg.ros.node", "--ros-args", "--params-file", str(params_file)]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    for k, v in (overrides or {}).items():
        cmd += ["-p", f"{k}:={_param_text(v)}"]
    return cmd


def player_command(source: str, namespace: str = "", overrides: dict[str, object] | None = None) -> list[str]:
    """Command line of the player for a folder sequence or a rosbag2/MCAP file."""
    kind = (
        "bag"
        if Path(source).suffix in (".db3", ".mcap", ".bag") or (Path(source) / "metadata.yaml").exists()
        else "folder"
    )
    cmd = [sys.executable, "-m", "reasoning_seg.ros.player", "--ros-args", "-p", f"{kind}:={source}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    for k, v in (overrides or {}).items():
        cmd += ["-p", f"{k}:={_param_text(v)}"]
    return cmd


def _param_text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reasoning_seg_bringup`` (mirrors the launch file's arguments)."""
    p = argparse.ArgumentParser(prog="reasoning_seg_bringup", description=__doc__.split("\n\n")[0])
    p.add_argument("--params-file", type=Path, default=default_params_file())
    p.add_argument("--namespace", default="")
    p.add_argument(
        "--sequence", default="", help="folder sequence or rosbag2/MCAP to play (omit for a live camera)"
    )
    p.add_argument("--rate", type=float, default=1.0, help="playback rate multiplier")
    p.add_argument("--loop", action="store_true", help="loop the recording")
    p.add_argument("--segmenter", default="", help="override segmenter.backend")
    p.add_argument("--scene", default="", help="override segmenter.scene (simulated backend)")
    p.add_argument("--sim-profile", default="", help="override segmenter.sim_profile (simulated backend)")
    p.add_argument("--device", default="", help="override map.device (e.g. CUDA:0)")
    p.add_argument("--lisa-path", default="", help="override segmenter.lisa_path (LISA checkpoint folder)")
    p.add_argument("--lisa-vision-tower", default="", help="override segmenter.lisa_vision_tower")
    p.add_argument("--lisa-device", default="", help="override segmenter.lisa_device (e.g. cuda:0)")
    p.add_argument(
        "--use-rviz", action="store_true", help="start rviz2 with config/reasoning_seg.rviz if installed"
    )
    a = p.parse_args(argv)

    overrides: dict[str, object] = {}
    if a.segmenter:
        overrides["segmenter.backend"] = a.segmenter
    if a.scene:
        overrides["segmenter.scene"] = str(Path(a.scene).resolve())
    if a.sim_profile:
        overrides["segmenter.sim_profile"] = a.sim_profile
    if a.device:
        overrides["map.device"] = a.device
    if a.lisa_path:
        overrides["segmenter.lisa_path"] = str(Path(a.lisa_path).resolve())
    if a.lisa_vision_tower:
        overrides["segmenter.lisa_vision_tower"] = str(Path(a.lisa_vision_tower).resolve())
    if a.lisa_device:
        overrides["segmenter.lisa_device"] = a.lisa_device
    procs = [subprocess.Popen(node_command(a.params_file, a.namespace, overrides))]
    if a.sequence:
        procs.append(
            subprocess.Popen(
                player_command(
                    str(Path(a.sequence).resolve()),
                    a.namespace,
                    {"rate": a.rate, "loop": a.loop, "start_delay": 2.0},
                )
            )
        )
    if a.use_rviz:
        if shutil.which("rviz2"):
            procs.append(
                subprocess.Popen(["rviz2", "-d", str(share_dir() / "config" / "reasoning_seg.rviz")])
            )
        else:
            print("reasoning_seg_bringup: rviz2 is not installed here; skipping it", file=sys.stderr)
    try:
        while procs[0].poll() is None:
            time.sleep(0.2)
        return procs[0].returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
