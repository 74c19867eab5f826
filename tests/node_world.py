"""The SIMULATED room, frames and saved map the node tests start from (shared by several test files).

Room 3 of the simulation, recorded at 160x120 along its hand-held loop with stamps ``T0 + i * DT``;
the first ``n_map`` frames are integrated by the pipeline and saved, so a node can load the map
through ``~/load_map`` and the remaining frames can be streamed to grow it. The queries are spatial
questions about furniture that the saved map shows well enough for the oracle 2D model to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.config import PipelineConfig
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.pipeline import ReasoningSegPipeline
from reasoning_seg.sim.scene import SyntheticScene
from reasoning_seg.sim.simulated_segmenter import SimulatedSegmenter

INTR = CameraIntrinsics(160, 120, 131.25, 131.25, 79.5, 59.5)
VOXEL = 0.04
T0, DT = 100.0, 0.1  # stamp of frame i: T0 + i * DT


@dataclass
class World:
    """What a node test needs: the room, its folders, every frame and answerable queries."""

    scene: SyntheticScene
    scene_dir: str
    map_dir: str
    frames: list[RGBDFrame]
    queries: list[str]

    @property
    def query(self) -> str:
        """The first answerable query (the one most tests ask)."""
        return self.queries[0]

    @property
    def other_query(self) -> str:
        """A second answerable query with another target."""
        return self.queries[1]


def build_world(tmp: Path, n_frames: int, n_map: int, n_queries: int, min_points: int = 0) -> World:
    """Render ``n_frames``, save the map of the first ``n_map`` and pick ``n_queries`` answerable queries."""
    scene = SyntheticScene.generate(3)
    scene.save(tmp / "scene")
    frames = []
    for i, T in enumerate(scene.trajectory(n_frames, seed=3)):
        color, depth, _ = scene.render(INTR, T)
        frames.append(RGBDFrame(color, depth, INTR, T, T0 + i * DT, i))
    cfg = PipelineConfig()
    cfg.update({"map.voxel_size": VOXEL, "fusion.visibility_tolerance": 0.08})
    pipe = ReasoningSegPipeline(cfg)
    for f in frames[:n_map]:
        pipe.add_frame(f)
    pipe.save(tmp / "map")
    pipe.segmenter = SimulatedSegmenter(scene, profile="oracle")
    furniture = {o.instance_id for o in scene.objects if not o.is_structure}
    found: list[str] = []
    for q in scene.queries:
        if q.kind == "spatial" and q.target_instance_id in furniture and len(found) < n_queries:
            r = pipe.query(q.text)
            if r.found and len(r.points) > min_points:
                found.append(q.text)
    if len(found) < n_queries:
        raise AssertionError(f"only {len(found)} of {n_queries} spatial queries are answerable from the map")
    return World(scene, str(tmp / "scene"), str(tmp / "map"), frames, found)
