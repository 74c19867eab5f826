"""ROS parameters: the node's own settings plus every knob of the core's PipelineConfig.

Each parameter is declared with a descriptor (description, and an integer/float range where one
exists) generated from the dataclass metadata, so ``ros2 param describe`` shows the same text as
the YAML file and the README, and out-of-range values are refused at start-up with a message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node

from reasoning_seg.config import PipelineConfig, _coerce, iter_knobs, knob


@dataclass
class NodeConfig:
    """Settings that only exist because there is a ROS graph (topics, frames, QoS, rates)."""

    map_frame: str = knob("map", "Fixed frame of the map and of everything published (REP-105).")
    camera_frame: str = knob("", "Camera optical frame for TF lookups; empty = the image header's frame_id.")
    pose_source: str = knob(
        "auto",
        "auto: TF (map_frame <- camera frame) or camera/pose / camera/transform, whichever delivers "
        "first (TF if both), logged and kept; tf or topic force one. No pose 3 s after images: WARN.",
        choices=("auto", "tf", "topic"),
    )
    tf_timeout: float = knob(
        0.2,
        "Seconds an image pair may wait for its pose (TF at its stamp, or camera/pose) and CameraInfo "
        "when they lag the images; then it is decided as it stands (dropped and counted if still "
        "without pose). Waiting never blocks the executor; at most 10 pairs wait at once.",
        0.0,
        5.0,
    )
    sensor_qos: str = knob(
        "sensor_data",
        "QoS of the camera subscriptions: sensor_data (best effort) | "
        "reliable (for recordings that must not drop frames).",
        choices=("sensor_data", "reliable"),
    )
    sync_slop: float = knob(
        0.02, "Max stamp difference (s) between paired colour and depth images.", 0.0, 1.0
    )
    pose_max_age: float = knob(
        0.1, "Max time (s) between an image and the nearest pose on the pose topic.", 0.0, 10.0
    )
    depth_scale: float = knob(
        1000.0, "Integer depth units per metre (16UC1 in millimetres -> 1000).", 1e-6, 1e9
    )
    map_publish_period: float = knob(2.0, "Seconds between map cloud publications (0 disables).", 0.0, 3600.0)
    map_publish_max_points: int = knob(
        200000, "Map cloud is randomly subsampled to at most this many points.", 1, 100_000_000
    )
    concurrent_queries: str = knob(
        "reject",
        "A query arriving while another runs is rejected (reject) or waits for it (queue).",
        choices=("reject", "queue"),
    )
    query_wait_timeout: float = knob(
        120.0, "Max seconds a queued query waits for the running one.", 0.0, 3600.0
    )
    max_queued_queries: int = knob(
        4,
        "With concurrent_queries=queue: at most this many queries wait for the running one; more are "
        "refused at once (each waiting query holds an executor thread).",
        0,
        1000,
    )
    persistent_period: float = knob(
        2.0,
        "Default minimum seconds between re-segmentations of a tracked query (TrackQuery); it is re-run "
        "only when the map has changed.",
        0.1,
        3600.0,
    )
    max_persistent_queries: int = knob(
        4, "Most queries tracked at once (TrackQuery); more are refused. 0 disables tracking.", 0, 64
    )
    map_directory: str = knob(
        "~/.ros/reasoning_seg/maps",
        "Folder SaveMap/LoadMap requests name maps in (created on the first save); nothing is "
        "written or read outside it unless allow_absolute_map_paths.",
    )
    allow_absolute_map_paths: bool = knob(
        False, "SaveMap/LoadMap accept absolute paths and '..' (anyone on the DDS domain can call them)."
    )
    max_map_mb: int = knob(4096, "LoadMap refuses map files larger than this (MiB).", 1, 1_000_000)
    removal_margin: float = knob(
        0.02,
        "RemoveTarget: metres cleared around a picked target beyond the TSDF truncation band (which is "
        "always cleared, or a ghost surface would reappear).",
        0.0,
        1.0,
    )
    publish_frustums: bool = knob(True, "Publish the frustums of the keyframes a query used as markers.")
    diagnostics_period: float = knob(1.0, "Seconds between /diagnostics messages (0 disables).", 0.0, 3600.0)


def _node_knobs(cfg: NodeConfig):
    for f in dataclasses.fields(cfg):
        yield f.name, getattr(cfg, f.name), f.metadata


def _descriptor(name: str, default: Any, meta: dict[str, Any]) -> ParameterDescriptor:
    desc = meta.get("description", "")
    if meta.get("choices"):
        desc += f" One of: {', '.join(meta['choices'])}."
    d = ParameterDescriptor(name=name, description=desc)
    lo, hi = meta.get("range", (None, None))
    if lo is not None and hi is not None and not isinstance(default, bool):
        if isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_and_read(node: Node) -> tuple[NodeConfig, PipelineConfig]:
    """Declare every parameter on ``node`` and return the validated configs.

    Raises ValueError naming the parameter when a value (from a params file or the command line)
    is out of range, of the wrong type, or not one of the allowed choices.
    """
    node_cfg, pipe_cfg = NodeConfig(), PipelineConfig()
    for name, default, meta in [*_node_knobs(node_cfg), *iter_knobs(pipe_cfg)]:
        try:
            node.declare_parameter(name, default, _descriptor(name, default, meta))
        except ParameterException as exc:
            # rclpy checks overrides against the descriptor's range and type itself, with its own
            # exception types; callers (main(), launch files, tests) handle one: ValueError.
            raise ValueError(f"{name}: {exc}") from exc
    for name, default, meta in _node_knobs(node_cfg):
        setattr(node_cfg, name, _coerce(name, node.get_parameter(name).value, default, meta))
    pipe_cfg.update({name: node.get_parameter(name).value for name, _, _ in iter_knobs(pipe_cfg)})
    if pipe_cfg.map.depth_min >= pipe_cfg.map.depth_max:
        raise ValueError(
            f"map.depth_min ({pipe_cfg.map.depth_min}) must be below map.depth_max ({pipe_cfg.map.depth_max})"
        )
    return node_cfg, pipe_cfg


def all_knobs() -> list[tuple[str, Any, dict[str, Any]]]:
    """Every parameter as ``(name, default, metadata)``: node settings first, then the core's."""
    return [*_node_knobs(NodeConfig()), *iter_knobs(PipelineConfig())]


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def render_params_yaml(node_name: str = "reasoning_seg") -> str:
    """The default params file (``config/reasoning_seg.yaml``), one documented line per parameter."""
    lines = [
        "# reasoning_seg parameters. Generated by `python -m reasoning_seg.ros.params yaml`;",
        "# tests check this file matches the declared parameters. Edit values freely, keep the keys.",
        f"{node_name}:",
        "  ros__parameters:",
    ]
    section = None
    for name, default, meta in all_knobs():
        head, _, key = name.rpartition(".")
        if head != section:
            section = head
            if head:
                lines.append(f"    {head}:")
        indent = "      " if head else "    "
        lines.append(
            f"{indent}# {meta['description']}"
            + (f" [{', '.join(meta['choices'])}]" if meta.get("choices") else "")
        )
        lines.append(f"{indent}{key}: {_yaml_value(default)}")
    return "\n".join(lines) + "\n"


def render_params_markdown() -> str:
    """Markdown table of every parameter for the README."""
    rows = ["| parameter | default | range / choices | description |", "| --- | --- | --- | --- |"]
    for name, default, meta in all_knobs():
        lo, hi = meta.get("range", (None, None))
        rng = (
            ", ".join(meta["choices"]) if meta.get("choices") else (f"[{lo}, {hi}]" if lo is not None else "")
        )
        text = meta["description"].replace("|", "\\|")  # a bare | would end the table cell
        rows.append(f"| `{name}` | `{_yaml_value(default)}` | {rng} | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    print(render_params_yaml() if sys.argv[1:] == ["yaml"] else render_params_markdown(), end="")
