"""Keyframe window: motion + novelty admission, redundancy eviction, the observation index."""

import numpy as np
import pytest

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.config import KeyframeConfig
from reasoning_seg.mapping.frames import RGBDFrame
from reasoning_seg.mapping.keyframes import KeyframeWindow, ObservationIndex, frame_cells
from reasoning_seg.mapping.sparse_voxels import pack_keys
from reasoning_seg.sim.scene import SyntheticScene

INTR = CameraIntrinsics(80, 60, 65.6, 65.6, 39.5, 29.5)
INTR_SMALL = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5)


@pytest.fixture(scope="module")
def loop():
    """A 100-frame hand-held loop around a simulated room, with ground-truth instance images."""
    scene = SyntheticScene.generate(3)
    frames, instances = [], []
    for i, T in enumerate(scene.trajectory(100, seed=3)):
        color, depth, inst = scene.render(INTR, T)
        frames.append(RGBDFrame(color, depth, INTR, T, i / 30.0, i))
        instances.append(inst)
    return frames, instances


def visible_objects(frame_ids, instances, min_pixels=10):
    seen = set()
    for i in frame_ids:
        ids, counts = np.unique(instances[i], return_counts=True)
        seen |= set(ids[(counts >= min_pixels) & (ids > 0)].tolist())
    return seen


def covered_cells(window):
    return np.unique(np.concatenate([frame_cells(k.frame, 0.05) for k in window]))


def test_novelty_window_keeps_the_early_views_of_a_room_loop(loop):
    frames, instances = loop
    fifo = KeyframeWindow(KeyframeConfig(window_size=8, min_translation=0.15, eviction="oldest"))
    novel = KeyframeWindow(KeyframeConfig(window_size=8, min_translation=0.15, eviction="redundancy"))
    for f in frames:
        fifo.offer(f)
        novel.offer(f)
    assert len(fifo) == len(novel) == 8
    everything = visible_objects(range(len(frames)), instances)
    in_fifo = visible_objects([k.frame.frame_id for k in fifo], instances)
    in_novel = visible_objects([k.frame.frame_id for k in novel], instances)
    # FIFO forgets the first part of the loop, and the objects seen only there.
    assert min(k.frame.frame_id for k in fifo) > 50
    assert min(k.frame.frame_id for k in novel) < 10
    assert len(in_novel) >= len(everything) - 1 and len(in_fifo) < len(in_novel) - 3
    assert len(covered_cells(novel)) > 1.3 * len(covered_cells(fifo))
    assert novel.rejected_not_novel > 0  # revisits of the same walls were not admitted


def test_a_full_window_rejects_a_frame_that_shows_nothing_new():
    win = KeyframeWindow(KeyframeConfig(window_size=2, min_translation=0.5, max_interval=1.0))

    def wall(x, stamp):
        T = np.eye(4)
        T[0, 3] = x
        return RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32), INTR_SMALL, T, stamp)

    assert win.offer(wall(0.0, 0.0)) is not None and win.offer(wall(2.0, 0.1)) is not None
    ids = [k.keyframe_id for k in win]
    # Standing still for 5 s: the time gate fires, but the view adds nothing.
    assert win.offer(wall(2.0, 5.0)) is None
    assert [k.keyframe_id for k in win] == ids and win.rejected_not_novel == 1
    # Moving on to unseen wall: admitted, and one of the older views leaves.
    kf = win.offer(wall(4.0, 5.1))
    assert kf is not None and len(win) == 2 and kf.keyframe_id in [k.keyframe_id for k in win]


def test_redundant_view_is_evicted_not_the_oldest():
    # Three cameras along a wall at x = 0, 0.6 and 1.2 m; the middle one only sees what the other
    # two see, so it is the one to go when a fourth, new view arrives.
    win = KeyframeWindow(KeyframeConfig(window_size=3, min_translation=0.5, min_novelty=0.1))
    for x in (0.0, 0.6, 1.2, 1.8):
        T = np.eye(4)
        T[0, 3] = x
        win.offer(RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32), INTR_SMALL, T))
    assert [k.keyframe_id for k in win] == [0, 2, 3]
    fifo = KeyframeWindow(KeyframeConfig(window_size=3, min_translation=0.5, eviction="oldest"))
    for x in (0.0, 0.6, 1.2, 1.8):
        T = np.eye(4)
        T[0, 3] = x
        fifo.offer(RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32), INTR_SMALL, T))
    assert [k.keyframe_id for k in fifo] == [1, 2, 3]


def ring_window(n, size):
    win = KeyframeWindow(KeyframeConfig(window_size=size))
    for i in range(n):
        a = 2 * np.pi * i / n
        T = look_at([2 * np.cos(a), 2 * np.sin(a), 1.0], [0, 0, 1.0])
        win.add(RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 1.5, np.float32), INTR_SMALL, T))
    return win


def test_observers_say_which_keyframes_saw_a_point():
    win = ring_window(4, 4)  # cameras at 0, 90, 180, 270 degrees, each seeing a patch 0.5 m in front
    ids, seen = win.observers(np.array([[0.5, 0.0, 1.0], [0.0, 0.5, 1.0], [9.0, 9.0, 9.0]]))
    assert ids.tolist() == [0, 1, 2, 3]
    assert seen.shape == (3, 4)
    assert seen[0].tolist() == [True, False, False, False]
    assert seen[1].tolist() == [False, True, False, False]
    assert not seen[2].any()


def test_forget_makes_a_region_novel_again():
    win = ring_window(4, 4)
    frame = win.snapshot()[0].frame
    assert win.novelty(frame) == pytest.approx(0.0)
    win.forget(np.array([[0.5, 0.0, 1.0]]), radius=0.5)
    assert win.novelty(frame) > 0.15
    _, seen = win.observers(np.array([[0.5, 0.0, 1.0]]))
    assert not seen.any()


def test_ids_are_never_reused_and_add_protects_the_new_keyframe():
    win = ring_window(6, 3)
    assert len(win) == 3 and win.next_id == 6 and win.evicted == 3
    assert 5 in [k.keyframe_id for k in win]
    win.clear()
    assert len(win) == 0 and len(win.index) == 0
    f = RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32), INTR_SMALL, np.eye(4))
    assert win.add(f).keyframe_id == 6
    with pytest.raises(ValueError, match="already"):
        win.add(f, keyframe_id=6)


def test_observation_index_counts_unique_cells_over_more_than_64_slots():
    idx = ObservationIndex(0.05, 70)
    a = pack_keys(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]]))
    b = pack_keys(np.array([[2, 0, 0], [3, 0, 0]]))
    idx.add(3, a)
    idx.add(68, b)  # second word of the bit mask
    counts = idx.unique_counts()
    assert counts[3] == 2 and counts[68] == 1 and counts.sum() == 3
    idx.remove_slot(3)
    assert len(idx) == 2 and idx.unique_counts()[68] == 2
    assert idx.seen(pack_keys(np.array([[4, 0, 0], [6, 0, 0]]))).tolist() == [True, False]  # face neighbour
