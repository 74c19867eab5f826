"""The batched torch path of fusion: every view's visibility and votes on one device at once.

:mod:`reasoning_seg.query.fusion` calls it when a method gets a torch ``device`` (``fusion.device``); the
numpy code there is the reference it is tested against (tests/test_query_overhead.py). Device copies
of the map points and the views' depth images are cached (:data:`DEVICE_ARRAYS`, :data:`DEPTH_ATLAS`)
so a query pays the transfers once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.camera import CameraIntrinsics, invert_transform
from reasoning_seg.config import FusionConfig
from reasoning_seg.segmenter import ViewInput, ViewSegmentation
from reasoning_seg.transfer import to_device, to_host

if TYPE_CHECKING:
    import torch

    from reasoning_seg.query.fusion import FusionCache


# ---------------------------------------------------------------------------- the torch path
def torch_device(device: str | None) -> torch.device | None:
    """The torch device of the batched path, or None for the numpy reference path.

    None, "" and "numpy" select numpy; "auto" selects CUDA when PyTorch sees a GPU and numpy
    otherwise (on a CPU the batched path gains little). Open3D-style names ("CUDA:0", "CPU:0") are
    accepted so the map's device setting can be passed on as it is.
    """
    if device is None or device in ("", "numpy"):
        return None
    import torch

    name = device.lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.device(name)


def _device_key(device: torch.device) -> str:
    """One name per physical device: "cuda" and "cuda:0" must share cached copies (map vs fusion)."""
    if device.type == "cuda" and device.index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


class _DeviceArrays:
    """Device copies of host arrays that outlive a query (map points, masks).

    Why: a GPU query must not upload what it uploaded before (the map points are 8 MB at 350k
    points). Entries are keyed by the array's identity and dropped when the array is
    garbage-collected (weakref callback), so nothing stale can be served for a new array that
    reuses an old one's id. The arrays the pipeline passes (map surface snapshots, keyframe
    images, segmentations) are never modified in place; a caller that mutates an array between
    calls must pass a copy. On the CPU nothing is cached: the tensor is the array.
    """

    def __init__(self, max_entries: int = 128) -> None:
        self._entries: OrderedDict[tuple[int, str], tuple[weakref.ref, Any]] = OrderedDict()
        self._lock = threading.RLock()  # weakref callbacks may re-enter
        self._max = max_entries

    def get(self, array: np.ndarray, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        """``array`` as a contiguous ``dtype`` (None: its own) tensor on ``device``, uploaded once."""
        import torch

        if device.type == "cpu":  # zero-copy view; caching it would keep the array alive for ever
            return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype)
        key = (id(array), f"{_device_key(device)}/{dtype}")
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is array:
                self._entries.move_to_end(key)
                return hit[1]
        tensor = to_device(array, device).to(dtype=dtype)
        self._store(key, array, tensor)
        return tensor

    def put(self, array: np.ndarray, tensor: torch.Tensor) -> None:
        """Declare ``tensor`` (already on its device) the device copy of ``array``: no upload later.

        For arrays that were made on the device and copied to the host (the map's surface, which
        the torch TSDF extracts on the GPU): fusion then finds them there instead of uploading them
        back. ``tensor`` must hold exactly ``array``'s values in its dtype.
        """
        if tensor.device.type != "cpu":
            self._store((id(array), f"{_device_key(tensor.device)}/{tensor.dtype}"), array, tensor)

    def _store(self, key: tuple[int, str], array: np.ndarray, tensor: torch.Tensor) -> None:
        try:
            ref = weakref.ref(array, lambda _, key=key: self._forget(key))
        except TypeError:  # not weak-referenceable: used once, not cached
            return
        with self._lock:
            self._entries[key] = (ref, tensor)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def _forget(self, key: tuple[int, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every device copy (frees GPU memory)."""
        with self._lock:
            self._entries.clear()


DEVICE_ARRAYS = _DeviceArrays()
"""The process-wide cache of device copies used by the torch path (see :class:`_DeviceArrays`)."""


