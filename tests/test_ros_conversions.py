"""Message <-> numpy conversions of the rclpy layer (message objects only, no middleware)."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker

from reasoning_seg.camera import CameraIntrinsics, look_at
from reasoning_seg.ros.conversions import (
    box_marker,
    camera_info_to_intrinsics,
    cloud_msg_to_numpy,
    delete_all_marker,
    depth_msg_to_metres,
    frustum_marker,
    image_msg_to_numpy,
    image_msg_to_rgb8,
    intrinsics_to_camera_info,
    make_header,
    matrix_to_pose,
    matrix_to_transform,
    numpy_to_image_msg,
    points_to_cloud_msg,
    pose_to_matrix,
    sec_to_stamp,
    stamp_to_sec,
    text_marker,
    transform_to_matrix,
)

INTR = CameraIntrinsics(640, 480, 570.3, 571.1, 319.5, 239.5)


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    return look_at(rng.uniform(-3, 3, 3), rng.uniform(-1, 1, 3) + [0, 0, 5.0])


def test_stamp_round_trip_and_rounding() -> None:
    assert stamp_to_sec(sec_to_stamp(12.25)) == 12.25
    s = sec_to_stamp(1.9999999999)  # must carry into sec, never nanosec == 1e9
    assert (s.sec, s.nanosec) == (2, 0)
    s = sec_to_stamp(1_700_000_000.123456789)
    assert s.sec == 1_700_000_000 and abs(s.nanosec - 123456789) < 300
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            sec_to_stamp(bad)


def test_image_msg_round_trip_and_padded_step() -> None:
    header = make_header("cam", 3.5)
    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    msg = numpy_to_image_msg(rgb, "rgb8", header)
    assert (msg.width, msg.height, msg.step, msg.is_bigendian) == (6, 4, 18, 0)
    arr, enc = image_msg_to_numpy(msg)
    assert enc == "rgb8" and not arr.flags.writeable  # read-only view into msg.data
    np.testing.assert_array_equal(arr, rgb)
    header.frame_id = "changed"  # headers are copied, not shared
    assert msg.header.frame_id == "cam" and stamp_to_sec(msg.header.stamp) == 3.5

    # A driver-style message with padded rows, big-endian millimetre depth.
    mm = np.array([[0, 1000, 2500], [65535, 1, 42]], dtype=np.uint16)
    m = Image(height=2, width=3, encoding="16UC1", is_bigendian=1, step=8)
    m.data = b"".join(mm[r].astype(">u2").tobytes() + b"\xff\xff" for r in range(2))
    np.testing.assert_allclose(depth_msg_to_metres(m), mm / 1000.0, rtol=1e-6)
    bgr = numpy_to_image_msg(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8", header)
    np.testing.assert_array_equal(image_msg_to_rgb8(bgr), rgb)


def test_camera_info_round_trip_and_errors() -> None:
    info = intrinsics_to_camera_info(INTR, make_header("cam", 1.0))
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert info.p[0] == INTR.fx and info.p[2] == INTR.cx and info.p[6] == INTR.cy
    assert camera_info_to_intrinsics(info) == INTR
    with pytest.raises(ValueError, match="all zero"):
        camera_info_to_intrinsics(CameraInfo(width=640, height=480))
    info.width = 0
    with pytest.raises(ValueError, match="zero image size"):
        camera_info_to_intrinsics(info)


def test_pose_matrix_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        T = _random_pose(rng)
        np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(T)), T, atol=1e-12)
        np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(T)), T, atol=1e-12)
    # 180-degree rotations (trace = -1) are where naive conversions break.
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        T = np.eye(4)
        T[:3, :3] = R
        q = matrix_to_pose(T).orientation
        assert q.w >= 0 and abs(np.linalg.norm([q.x, q.y, q.z, q.w]) - 1) < 1e-12
        np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(T)), T, atol=1e-12)


def test_non_normalised_quaternion_is_normalised() -> None:
    c, s = np.cos(np.pi / 8), np.sin(np.pi / 8)  # 45 degrees about z, scaled by 3
    pose = Pose(position=Point(x=1.0, y=2.0, z=3.0), orientation=Quaternion(x=0.0, y=0.0, z=3 * s, w=3 * c))
    T = pose_to_matrix(pose)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(T[:3, :3], [[r, -r, 0], [r, r, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    tf = Transform(translation=Vector3(x=1.0), rotation=Quaternion(x=0.0, y=0.0, z=0.0, w=0.5))
    np.testing.assert_allclose(transform_to_matrix(tf)[:3, :3], np.eye(3))


@pytest.mark.parametrize(
    "q", [(0.0, 0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0, 1.0), (0.0, float("inf"), 0.0, 1.0)]
)
def test_bad_quaternion_raises(q: tuple[float, float, float, float]) -> None:
    pose = Pose(orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
    with pytest.raises(ValueError, match="NaN/inf|norm"):
        pose_to_matrix(pose)


def test_matrix_to_pose_rejects_non_rigid() -> None:
    with pytest.raises(ValueError, match="rigid"):
        matrix_to_pose(np.diag([2.0, 1.0, 1.0, 1.0]))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="rigid"):
        matrix_to_pose(bad)


def _read_cloud_with_numpy_only(msg: PointCloud2) -> dict[str, np.ndarray]:
    """Independent reader (structured dtype from the message's own field table)."""
    types = {PointField.FLOAT32: "<f4", PointField.UINT32: "<u4"}
    dt = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [types[f.datatype] for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    rec = np.frombuffer(bytes(msg.data), dtype=dt, count=msg.width * msg.height)
    return {name: rec[name] for name in dt.names}


def test_point_cloud_round_trip_with_rgb_and_confidence() -> None:
    rng = np.random.default_rng(2)
    n = 257
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    colors[0] = (255, 255, 255)
    colors[1] = (0, 0, 0)
    conf = rng.uniform(0, 1, n).astype(np.float32)
    msg = points_to_cloud_msg(pts, make_header("map", 2.0), colors=colors, fields={"confidence": conf})
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "confidence"]
    assert all(f.datatype == PointField.FLOAT32 and f.count == 1 for f in msg.fields)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, n, 20, 20 * n)
    assert msg.is_dense and not msg.is_bigendian and len(msg.data) == msg.row_step

    out = cloud_msg_to_numpy(msg)
    np.testing.assert_array_equal(out["points"], pts)
    np.testing.assert_array_equal(out["colors"], colors)
    np.testing.assert_array_equal(out["confidence"], conf)
    assert "rgb" not in out

    # Read back independently, as RViz/PCL do: rgb's 4 bytes are uint32 0x00RRGGBB.
    raw = _read_cloud_with_numpy_only(msg)
    np.testing.assert_array_equal(np.stack([raw["x"], raw["y"], raw["z"]], 1), pts)
    packed = raw["rgb"].view(np.uint32)
    assert packed[0] == 0x00FFFFFF and packed[1] == 0
    np.testing.assert_array_equal((packed >> 16) & 0xFF, colors[:, 0])
    np.testing.assert_array_equal(packed & 0xFF, colors[:, 2])
    np.testing.assert_array_equal(raw["confidence"], conf)


