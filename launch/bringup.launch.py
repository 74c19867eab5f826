"""Bring up reasoning_seg on a full ROS 2 install: node + params file, optional player and RViz.

    ros2 launch reasoning_seg bringup.launch.py sequence:=/data/seq use_rviz:=true

Machines without ``ros2 launch`` (the PyPI wheels) use ``reasoning_seg_bringup`` with the same
arguments; both start the same executables with the same parameters file.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("reasoning_seg"))
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of all nodes."),
        DeclareLaunchArgument("params_file", default_value=str(share / "config" / "reasoning_seg.yaml"),
                              description="Parameters file of the reasoning_seg node."),
        DeclareLaunchArgument("sequence", default_value="",
                              description="Folder sequence to play (empty = live camera)."),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2/MCAP file to play instead."),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate multiplier."),
        DeclareLaunchArgument("use_rviz", default_value="false", description="Start RViz."),
        DeclareLaunchArgument("segmenter", default_value="simulated", description="segmenter.backend."),
        DeclareLaunchArgument("scene", default_value="", description="segmenter.scene (simulated backend)."),
        DeclareLaunchArgument("sim_profile", default_value="lisa7b",
                              description="segmenter.sim_profile: oracle | lisa7b | lisa13b (simulated)."),
        DeclareLaunchArgument("device", default_value="CPU:0", description="map.device (CPU:0 or CUDA:0)."),
        DeclareLaunchArgument("lisa_path", default_value="", description="segmenter.lisa_path (lisa backend)."),
        DeclareLaunchArgument("lisa_vision_tower", default_value="",
                              description="segmenter.lisa_vision_tower: local CLIP folder (lisa backend)."),
        DeclareLaunchArgument("lisa_device", default_value="auto", description="segmenter.lisa_device."),
    ]
    ns = LaunchConfiguration("namespace")
    node = Node(
        package="reasoning_seg", executable="reasoning_seg_node", name="reasoning_seg", namespace=ns,
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            "segmenter.backend": LaunchConfiguration("segmenter"),
            "segmenter.scene": LaunchConfiguration("scene"),
            "segmenter.sim_profile": LaunchConfiguration("sim_profile"),
            "map.device": LaunchConfiguration("device"),
            "segmenter.lisa_path": LaunchConfiguration("lisa_path"),
            "segmenter.lisa_vision_tower": LaunchConfiguration("lisa_vision_tower"),
            "segmenter.lisa_device": LaunchConfiguration("lisa_device"),
        }],
    )
    play_folder = Node(
        package="reasoning_seg", executable="reasoning_seg_player", namespace=ns, output="screen",
        parameters=[{"folder": LaunchConfiguration("sequence"), "rate": LaunchConfiguration("rate"),
                     "start_delay": 2.0}],
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("sequence"), "' != ''"])),
    )
    play_bag = Node(
        package="reasoning_seg", executable="reasoning_seg_player", namespace=ns, output="screen",
        parameters=[{"bag": LaunchConfiguration("bag"), "rate": LaunchConfiguration("rate"), "start_delay": 2.0}],
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("bag"), "' != ''"])),
    )
    rviz = Node(
        package="rviz2", executable="rviz2", arguments=["-d", str(share / "config" / "reasoning_seg.rviz")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription([*args, node, play_folder, play_bag, rviz])
