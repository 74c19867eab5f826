"""The fused Triton TSDF grid (map.backend: triton) against the torch grid, its reference.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
the arithmetic and the allocation logic are checked on every CI run; on a CUDA machine the same
tests run the compiled kernels (``pytest tests/test_triton_tsdf.py`` there). The two grids compute
the same formulas in a different order (fused multiply-adds, rounding of the projected pixel), so a
voxel on a rounding edge may differ: the assertions allow a handful of such voxels, far below what a
wrong formula, a lost block or a double update would produce (thousands).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.sim.scene import SyntheticScene

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from reasoning_seg.mapping import triton_tsdf  # noqa: E402
from reasoning_seg.mapping.torch_tsdf import TorchBlockGrid  # noqa: E402
from reasoning_seg.mapping.triton_tsdf import TritonBlockGrid  # noqa: E402

INTR = CameraIntrinsics(80, 60, 65.6, 62.0, 40.5, 28.7)
VOXEL = 0.04
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def frames():
    try:
        import open3d  # noqa: F401
    except ImportError:  # GPU machines have no Open3D to render the room: the analytic corridor
        from reasoning_seg.io.synthetic_stream import CorridorStream

        stream = CorridorStream(INTR, cache=False)
        return [(f.depth, f.color, f.T_world_cam) for f in (stream[i * 7] for i in range(5))]
    scene = SyntheticScene.generate(3)
    out = []
    for T in scene.trajectory(5, seed=3):
        color, depth, _ = scene.render(INTR, T)
        out.append((depth, color, T))
    return out


def grids(initial_blocks: int = 16):
    return (
        TorchBlockGrid(VOXEL, 4, 5.0, DEVICE, initial_blocks),
        TritonBlockGrid(VOXEL, 4, 5.0, DEVICE, initial_blocks),
    )


def integrate(grid, frames) -> None:
    for depth, color, T in frames:
        grid.integrate(depth, color, INTR.K, T)


def assert_same_map(a, b) -> None:
    """Same blocks, same voxels, same surface, up to a few rounding-edge voxels."""
    ea, eb = a.export(), b.export()
    ka = {tuple(k) for k in ea["block_coords"]}
    kb = {tuple(k) for k in eb["block_coords"]}
    assert len(ka ^ kb) <= max(3, len(ka) // 200), (len(ka), len(kb), len(ka ^ kb))
    ia = {k: i for i, k in enumerate(map(tuple, ea["block_coords"]))}
    ib = {k: i for i, k in enumerate(map(tuple, eb["block_coords"]))}
    common = sorted(ka & kb)
    xa = np.array([ia[k] for k in common])
    xb = np.array([ib[k] for k in common])
    n_vox = len(common) * 512
    assert (ea["weight"][xa] > 0).sum() > 10_000  # the frames saw something
    for field, tol in (("tsdf", 1e-4), ("weight", 0.0), ("color", 1e-2)):
        bad = np.abs(ea[field][xa] - eb[field][xb]) > tol
        bad = bad.reshape(n_vox, -1).any(axis=1)
        assert bad.sum() <= max(5, n_vox // 20_000), (field, int(bad.sum()), n_vox)
    pa, ca = a.extract(0.0)
    pb, cb = b.extract(0.0)
    assert abs(len(pa) - len(pb)) <= max(5, len(pa) // 500)
    dist, idx = cKDTree(pb).query(pa)
    assert (dist < 1e-4).mean() > 0.995
    near = dist < 1e-4
    assert np.abs(ca[near] - cb[idx[near]]).max() < 1e-3


def test_fused_integration_equals_the_torch_grid(frames):
    a, b = grids()
    integrate(a, frames)
    integrate(b, frames)
    assert b.num_blocks == len(b.block_coords())  # the host's count matches the device table
    assert_same_map(a, b)


def test_a_frame_that_outgrows_storage_or_the_table_gives_the_same_map(frames, monkeypatch):
    """A frame that runs out of storage or of probes is repaired before any voxel changes.

    Storage runs out inside a frame (16 initial blocks, a 4-block reserve) and the table is made so
    crowded (4 probes) that samples miss their entry; the map equals one built with room to spare.
    """
    roomy = TritonBlockGrid(VOXEL, 4, 5.0, DEVICE, 4096)
    integrate(roomy, frames[:3])
    assert roomy.recoveries == 0
    monkeypatch.setattr(triton_tsdf, "MAX_PROBES", 4)
    tight = TritonBlockGrid(VOXEL, 4, 5.0, DEVICE, 16)
    tight._reserve = 4
    integrate(tight, frames[:3])
    assert tight.recoveries >= 1
    ea, eb = roomy.export(), tight.export()
    np.testing.assert_array_equal(ea["block_coords"], eb["block_coords"])
    for field in ("tsdf", "weight", "color"):
        np.testing.assert_array_equal(ea[field], eb[field])


def test_erase_clear_and_reload_keep_the_table_consistent(frames):
    """Erase, clear_voxels and export/import keep the device table right for the next frames.

    After each, the following frames land where the torch grid puts them.
    """
    a, b = grids()
    integrate(a, frames[:2])
    integrate(b, frames[:2])
    coords = a.block_coords()
    drop = coords[::3]
    assert a.erase_blocks(drop) == b.erase_blocks(drop) == len(drop)
    vox = (coords[1::3] * 8 + 3)[:50]
    assert a.clear_voxels(vox) == b.clear_voxels(vox)
    integrate(a, frames[2:4])
    integrate(b, frames[2:4])
    assert_same_map(a, b)
    reloaded = TritonBlockGrid(VOXEL, 4, 5.0, DEVICE, 16)
    reloaded.import_(**b.export())
    assert reloaded.num_blocks == b.num_blocks
    integrate(a, frames[4:])
    integrate(reloaded, frames[4:])
    assert_same_map(a, reloaded)


def test_the_voxel_map_budget_and_radius_work_on_the_fused_grid(frames):
    from reasoning_seg.config import MapConfig
    from reasoning_seg.mapping.frames import RGBDFrame
    from reasoning_seg.mapping.voxel_map import VoxelMap

    maps = {
        b: VoxelMap(MapConfig(voxel_size=VOXEL, backend=b, device=DEVICE, max_blocks=300, keep_radius=2.5))
        for b in ("torch", "triton")
    }
    for i, (depth, color, T) in enumerate(frames):
        for m in maps.values():
            m.integrate(RGBDFrame(color, depth, INTR, T, stamp=i / 30.0, frame_id=i))
    t, f = maps["torch"], maps["triton"]
    assert f.backend == "triton"
    assert f.blocks_dropped > 0
    assert f.num_blocks <= 300 * 1.25
    assert abs(f.num_blocks - t.num_blocks) <= 3
    assert abs(f.blocks_dropped - t.blocks_dropped) <= 5


def test_a_cpu_device_without_the_interpreter_is_refused(monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on CUDA devices"):
        TritonBlockGrid(VOXEL, 4, 5.0, "cpu")