def test_point_cloud_edge_cases() -> None:
    empty = points_to_cloud_msg(np.zeros((0, 3)), make_header("map", 0.0), colors=np.zeros((0, 3), np.uint8))
    assert empty.width == 0 and empty.row_step == 0
    assert cloud_msg_to_numpy(empty)["points"].shape == (0, 3)
    nan_cloud = points_to_cloud_msg(np.array([[np.nan, 0, 0], [1, 2, 3]]), make_header("map", 0.0))
    assert not nan_cloud.is_dense
    with pytest.raises(ValueError, match="values"):
        points_to_cloud_msg(np.zeros((3, 3)), make_header("map", 0.0), fields={"confidence": np.zeros(2)})
    with pytest.raises(ValueError, match="clashes"):
        points_to_cloud_msg(np.zeros((3, 3)), make_header("map", 0.0), fields={"x": np.zeros(3)})


def test_cloud_reader_handles_foreign_layouts() -> None:
    """Organised cloud with padded points and rows, a uint32 rgb and a non-float field."""
    h, w, step, row_step = 2, 3, 24, 80
    n = h * w
    dt = np.dtype(
        {
            "names": ["x", "y", "z", "rgb", "ring"],
            "formats": ["<f4", "<f4", "<f4", "<u4", "<u2"],
            "offsets": [0, 4, 8, 16, 20],
            "itemsize": step,
        }
    )
    rec = np.zeros(n, dtype=dt)
    rec["x"], rec["y"], rec["z"] = np.arange(n), -np.arange(n), 2 * np.arange(n)
    rec["rgb"] = np.arange(n) * 0x010203
    rec["ring"] = np.arange(n) + 7
    body = rec.tobytes()
    data = b"".join(body[r * w * step : (r + 1) * w * step] + b"\0" * (row_step - w * step) for r in range(h))
    fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=16, datatype=PointField.UINT32, count=1),
        PointField(name="ring", offset=20, datatype=PointField.UINT16, count=1),
    ]
    msg = PointCloud2(height=h, width=w, fields=fields, point_step=step, row_step=row_step, data=data)
    out = cloud_msg_to_numpy(msg)
    np.testing.assert_array_equal(out["points"][:, 0], np.arange(n))
    np.testing.assert_array_equal(out["ring"], np.arange(n) + 7)
    np.testing.assert_array_equal(out["colors"][2], [2, 4, 6])
    msg.data = data[:-50]
    with pytest.raises(ValueError, match="bytes"):
        cloud_msg_to_numpy(msg)


