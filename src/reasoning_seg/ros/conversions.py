"""ROS message <-> numpy / core-type conversions (the only place that knows message layouts).

Nodes call these functions and hand plain arrays and :class:`CameraIntrinsics` to the ROS-free
core; byte-level image rules are delegated to :mod:`reasoning_seg.io.image_codec` so they are tested
without ROS. Nothing here keeps state or talks to the middleware.

Conventions: poses are 4x4 float64 ``T_parent_child`` matrices; quaternions are normalised on the
way in (drivers and hand-written YAML often send slightly off-unit ones) and rejected when they
cannot be normalised; headers passed in are copied, so reusing one header object for several
messages is safe.
"""

from __future__ import annotations

import array
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker

from reasoning_seg.camera import CameraIntrinsics, is_rigid_transform
from reasoning_seg.io.image_codec import decode_image, depth_to_metres, encode_image, to_rgb8
from reasoning_seg.mapping.frames import focal_length_problem
from reasoning_seg.query.result import QueryResult, ViewImage

__all__ = [
    "box_marker",
    "camera_info_to_intrinsics",
    "cloud_msg_to_numpy",
    "copy_header",
    "delete_all_marker",
    "depth_msg_to_metres",
    "frustum_marker",
    "image_msg_to_numpy",
    "image_msg_to_rgb8",
    "intrinsics_to_camera_info",
    "make_header",
    "matrix_to_pose",
    "matrix_to_quaternion",
    "matrix_to_transform",
    "numpy_to_image_msg",
    "pack_rgb",
    "points_to_cloud_msg",
    "pose_to_matrix",
    "quaternion_to_matrix",
    "sec_to_stamp",
    "stamp_to_sec",
    "text_marker",
    "transform_to_matrix",
    "unpack_rgb",
]

_NS_PER_S = 1_000_000_000


# --------------------------------------------------------------------------- time and headers


def stamp_to_sec(stamp: Time) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """Float seconds -> ``builtin_interfaces/Time``, rounded to the nearest nanosecond.

    Rounding the total nanoseconds once (not sec and nanosec separately) keeps e.g. 1.9999999999 s
    from producing ``nanosec == 1e9``, which rclpy rejects.
    """
    t = float(t)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"a ROS stamp must be finite and non-negative, got {t}")
    sec, nanosec = divmod(round(t * _NS_PER_S), _NS_PER_S)
    if sec > 2**31 - 1:
        raise ValueError(f"stamp {t} s does not fit the int32 seconds field")
    return Time(sec=int(sec), nanosec=int(nanosec))


def make_header(frame_id: str, stamp: Time | float) -> Header:
    """Header with ``frame_id`` and a stamp given either as ``Time`` or float seconds."""
    if not isinstance(stamp, Time):
        stamp = sec_to_stamp(stamp)
    return Header(stamp=Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=str(frame_id))


def copy_header(header: Header) -> Header:
    """Independent copy, so later edits of the caller's header do not leak into sent messages."""
    return make_header(header.frame_id, header.stamp)


# --------------------------------------------------------------------------- images


def _uint8_array(data: bytes) -> array.array:
    # Message uint8[] fields are array.array('B'); building one with frombytes is a single memcpy,
    # whereas assigning bytes/memoryview makes the generated setter iterate element by element.
    out = array.array("B")
    out.frombytes(data)
    return out


def image_msg_to_numpy(msg: Image, copy: bool = False) -> tuple[np.ndarray, str]:
    """``sensor_msgs/Image`` -> ``(array, encoding)`` in native byte order, honouring ``step``.

    With the default ``copy=False`` the array is a **read-only view into ``msg.data``** where the
    layout allows: cheap for large images, and safe because a received message is owned by the
    callback and nobody rewrites it. Pass ``copy=True`` when the message object will be reused.
    """
    arr = decode_image(
        msg.data, msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian), copy=copy
    )
    return arr, msg.encoding


def image_msg_to_rgb8(msg: Image) -> np.ndarray:
    """Colour image message -> (H, W, 3) uint8 RGB (see :func:`image_codec.to_rgb8` for the rules)."""
    arr, enc = image_msg_to_numpy(msg)
    return to_rgb8(arr, enc)


def depth_msg_to_metres(msg: Image, depth_scale: float = 1000.0) -> np.ndarray:
    """Depth image message -> (H, W) float32 metres, 0.0 where there is no reading."""
    arr, enc = image_msg_to_numpy(msg)
    return depth_to_metres(arr, enc, depth_scale)


