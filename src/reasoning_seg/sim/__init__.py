"""Simulation: a synthetic indoor world with ground truth, for testing the pipeline without a robot.

Everything here is simulated (rendered from boxes by ray casting: Open3D's CPU ray caster, or
without Open3D the PyTorch box caster of :mod:`reasoning_seg.sim.raycast` on CPU or CUDA, chosen by
the environment variable ``REASONING_SEG_RAYCAST`` = auto | open3d | torch), so every pixel
and every query comes with an exact answer: the instance id that produced it (0 for queries about
something the room does not contain). Real recordings are read with
:mod:`reasoning_seg.io.sequence_io`; simulated ones are written in the same folder format. The
object catalogue (geometry, colours, uses, fronts) is :mod:`reasoning_seg.sim.catalogue`.

Modules: ``objects`` (specs, parts, query predicates, geometry helpers), ``layout`` (procedural
rooms), ``queries`` (queries with verified answers), ``appearance`` (texture, depth noise),
``scene`` (:class:`SyntheticScene`: generate, render, label, record; pose drift), ``raycast``,
``simulated_segmenter`` (the simulated LISA), ``truth`` (labels of a drifted map). Nothing here
imports ROS; the mapping and query stages never import ``sim`` (the benchmarks, the demo, tests
and the pseudo-label tool's simulated mode do).
"""

from reasoning_seg.sim.scene import (
    QUERY_KINDS,
    STRUCTURE_CATEGORIES,
    BoxPart,
    ObjectSpec,
    QueryPredicate,
    SceneBox,
    SceneQuery,
    SyntheticScene,
    apply_depth_noise,
    simulate_pose_drift,
)

__all__ = [
    "QUERY_KINDS",
    "STRUCTURE_CATEGORIES",
    "BoxPart",
    "ObjectSpec",
    "QueryPredicate",
    "SceneBox",
    "SceneQuery",
    "SyntheticScene",
    "apply_depth_noise",
    "simulate_pose_drift",
]
