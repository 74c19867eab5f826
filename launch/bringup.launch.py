r"""Bring up reasoning_seg on a full ROS 2 install: node + params file, optional player and RViz.

    ros2 launch reasoning_seg bringup.launch.py sequence:=/data/seq use_rviz:=true
    ros2 launch reasoning_seg bringup.launch.py bag:=/data/run.mcap segmenter:=lisa \\
        lisa_path:=/models/LISA-7B-v1 lisa_vision_tower:=/models/clip-vit-large-patch14 lisa_device:=cuda:0 \\
        net_checkpoint:=/models/net/model.pt net_device:=cuda:0 device:=CUDA:0

Machines without ``ros2 launch`` (the PyPI wheels) use ``reasoning_seg_bringup`` with the same arguments
as options (``lisa_path:=`` = ``--lisa-path``); both start the same executables with the same parameters
file. A node-parameter argument left empty keeps the parameters file's value, so ``params_file`` stays
the single place for settings and the arguments only override it.
"""

from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# launch argument -> node parameter it overrides when not empty (same table as
# reasoning_seg.ros.bringup.NODE_OVERRIDES; a test checks the two agree).
NODE_OVERRIDES = {
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
_DESCRIPTIONS = {
    "segmenter": "segmenter.backend: simulated | lisa.",
    "scene": "segmenter.scene: synthetic scene folder (simulated backend).",
    "sim_profile": "segmenter.sim_profile: oracle | lisa7b | lisa13b (simulated backend).",
    "device": "map.device: CPU:0 or CUDA:0 (torch backend also cpu, cuda:0).",
    "lisa_path": "segmenter.lisa_path: LISA checkpoint folder (lisa backend).",
    "lisa_vision_tower": "segmenter.lisa_vision_tower: local CLIP folder (lisa backend).",
    "lisa_device": "segmenter.lisa_device: auto, cpu, cuda:0 ... (lisa backend).",
    "net_checkpoint": "net.checkpoint: trained 3D network (model.pt or trainer .ckpt).",
    "net_device": "net.device: torch device of the 3D network (cpu, cuda, cuda:1, auto).",
}
# Arguments that name files: made absolute against the directory `ros2 launch` runs in, as
# reasoning_seg_bringup does (reasoning_seg.ros.bringup._PATH_OPTIONS, plus the recordings).
_PATH_ARGS = ("scene", "lisa_path", "lisa_vision_tower", "net_checkpoint", "sequence", "bag", "params_file")


def _nodes(context, share: Path):
    """Node, player and RViz, built once the arguments are known (empty overrides are left out)."""

    def arg(name: str) -> str:
        value = LaunchConfiguration(name).perform(context)
        return str(Path(value).expanduser().resolve()) if value and name in _PATH_ARGS else value

    ns = arg("namespace")
    overrides = {param: arg(name) for name, param in NODE_OVERRIDES.items() if arg(name)}
    actions = [
        Node(
            package="reasoning_seg",
            executable="reasoning_seg_node",
            name="reasoning_seg",
            namespace=ns,
            output="screen",
            parameters=[arg("params_file"), overrides],
        )
    ]
    if arg("sequence") and arg("bag"):
        raise RuntimeError("give sequence:= or bag:=, not both")
    source_kind = "bag" if arg("bag") else "folder"
    source = arg("bag") or arg("sequence")
    if source:
        if source_kind == "folder" and (
            Path(source).suffix in (".db3", ".mcap", ".bag") or (Path(source) / "metadata.yaml").exists()
        ):
            source_kind = "bag"  # as reasoning_seg_bringup --sequence: a bag given as sequence:= plays too
        actions.append(
            Node(
                package="reasoning_seg",
                executable="reasoning_seg_player",
                namespace=ns,
                output="screen",
                parameters=[
                    {
                        source_kind: source,
                        "rate": float(arg("rate")),
                        "loop": arg("loop").lower() in ("true", "1", "yes"),
                        "start_delay": 2.0,
                    }
                ],
            )
        )
    if arg("use_rviz").lower() in ("true", "1", "yes"):
        try:
            get_package_prefix("rviz2")
        except PackageNotFoundError:
            # As reasoning_seg_bringup: a missing viewer must not fail the launch (and orphan the node).
            actions.append(LogInfo(msg="reasoning_seg: rviz2 is not installed here; skipping it"))
        else:
            actions.append(
                Node(
                    package="rviz2",
                    executable="rviz2",
                    arguments=["-d", str(share / "config" / "reasoning_seg.rviz")],
                )
            )
    return actions


def generate_launch_description() -> LaunchDescription:
    """Arguments (same names as ``reasoning_seg_bringup``'s options), node, player, RViz."""
    share = Path(get_package_share_directory("reasoning_seg"))
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and player."),
        DeclareLaunchArgument(
            "params_file",
            default_value=str(share / "config" / "reasoning_seg.yaml"),
            description="Parameters file of the reasoning_seg node.",
        ),
        DeclareLaunchArgument(
            "sequence", default_value="", description="Recorded folder (or bag) to play; empty = live camera."
        ),
        DeclareLaunchArgument(
            "bag", default_value="", description="rosbag2 directory / .db3 / .mcap to play."
        ),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate multiplier."),
        DeclareLaunchArgument("loop", default_value="false", description="Loop the recording."),
        DeclareLaunchArgument(
            "use_rviz", default_value="false", description="Start RViz (reasoning_seg.rviz)."
        ),
    ]
    args += [
        DeclareLaunchArgument(name, default_value="", description=f"{text} Empty = params_file value.")
        for name, text in _DESCRIPTIONS.items()
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes, args=[share])])