def numpy_to_image_msg(array_: np.ndarray, encoding: str, header: Header) -> Image:
    """Array -> ``sensor_msgs/Image`` (little-endian, tightly packed rows).

    The dtype must match ``encoding`` (see :func:`image_codec.encode_image`); use
    :func:`image_codec.depth_from_metres` to turn float metres into ``16UC1``.
    """
    data, step = encode_image(array_, encoding)
    msg = Image()
    msg.header = copy_header(header)
    msg.height, msg.width = int(array_.shape[0]), int(array_.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = step
    msg.data = _uint8_array(data)
    return msg


def view_report_msgs(result: QueryResult, header: Header, include_images: bool) -> list:
    """A query's per-view reports as ``reasoning_seg_msgs/ViewReport`` messages (failed views left out).

    Images and masks are filled only with ``include_images``: about 1.2 MB per 640x480 view, too much
    for every reply and for the latched ~/result topic, just right for a report or a debugging UI.
    """
    from reasoning_seg_msgs.msg import ViewReport

    images = {v.keyframe_id: v for v in result.view_images}
    out = []
    for rep in result.view_reports:
        if "keyframe_id" not in rep:  # {"failed": why}: named in the result's message
            continue
        m = ViewReport()
        m.keyframe_id = int(rep["keyframe_id"])
        m.confidence, m.weight = float(rep["confidence"]), float(rep["weight"])
        m.attention = float(rep["attention"])
        m.alignment = math.nan if rep["alignment"] is None else float(rep["alignment"])
        m.mask_pixels = int(rep["mask_pixels"])
        m.filtered, m.answer = str(rep["filtered"]), str(rep["answer"])
        view = images.get(m.keyframe_id)
        if view is not None:
            m.camera_pose = matrix_to_pose(view.T_world_cam)
            m.camera_info = intrinsics_to_camera_info(view.intrinsics, header)
        if view is not None and include_images:
            m.image = numpy_to_image_msg(np.ascontiguousarray(view.color, dtype=np.uint8), "rgb8", header)
            m.mask = numpy_to_image_msg(np.asarray(view.mask, dtype=np.uint8) * 255, "mono8", header)
        out.append(m)
    return out


def view_images_from_msgs(views: Sequence) -> list[ViewImage]:
    """The images and masks of ``ViewReport`` messages (those that carry them) as :class:`ViewImage`."""
    out = []
    for v in views:
        if v.image.width and v.mask.width:
            intr = camera_info_to_intrinsics(v.camera_info)
            out.append(
                ViewImage(
                    int(v.keyframe_id),
                    image_msg_to_rgb8(v.image),
                    image_msg_to_numpy(v.mask)[0] > 127,
                    pose_to_matrix(v.camera_pose),
                    intr,
                )
            )
    return out


# --------------------------------------------------------------------------- camera info


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    """``sensor_msgs/CameraInfo`` -> :class:`CameraIntrinsics` from ``K`` and the image size.

    ``K`` (not ``P``) is used because RGB-D drivers publish registered, undistorted depth whose
    intrinsics are ``K``. An uncalibrated camera publishes ``K`` all zero: that and a zero image
    size (or a NaN/inf entry) raise ``ValueError`` instead of producing a camera that projects
    everything to NaN.
    Binning / ROI are not supported (drivers for RGB-D cameras leave them unset).
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise ValueError(f"CameraInfo has zero image size {msg.width}x{msg.height}")
    if not np.any(k):
        raise ValueError("CameraInfo K is all zero: the camera is not calibrated")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"CameraInfo K has NaN/inf entries: {k.reshape(-1).tolist()}")
    if msg.binning_x > 1 or msg.binning_y > 1:
        raise ValueError(f"CameraInfo binning {msg.binning_x}x{msg.binning_y} is not supported")
    intr = CameraIntrinsics.from_K(k, int(msg.width), int(msg.height))
    why = focal_length_problem(intr)
    if why:
        raise ValueError(f"CameraInfo {why}")
    return intr


def intrinsics_to_camera_info(intr: CameraIntrinsics, header: Header) -> CameraInfo:
    """:class:`CameraIntrinsics` -> ``CameraInfo`` of an ideal rectified camera.

    ``D`` is five zeros with ``plumb_bob`` (what image_pipeline expects of rectified images), ``R``
    is identity and ``P = [K | 0]``.
    """
    msg = CameraInfo()
    msg.header = copy_header(header)
    msg.width, msg.height = int(intr.width), int(intr.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in intr.K.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


# --------------------------------------------------------------------------- poses


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a quaternion, normalised first.

    A norm off by a modest factor (a publisher that skipped normalising) is fixed; NaN/inf, or a norm
    outside [0.01, 100] (near zero, or absurd: 1e200 overflows a naive norm) -> ``ValueError``.
    """
    q = np.array([x, y, z, w], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion {q.tolist()} has NaN/inf entries")
    n = math.hypot(*q.tolist())  # no overflow for huge entries
    if not 0.01 <= n <= 100.0:
        raise ValueError(f"quaternion {q.tolist()} has norm {n:.3g}: not a rotation (expected about 1)")
    x, y, z, w = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion ``(x, y, z, w)`` with ``w >= 0``.

    Picks the numerically largest of w, x, y, z to divide by (Shepperd's method), so rotations
    near 180 degrees stay accurate.
    """
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    cands = (tr, R[0, 0], R[1, 1], R[2, 2])
    i = int(np.argmax(cands))
    if i == 0:
        s = 2.0 * math.sqrt(max(1.0 + tr, 0.0))
        q = ((R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4)
    elif i == 1:
        s = 2.0 * math.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = (s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s)
    elif i == 2:
        s = 2.0 * math.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))
        q = ((R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))
        q = ((R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s)
    qa = np.asarray(q)
    qa /= np.linalg.norm(qa)
    if qa[3] < 0:
        qa = -qa
    return float(qa[0]), float(qa[1]), float(qa[2]), float(qa[3])


def _rigid_or_raise(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if not is_rigid_transform(T):
        raise ValueError(f"not a finite rigid 4x4 transform:\n{T}")
    return T


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 transform (quaternion normalised; unusable one -> ValueError)."""
    o, p = pose.orientation, pose.position
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(o.x, o.y, o.z, o.w)
    T[:3, 3] = (p.x, p.y, p.z)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"pose position is not finite: {T[:3, 3].tolist()}")
    return T


def matrix_to_pose(T: np.ndarray) -> Pose:
    """4x4 rigid transform -> ``geometry_msgs/Pose``; scaled, sheared or NaN matrices raise."""
    T = _rigid_or_raise(T)
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    return Pose(
        position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=Quaternion(x=x, y=y, z=z, w=w),
    )


def transform_to_matrix(tf: Transform) -> np.ndarray:
    """``geometry_msgs/Transform`` -> 4x4 transform (same quaternion rules as poses)."""
    r, t = tf.rotation, tf.translation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(r.x, r.y, r.z, r.w)
    T[:3, 3] = (t.x, t.y, t.z)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"transform translation is not finite: {T[:3, 3].tolist()}")
    return T


def matrix_to_transform(T: np.ndarray) -> Transform:
    """4x4 rigid transform -> ``geometry_msgs/Transform``."""
    pose = matrix_to_pose(T)
    p, o = pose.position, pose.orientation
    return Transform(translation=Vector3(x=p.x, y=p.y, z=p.z), rotation=o)


# --------------------------------------------------------------------------- point clouds

_FIELD_DTYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are ``0x00RRGGBB`` (PCL's packed ``rgb``).

    PCL and RViz declare the field FLOAT32 for historical reasons but read its 4 bytes as a
    little-endian uint32; the values are reinterpreted, never converted, so no colour is lost.
    """
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[1] != 3 or c.dtype != np.uint8:
        raise ValueError(f"colors must be (N, 3) uint8, got {c.shape} {c.dtype}")
    u = (c[:, 0].astype(np.uint32) << 16) | (c[:, 1].astype(np.uint32) << 8) | c[:, 2].astype(np.uint32)
    return u.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb` (accepts the float32 or uint32 view); alpha byte ignored."""
    packed = np.asarray(packed)
    if packed.dtype.itemsize != 4:
        raise ValueError(f"packed rgb must be 4-byte values, got {packed.dtype}")
    u = np.ascontiguousarray(packed, dtype=packed.dtype.newbyteorder("=")).view(np.uint32)
    return np.stack([(u >> 16) & 0xFF, (u >> 8) & 0xFF, u & 0xFF], axis=-1).astype(np.uint8)


def points_to_cloud_msg(
    points: np.ndarray,
    header: Header,
    colors: np.ndarray | None = None,
    fields: Mapping[str, np.ndarray] | None = None,
) -> PointCloud2:
    """(N, 3) points (+ optional RGB and float32 per-point fields) -> unorganised ``PointCloud2``.

    Layout: ``x y z`` float32, then ``rgb`` (packed, see :func:`pack_rgb`) when ``colors`` is given,
    then each extra field (e.g. ``confidence``) as float32, in the given order; little-endian,
    ``height = 1``, ``row_step = point_step * N``; ``is_dense`` is True only when every xyz is
    finite (PCL's meaning). An empty cloud (N = 0) is valid and is how "nothing found" is sent.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        if pts.size == 0:
            pts = pts.reshape(0, 3)
        else:
            raise ValueError(f"points must be (N, 3), got {pts.shape}")
    n = pts.shape[0]
    columns: list[tuple[str, np.ndarray]] = [
        ("x", pts[:, 0].astype("<f4")),
        ("y", pts[:, 1].astype("<f4")),
        ("z", pts[:, 2].astype("<f4")),
    ]
    if colors is not None:
        c = np.asarray(colors)
        if c.size == 0:
            c = np.zeros((0, 3), dtype=np.uint8)
        if c.shape[:1] != (n,):
            raise ValueError(f"colors has {c.shape[:1]} rows, points has {n}")
        columns.append(("rgb", pack_rgb(c)))
    for name, values in (fields or {}).items():
        if name in {col for col, _ in columns}:
            raise ValueError(f"field name {name!r} clashes with a built-in field")
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != (n,):
            raise ValueError(f"field {name!r} has {v.shape[0]} values, points has {n}")
        columns.append((str(name), v.astype("<f4")))

    point_step = 4 * len(columns)
    table = np.empty((n, len(columns)), dtype="<f4")
    for j, (_, col) in enumerate(columns):
        table[:, j] = col.view("<f4")

    msg = PointCloud2()
    msg.header = copy_header(header)
    msg.height, msg.width = 1, n
    msg.fields = [
        PointField(name=name, offset=4 * j, datatype=PointField.FLOAT32, count=1)
        for j, (name, _) in enumerate(columns)
    ]
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = point_step * n
    msg.is_dense = bool(np.all(np.isfinite(pts)))
    msg.data = _uint8_array(table.tobytes())
    return msg


def cloud_msg_to_numpy(msg: PointCloud2) -> dict[str, np.ndarray]:
    """``PointCloud2`` -> ``{field name: (N,) array}`` plus convenience keys.

    Reads every scalar field of any PointField type (native byte order, organised clouds
    flattened row by row, ``row_step`` padding skipped). Adds ``points`` (N, 3) float32 when x, y,
    z exist, and replaces a packed ``rgb`` / ``rgba`` field by ``colors`` (N, 3) uint8 RGB. Fields
    with ``count > 1`` come back as (N, count).
    """
    h, w, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    n = h * w
    if n and (step <= 0 or row_step < w * step):
        raise ValueError(f"PointCloud2 point_step {step} / row_step {row_step} do not fit {w} points a row")
    need = (h - 1) * row_step + w * step if n else 0
    data = memoryview(msg.data).cast("B")
    if data.nbytes < need:
        raise ValueError(f"PointCloud2 data has {data.nbytes} bytes, layout needs {need}")
    flat = np.frombuffer(data, dtype=np.uint8, count=need)
    if n:
        # Rows may be padded (row_step > width * point_step): stride over them without copying.
        rows = np.lib.stride_tricks.as_strided(flat, shape=(h, w * step), strides=(row_step, 1))
        raw = rows.reshape(n, step)
    else:
        raw = np.zeros((0, max(step, 1)), dtype=np.uint8)
    order = ">" if msg.is_bigendian else "<"
    out: dict[str, np.ndarray] = {}
    for f in msg.fields:
        if f.datatype not in _FIELD_DTYPES:
            raise ValueError(f"PointField {f.name!r} has unknown datatype {f.datatype}")
        dt = np.dtype(order + _FIELD_DTYPES[f.datatype])
        count = max(int(f.count), 1)
        end = int(f.offset) + dt.itemsize * count
        if end > step:
            raise ValueError(f"PointField {f.name!r} ends at byte {end}, beyond point_step {step}")
        vals = np.ascontiguousarray(raw[:, int(f.offset) : end]).view(dt).astype(dt.newbyteorder("="))
        out[f.name] = vals.reshape(n, count) if count > 1 else vals.reshape(n)
    for key in ("rgb", "rgba"):
        if key in out and out[key].dtype.itemsize == 4 and out[key].ndim == 1:
            out["colors"] = unpack_rgb(out.pop(key))
            break
    if all(k in out for k in ("x", "y", "z")):
        out["points"] = np.stack([out["x"], out["y"], out["z"]], axis=1).astype(np.float32)
    return out


# --------------------------------------------------------------------------- markers

RGBA = Sequence[float]


def _color(color: RGBA) -> ColorRGBA:
    c = [float(v) for v in color]
    if len(c) == 3:
        c.append(1.0)
    if len(c) != 4 or not all(0.0 <= v <= 1.0 for v in c):
        raise ValueError(f"color must be RGB(A) floats in [0, 1], got {color}")
    return ColorRGBA(r=c[0], g=c[1], b=c[2], a=c[3])


def _marker(header: Header, ns: str, id_: int, type_: int, color: RGBA) -> Marker:
    m = Marker()
    m.header = copy_header(header)
    m.ns, m.id, m.type, m.action = str(ns), int(id_), type_, Marker.ADD
    m.color = _color(color)
    m.pose.orientation.w = 1.0
    return m


def box_marker(
    center: Iterable[float],
    rotation: np.ndarray,
    size: Iterable[float],
    header: Header,
    ns: str = "boxes",
    id: int = 0,
    color: RGBA = (0.1, 0.8, 0.2, 0.5),
) -> Marker:
    """Oriented box (``CUBE``): ``center`` (3,), ``rotation`` 3x3 box->frame, full edge ``size`` (3,)."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(list(center), dtype=np.float64).reshape(3)
    s = [float(v) for v in size]
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"box size must be three positive numbers, got {size}")
    m = _marker(header, ns, id, Marker.CUBE, color)
    m.pose = matrix_to_pose(T)
    m.scale = Vector3(x=s[0], y=s[1], z=s[2])
    return m


def text_marker(
    position: Iterable[float],
    text: str,
    header: Header,
    ns: str = "labels",
    id: int = 0,
    color: RGBA = (1.0, 1.0, 1.0, 1.0),
    height: float = 0.1,
) -> Marker:
    """Camera-facing label (``TEXT_VIEW_FACING``) at ``position``; ``height`` is the letter height (m)."""
    p = [float(v) for v in position]
    m = _marker(header, ns, id, Marker.TEXT_VIEW_FACING, color)
    m.pose.position = Point(x=p[0], y=p[1], z=p[2])
    m.scale.z = float(height)
    m.text = str(text)
    return m


def frustum_marker(
    T_world_cam: np.ndarray,
    intrinsics: CameraIntrinsics,
    depth: float,
    header: Header,
    ns: str = "frustums",
    id: int = 0,
    color: RGBA = (1.0, 0.6, 0.0, 1.0),
    line_width: float = 0.01,
) -> Marker:
    """Camera view pyramid (``LINE_LIST``, 8 segments) cut at ``depth`` metres.

    Points are given in the header frame (identity marker pose) so the marker is correct whatever
    the consumer does with ``pose``; the corners are the image corners (pixel edges, -0.5 and
    size - 0.5 in this package's pixel-centre convention) back-projected with the intrinsics.
    """
    T = _rigid_or_raise(T_world_cam)
    if not (math.isfinite(depth) and depth > 0):
        raise ValueError(f"frustum depth must be positive, got {depth}")
    us = (-0.5, intrinsics.width - 0.5)
    vs = (-0.5, intrinsics.height - 0.5)
    corners_cam = [
        ((u - intrinsics.cx) / intrinsics.fx * depth, (v - intrinsics.cy) / intrinsics.fy * depth, depth)
        for u, v in ((us[0], vs[0]), (us[1], vs[0]), (us[1], vs[1]), (us[0], vs[1]))
    ]
    pts = np.asarray(corners_cam) @ T[:3, :3].T + T[:3, 3]
    origin = T[:3, 3]
    segs: list[np.ndarray] = []
    for i in range(4):
        segs += [origin, pts[i], pts[i], pts[(i + 1) % 4]]
    m = _marker(header, ns, id, Marker.LINE_LIST, color)
    m.scale.x = float(line_width)
    m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in segs]
    return m


def delete_all_marker(header: Header, ns: str = "") -> Marker:
    """``DELETEALL`` marker: put it first in a ``MarkerArray`` to clear stale markers of the topic."""
    m = Marker()
    m.header = copy_header(header)
    m.ns = str(ns)
    m.action = Marker.DELETEALL
    return m