def test_markers() -> None:
    header = make_header("map", 5.0)
    R = look_at([0, 0, 0], [1, 1, 0])[:3, :3]
    box = box_marker([1, 2, 3], R, [0.2, 0.3, 0.4], header, ns="target", id=4, color=(1, 0, 0, 0.5))
    assert box.type == Marker.CUBE and box.action == Marker.ADD and (box.ns, box.id) == ("target", 4)
    np.testing.assert_allclose(pose_to_matrix(box.pose)[:3, :3], R, atol=1e-12)
    assert (box.scale.x, box.scale.y, box.scale.z) == (0.2, 0.3, 0.4) and box.color.a == 0.5
    with pytest.raises(ValueError):
        box_marker([0, 0, 0], np.eye(3), [0, 1, 1], header)
    with pytest.raises(ValueError, match="color"):
        box_marker([0, 0, 0], np.eye(3), [1, 1, 1], header, color=(255, 0, 0))

    txt = text_marker([0, 0, 1], "the printer", header, height=0.2)
    assert txt.type == Marker.TEXT_VIEW_FACING and txt.text == "the printer" and txt.scale.z == 0.2

    T = look_at([1.0, 0.0, 1.0], [3.0, 0.0, 1.0])
    fr = frustum_marker(T, INTR, 2.0, header, id=9)
    assert fr.type == Marker.LINE_LIST and len(fr.points) == 16 and fr.scale.x > 0
    pts = np.array([[p.x, p.y, p.z] for p in fr.points])
    np.testing.assert_allclose(pts[0], [1.0, 0.0, 1.0])  # segments start at the camera centre
    far = pts[1::2][::2]  # the four far corners
    np.testing.assert_allclose(far[:, 0], 3.0, atol=1e-9)  # 2 m ahead along +x world
    assert len({tuple(np.round(p, 9)) for p in pts}) == 5  # apex + 4 corners

    clear = delete_all_marker(header)
    assert clear.action == Marker.DELETEALL and clear.header.frame_id == "map"
