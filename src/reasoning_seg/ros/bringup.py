"""``reasoning_seg_bringup``: start the node (and optionally the player) without ``ros2 launch``.

``launch/bringup.launch.py`` is the way to start the system on a full ROS 2 install. The PyPI
wheels have no ``launch_ros`` package, so this entry point starts the same executables with the same
parameters file and arguments as separate processes, forwards Ctrl-C, and exits when the node does.
Options mirror the launch arguments one to one (``--lisa-path`` = ``lisa_path:=``); an option left
empty keeps the parameters file's value, in both.
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


def player_command(
    source: str, namespace: str = "", overrides: dict[str, object] | None = None, kind: str = ""
) -> list[str]:
    """Command line of the player for a folder sequence or a rosbag2/MCAP file.

    ``kind`` ("folder" or "bag") is guessed from the path when empty: a ``.db3``/``.mcap``/``.bag``
    file or a directory with a rosbag2 ``metadata.yaml`` is a bag.
    """
    if not kind:
        kind = (
            "bag"
            if Path(source).suffix in (".db3", ".mcap", ".bag") or (Path(source) / "metadata.yaml").exists()
            else "folder"
        )
    if kind not in ("folder", "bag"):
        raise ValueError(f"kind must be 'folder' or 'bag', got {kind!r}")
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


#: bringup option (argparse dest) -> node parameter it overrides; the launch file has the same
#: arguments (dest names) and maps them to the same parameters. Paths are made absolute.
NODE_OVERRIDES: dict[str, str] = {
    "segmenter": "segmenter.backend",
    "scene": "segmenter.scene",
    "sim_profile": "segmenter.sim_profile",
    "device": "map.device",
    "lisa_path": "segmenter.lisa_path",
    "lisa_vision_tower": "segmenter.lisa_vision_tower",
    "lisa_device": "segmenter.lisa_device",
    "net_checkpoint": "net.checkpoint",
    "net_device": "net.device",
}
_PATH_OPTIONS = ("scene", "lisa_path", "lisa_vision_tower", "net_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; dest names equal the launch file's argument names."""
    p = argparse.ArgumentParser(prog="reasoning_seg_bringup", description=__doc__.split("\n\n")[0])
    p.add_argument("--params-file", dest="params_file", type=Path, default=default_params_file())
    p.add_argument("--namespace", default="", help="namespace of the node and the player")
    p.add_argument(
        "--sequence", default="", help="folder sequence or rosbag2/MCAP to play (omit for a live camera)"
    )
    p.add_argument("--bag", default="", help="rosbag2/MCAP to play (same as --sequence with a bag)")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate multiplier")
    p.add_argument("--loop", action="store_true", help="loop the recording")
    # Empty = keep the parameters file's value (only given options override it).
    p.add_argument("--segmenter", default="", help="override segmenter.backend (simulated | lisa)")
    p.add_argument("--scene", default="", help="override segmenter.scene (simulated backend)")
    p.add_argument("--sim-profile", default="", help="override segmenter.sim_profile (simulated backend)")
    p.add_argument("--device", default="", help="override map.device (e.g. CUDA:0)")
    p.add_argument("--lisa-path", default="", help="override segmenter.lisa_path (LISA checkpoint folder)")
    p.add_argument("--lisa-vision-tower", default="", help="override segmenter.lisa_vision_tower")
    p.add_argument("--lisa-device", default="", help="override segmenter.lisa_device (e.g. cuda:0)")
    p.add_argument("--net-checkpoint", default="", help="override net.checkpoint (trained 3D network)")
    p.add_argument("--net-device", default="", help="override net.device (e.g. cuda:0)")
    p.add_argument(
        "--use-rviz", action="store_true", help="start rviz2 with config/reasoning_seg.rviz if installed"
    )
    return p


def overrides_from_args(a: argparse.Namespace) -> dict[str, object]:
    """Node parameter overrides for the options that were given (see :data:`NODE_OVERRIDES`)."""
    out: dict[str, object] = {}
    for dest, param in NODE_OVERRIDES.items():
        value = getattr(a, dest)
        if value:
            out[param] = str(Path(value).resolve()) if dest in _PATH_OPTIONS else value
    return out


def commands(a: argparse.Namespace) -> list[list[str]]:
    """Command lines to start, node first: node, then the player (if a recording is given), then RViz."""
    if a.sequence and a.bag:
        raise ValueError("give --sequence or --bag, not both")
    cmds = [node_command(a.params_file, a.namespace, overrides_from_args(a))]
    source = a.sequence or a.bag
    if source:
        play = {"rate": a.rate, "loop": a.loop, "start_delay": 2.0}
        kind = "bag" if a.bag else ""  # --sequence: folder or bag, guessed from the path
        cmds.append(player_command(str(Path(source).resolve()), a.namespace, play, kind))
    if a.use_rviz:
        if shutil.which("rviz2"):
            cmds.append(["rviz2", "-d", str(share_dir() / "config" / "reasoning_seg.rviz")])
        else:
            print("reasoning_seg_bringup: rviz2 is not installed here; skipping it", file=sys.stderr)
    return cmds


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``reasoning_seg_bringup`` (mirrors the launch file's arguments)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        cmds = commands(a)
    except ValueError as exc:
        p.error(str(exc))
    # A supervisor: SIGINT (Ctrl-C, often twice: the terminal's group and a wrapper both send one)
    # only asks it to stop, it never interrupts the loop or the wait for the children below.
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    procs = [subprocess.Popen(cmd) for cmd in cmds]
    try:
        while procs[0].poll() is None and not stop:
            time.sleep(0.2)
        return 0 if stop else procs[0].returncode or 0
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