class _DepthAtlas:
    """The keyframe window's depth images in one flat device buffer, each at a fixed offset.

    Why: the batched depth test reads V depth images through one index. Concatenating them for
    every call copied the whole window (30 x 640x480) three times per query; the atlas is
    rebuilt only when a call asks for an image it does not hold (a new keyframe), and then
    uploads only the new images (the others are copied on the device). Images keep their own
    dtype (float32 from the camera), which the depth test widens after the lookup, exactly.
    Entries are keyed by array identity with weakrefs, like :class:`_DeviceArrays`; images of
    keyframes that left the window stay until a rebuild (at most ``max_images`` are kept).
    """

    def __init__(self, max_images: int = 64) -> None:
        self._lock = threading.RLock()  # weakref callbacks may re-enter
        self._max = max_images
        self._buffer: Any = None
        self._device = ""
        self._where: dict[int, tuple[weakref.ref, int, int]] = {}  # id -> (array ref, offset, size)

    def locate(self, depths: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """``(flat buffer on device, offset of each image in it)``."""
        with self._lock:
            if self._buffer is not None and self._device == _device_key(device):
                offsets = []
                for d in depths:
                    hit = self._where.get(id(d))
                    if hit is None or hit[0]() is not d:
                        break
                    offsets.append(hit[1])
                else:
                    return self._buffer, offsets
            self._rebuild(depths, device)
            return self._buffer, [self._where[id(d)][1] for d in depths]

    def _rebuild(self, depths: Sequence[np.ndarray], device: torch.device) -> None:
        import torch

        same_device = self._buffer is not None and self._device == _device_key(device)
        wanted = list({id(d): d for d in depths}.values())
        old = []
        if same_device:  # images still alive and not asked for: keep (newest window first)
            ids = {id(d) for d in wanted}
            for i, (ref, off, size) in reversed(list(self._where.items())):
                arr = ref()
                if arr is not None and i not in ids and len(wanted) + len(old) < self._max:
                    old.append((arr, off, size))
        parts, where, offset = [], {}, 0
        for arr in wanted:
            hit = self._where.get(id(arr)) if same_device else None
            if hit is not None and hit[0]() is arr:
                part = self._buffer[hit[1] : hit[1] + hit[2]]
            else:
                part = to_device(arr, device).reshape(-1)
            parts.append(part)
            where[id(arr)] = (self._ref(arr), offset, part.numel())
            offset += part.numel()
        for arr, off, size in old:
            parts.append(self._buffer[off : off + size])
            where[id(arr)] = (self._ref(arr), offset, size)
            offset += size
        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        self._buffer = torch.cat([p.to(dtype) for p in parts]) if parts else None
        self._where, self._device = where, _device_key(device)

    def _ref(self, arr: np.ndarray) -> weakref.ref:
        key = id(arr)
        return weakref.ref(arr, lambda ref: self._forget(key, ref))

    def _forget(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            hit = self._where.get(key)
            if hit is not None and hit[0] is ref:
                del self._where[key]

    def clear(self) -> None:
        """Drop the buffer (frees GPU memory)."""
        with self._lock:
            self._buffer, self._where, self._device = None, {}, ""


DEPTH_ATLAS = _DepthAtlas()
"""The process-wide depth image buffer of the batched depth test (see :class:`_DepthAtlas`)."""

Camera = tuple[np.ndarray, CameraIntrinsics, np.ndarray]
"""(T_world_cam, intrinsics, depth) of one view or keyframe: what the depth test needs."""


def _camera(view: ViewInput) -> Camera:
    return view.T_world_cam, view.intrinsics, view.depth


def visible_pixels_torch(
    points: np.ndarray | torch.Tensor,
    cameras: Sequence[Camera],
    tolerance: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`reasoning_seg.camera.visible_pixels` for V cameras at once, on ``device``.

    The MLLM-For3D §3.1 occlusion test, batched: points are moved into every camera with one
    (V, N, 3) matrix product, projected, rounded to the nearest pixel and compared with that pixel's
    depth, in float64 like the numpy version (same operations in the same order, so the two agree
    except where a projection lands within a rounding error of a pixel border). Cameras may differ
    in resolution: their depth images are read from one flat buffer (:data:`DEPTH_ATLAS`) at
    per-camera offsets. Every per-camera constant travels in one host-to-device copy: on a GPU a
    query's overhead is counted in launches and copies, not in arithmetic.

    Args:
        points: (N, 3) world points (a numpy array is uploaded through :data:`DEVICE_ARRAYS`).
        cameras: V (T_world_cam, intrinsics, depth) triples.
        tolerance: metres between a point's depth and the pixel's for the point to count as visible.
        device: torch device to compute on.

    Returns:
        ``(visible (V, N) bool, flat pixel index (V, N) int64 with -1 where not visible, z (V, N)
        float64 depth of each point in each camera)``.
    """
    import torch

    p = points_on_device(points, device)
    n, nv = p.shape[0], len(cameras)
    if nv == 0 or n == 0:
        empty = torch.zeros((nv, n), dtype=torch.bool, device=device)
        return empty, torch.full((nv, n), -1, dtype=torch.int64, device=device), p.new_zeros((nv, n))
    depth, offsets = DEPTH_ATLAS.locate([d for _, _, d in cameras], device)
    # world->camera 4x4, fx fy cx cy, width, last column, last row, 0, depth offset
    consts = np.zeros((nv, 26), dtype=np.float64)
    for j, (T, k, _) in enumerate(cameras):
        consts[j, :16] = invert_transform(T).reshape(-1)
        consts[j, 16:] = (k.fx, k.fy, k.cx, k.cy, k.width, k.width - 1, k.height - 1, 0.0, offsets[j], 0.0)
    c = to_device(consts, device)
    inv = c[:, :16].reshape(nv, 4, 4)
    fx, fy, cx, cy, width, last_u, last_v, zero, offset = c[:, 16:25, None].unbind(1)

    pc = torch.matmul(p, inv[:, :3, :3].transpose(1, 2)) + inv[:, None, :3, 3]  # (V, N, 3) camera frame
    x, y, z = pc.unbind(-1)
    u = torch.round(fx * x / z + cx)
    v = torch.round(fy * y / z + cy)
    # 0 <= u < width for the integer-valued u, as "u is its own clamp to [0, width - 1]" (NaN is not):
    # two kernels instead of four per axis; launches, not arithmetic, are a GPU query's cost.
    inside = (z > 0) & (u == torch.clamp(u, zero, last_u)) & (v == torch.clamp(v, zero, last_v))
    local = torch.where(inside, v * width + u, 0.0)
    dv = depth[(local + offset).to(torch.int64)].to(torch.float64)
    # (no isfinite: NaN fails both tests and an infinite reading fails the tolerance, as in numpy)
    visible = inside & (dv > 0) & ((dv - z).abs() <= tolerance)
    flat = torch.where(visible, local.to(torch.int64), -1)
    return visible, flat, z


def points_on_device(points: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, 3) float64 ``points`` on ``device``; a numpy array is uploaded once while it lives."""
    import torch

    if isinstance(points, torch.Tensor):
        return points.to(device=device, dtype=torch.float64).reshape(-1, 3)
    return DEVICE_ARRAYS.get(_as_rows(points), device, torch.float64)


def _as_rows(points: np.ndarray) -> np.ndarray:
    """``points`` as (N, 3), the same object when it already is one (so the device cache hits)."""
    arr = np.asarray(points)
    return arr if arr.ndim == 2 and arr.shape[1] == 3 else arr.reshape(-1, 3)


def _vote_torch(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    weights: np.ndarray,
    mode: str,
    config: FusionConfig,
    min_support: float | None,
    shares: int,
    device: torch.device,
    cache: FusionCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_vote` + :func:`_gate` on ``device``: ``(probability (N,) float32, observed (N,) int32)``.

    P(p) = Σ a_i m_i(p) / Σ a_i over the views that see p (MLLM-For3D §3.2). The sums run over a
    (V, N) batch with ``cumsum`` along the views, which adds them one view after the other in the
    numpy version's order, so the float64 sums are the same. ``min_support`` None skips the
    support gate (naive). One device-to-host copy brings both results back.
    """
    import torch

    voters = np.flatnonzero(weights > 0)
    if voters.size == 0:
        return np.zeros(len(points), np.float32), np.zeros(len(points), np.int32)
    visible, value = _view_rows(points, views, segmentations, voters, mode, config, device, cache)
    w = to_device(weights[voters].astype(np.float64), device)[:, None]
    num = (w * value).cumsum(0)[-1]
    den = torch.where(visible, w, 0.0).cumsum(0)[-1]
    observed = visible.sum(0, dtype=torch.int32)
    prob = torch.where(den > 0, num / den, 0.0)
    if min_support is not None:
        prob = torch.where(num * shares >= min_support, prob, 0.0)
    host = to_host(torch.stack([prob.to(torch.float32).view(torch.int32), observed]))
    return host[0].view(np.float32), host[1]


def _view_rows(
    points: np.ndarray,
    views: Sequence[ViewInput],
    segmentations: Sequence[ViewSegmentation],
    voters: np.ndarray,
    mode: str,
    config: FusionConfig,
    device: torch.device,
    cache: FusionCache | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visible (V, N) bool, mask value at the visible points (V, N) float64, 0 elsewhere)`` of the voters.

    Views in ``cache`` are not recomputed; the others go through one batched depth test.
    """
    import torch

    tol = config.visibility_tolerance
    keys = [(id(views[i]), id(segmentations[i])) for i in voters]
    memo: dict[tuple[int, int], Any] = {}
    if cache is not None:
        memo = cache.rows(points, ("torch", mode, tol, _device_key(device)))
        cache.keep(*(views[i] for i in voters), *(segmentations[i] for i in voters))
    new = [j for j, key in enumerate(keys) if key not in memo]
    if new:
        idx = [int(voters[j]) for j in new]
        visible, flat, _ = visible_pixels_torch(points, [_camera(views[i]) for i in idx], tol, device)
        masks = _mask_values_at([segmentations[i] for i in idx], flat, mode, device)
        value = torch.where(visible, masks, 0.0)
        for r, j in enumerate(new):
            memo[keys[j]] = (visible[r], value[r])
        if len(new) == len(keys):  # all computed now, in the voters' order
            return visible, value
    return torch.stack([memo[k][0] for k in keys]), torch.stack([memo[k][1] for k in keys])


def _mask_values_at(
    segmentations: Sequence[ViewSegmentation], flat: torch.Tensor, mode: str, device: torch.device
) -> torch.Tensor:
    """(V, N) float64 :func:`_mask_values` of each view read at ``flat`` (its (V, N) pixel indices).

    The sigmoid is taken after the lookup: elementwise, so the same values, on N points instead
    of every pixel. Masks are uploaded once each (:data:`DEVICE_ARRAYS`) in their own dtype.
    """
    import torch

    logits = [DEVICE_ARRAYS.get(s.mask_logits, device, None).reshape(-1) for s in segmentations]
    pix = flat.clamp(min=0)
    if len({t.numel() for t in logits}) == 1:  # the usual case: one resolution, a (V, H*W) gather
        x = torch.stack(logits).gather(1, pix)
    else:
        sizes = [t.numel() for t in logits]
        offsets = torch.tensor(np.cumsum([0, *sizes[:-1]]), dtype=torch.int64, device=device)
        x = torch.cat(logits)[pix + offsets[:, None]]
    x = x.to(torch.float64)
    if mode == "binary":
        return (x > 0).to(torch.float64)
    if mode == "probability":
        return torch.reciprocal(1.0 + torch.exp(-x.clamp(-60.0, 60.0)))  # = 1 / (...): one kernel less
    raise ValueError(f"unknown fusion.mask_mode '{mode}' (probability | binary)")
