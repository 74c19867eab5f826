"""Round trips and field contracts of the generated ROS interfaces (msg/, srv/, action/).

Every message, service request/response and action goal/result/feedback is filled with
non-default values, serialized to CDR with :func:`rclpy.serialization.serialize_message` and
deserialized again; the copy must equal the original field by field. The field names and types of
``SegmentationResult`` (and of the request shapes) are asserted explicitly: other nodes, tools and
recorded bags rely on them.

Nothing here is skipped: when the interfaces are not built (``make setup``) or not on the path
(``source scripts/env.sh``), these tests fail. No DDS traffic is involved (no ``ros`` marker).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from rclpy.serialization import deserialize_message, serialize_message
from reasoning_seg_msgs.action import SegmentQuery
from reasoning_seg_msgs.msg import OrientedBox, SegmentationResult, StageTiming, ViewReport
from reasoning_seg_msgs.srv import LoadMap, SaveMap, Segment

import reasoning_seg

# --- Contracts ------------------------------------------------------------------------------------

SEGMENTATION_RESULT_FIELDS = {
    "header": "std_msgs/Header",
    "query": "string",
    "found": "boolean",
    "message": "string",
    "answer": "string",
    "method": "string",
    "segmenter": "string",
    "cloud": "sensor_msgs/PointCloud2",
    "box": "reasoning_seg_msgs/OrientedBox",
    "confidence": "float",
    "num_points": "uint32",
    "keyframe_ids": "sequence<int64>",
    "timings": "sequence<reasoning_seg_msgs/StageTiming>",
    "views": "sequence<reasoning_seg_msgs/ViewReport>",  # added (issue 23): appended, nothing moved
}
QUERY_REQUEST_FIELDS = {
    "query": "string",
    "num_views": "uint8",
    "score_threshold": "float",
    "target_frame": "string",
    "include_view_images": "boolean",
}
QUERY_RESPONSE_FIELDS = {
    "success": "boolean",
    "message": "string",
    "result": "reasoning_seg_msgs/SegmentationResult",
}
MAP_REQUEST_FIELDS = {"directory": "string"}
MAP_RESPONSE_FIELDS = {"success": "boolean", "message": "string"}


def _fields(msg_type: Any) -> dict[str, str]:
    return dict(msg_type.get_fields_and_field_types())


def test_segmentation_result_fields_are_the_contract() -> None:
    # Order matters too: it is the wire (CDR) layout that recorded bags were written with.
    assert list(_fields(SegmentationResult).items()) == list(SEGMENTATION_RESULT_FIELDS.items())
    assert SegmentationResult.METHOD_FUSION == "fusion"
    assert SegmentationResult.METHOD_3D_NET == "3d_net"


def test_helper_message_fields() -> None:
    assert _fields(OrientedBox) == {"center": "geometry_msgs/Pose", "size": "geometry_msgs/Vector3"}
    assert _fields(StageTiming) == {"stage": "string", "seconds": "double"}
    assert _fields(ViewReport) == {
        "keyframe_id": "int64",
        "confidence": "float",
        "weight": "float",
        "attention": "float",
        "alignment": "float",
        "mask_pixels": "uint32",
        "filtered": "string",
        "answer": "string",
        "camera_pose": "geometry_msgs/Pose",
        "camera_info": "sensor_msgs/CameraInfo",
        "image": "sensor_msgs/Image",
        "mask": "sensor_msgs/Image",
    }


def test_service_and_action_shapes() -> None:
    assert _fields(Segment.Request) == QUERY_REQUEST_FIELDS
    assert _fields(Segment.Response) == QUERY_RESPONSE_FIELDS
    # The action goal mirrors the service request so clients can switch between the two.
    assert _fields(SegmentQuery.Goal) == QUERY_REQUEST_FIELDS
    assert _fields(SegmentQuery.Result) == QUERY_RESPONSE_FIELDS
    assert _fields(SegmentQuery.Feedback) == {
        "stage": "string",
        "views_done": "uint32",
        "views_total": "uint32",
    }
    assert _fields(LoadMap.Request) == MAP_REQUEST_FIELDS
    # SaveMap may replace a saved map by an empty state only when asked to (issue 17).
    assert _fields(SaveMap.Request) == {**MAP_REQUEST_FIELDS, "allow_empty_overwrite": "boolean"}
    for srv in (SaveMap, LoadMap):
        assert _fields(srv.Response) == MAP_RESPONSE_FIELDS


# --- Sample values --------------------------------------------------------------------------------


def _cloud() -> Any:
    """A 3-point PointCloud2 with fields x y z rgb confidence (float32 each, 20-byte points)."""
    from sensor_msgs.msg import PointCloud2, PointField

    names = ("x", "y", "z", "rgb", "confidence")
    fields = [
        PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(names)
    ]
    rgb = struct.unpack("<f", struct.pack("<I", 0x00FF8000))[0]  # packed 0x00RRGGBB, as in PCL
    points = [(0.5, -1.25, 2.0, rgb, 0.75), (0.0, 0.0, 0.0, rgb, 1.0), (1e-3, 3.5, -0.25, rgb, 0.5)]
    data = b"".join(struct.pack("<5f", *p) for p in points)
    cloud = PointCloud2(
        height=1,
        width=len(points),
        fields=fields,
        is_bigendian=False,
        point_step=20,
        row_step=20 * len(points),
        data=data,
        is_dense=True,
    )
    cloud.header.frame_id = "map"
    cloud.header.stamp.sec = 1_700_000_000
    cloud.header.stamp.nanosec = 123_456_789
    return cloud


def _box() -> OrientedBox:
    box = OrientedBox()
    box.center.position.x, box.center.position.y, box.center.position.z = 1.5, -2.25, 0.75
    # 90 degrees about z.
    box.center.orientation.z = math.sqrt(0.5)
    box.center.orientation.w = math.sqrt(0.5)
    box.size.x, box.size.y, box.size.z = 0.25, 0.125, 0.5
    return box


def _result() -> SegmentationResult:
    res = SegmentationResult()
    res.header.frame_id = "map"
    res.header.stamp.sec = 1_700_000_001
    res.header.stamp.nanosec = 42
    res.query = "something to drink coffee from — ☕"
    res.found = True
    res.message = "ok"
    res.answer = "The blue mug on the table: it is the only cup-shaped object."
    res.method = SegmentationResult.METHOD_FUSION
    res.segmenter = "simulated-1.0"
    res.cloud = _cloud()
    res.box = _box()
    res.confidence = 0.875  # exact in float32
    res.num_points = 3
    res.keyframe_ids = [0, 7, 2**40, -1]
    res.timings = [
        StageTiming(stage="view_selection", seconds=0.0125),
        StageTiming(stage="fusion", seconds=1.5),
    ]
    return res


def _query_fields() -> dict[str, Any]:
    return {
        "query": "the thing I can sit on",
        "num_views": 12,
        "score_threshold": 0.5,
        "target_frame": "base_link",
    }


def _round_trip(msg: Any) -> Any:
    data = serialize_message(msg)
    assert isinstance(data, bytes) and data
    out = deserialize_message(data, type(msg))
    assert type(out) is type(msg)
    return out


def _assert_same(a: Any, b: Any) -> None:
    """Field-by-field equality (clearer failures than ``==`` on whole messages)."""
    for name in a.get_fields_and_field_types():
        va, vb = getattr(a, name), getattr(b, name)
        if hasattr(va, "get_fields_and_field_types"):
            _assert_same(va, vb)
        elif isinstance(va, list) and va and hasattr(va[0], "get_fields_and_field_types"):
            assert len(va) == len(vb), name
            for ea, eb in zip(va, vb, strict=True):
                _assert_same(ea, eb)
        elif isinstance(va, (str, bytes, int, float, bool)):
            assert va == vb, name
        else:  # arrays: array.array or numpy.ndarray
            assert list(va) == list(vb), name
    assert a == b


# --- Round trips ----------------------------------------------------------------------------------


def test_oriented_box_round_trip() -> None:
    box = _box()
    out = _round_trip(box)
    _assert_same(box, out)
    assert out.center.orientation.z == pytest.approx(math.sqrt(0.5))


def test_stage_timing_round_trip() -> None:
    t = StageTiming(stage="segment_2d", seconds=3.25e-3)
    out = _round_trip(t)
    _assert_same(t, out)
    assert out.seconds == 3.25e-3  # float64: exact


def test_segmentation_result_round_trip() -> None:
    res = _result()
    out = _round_trip(res)
    _assert_same(res, out)
    assert out.query == "something to drink coffee from — ☕"  # UTF-8 survives
    assert list(out.keyframe_ids) == [0, 7, 2**40, -1]
    assert [t.stage for t in out.timings] == ["view_selection", "fusion"]
    assert bytes(out.cloud.data) == bytes(res.cloud.data)
    assert [f.name for f in out.cloud.fields] == ["x", "y", "z", "rgb", "confidence"]
    first = struct.unpack_from("<5f", bytes(out.cloud.data), 0)
    assert first[:3] == (0.5, -1.25, 2.0) and first[4] == 0.75
    assert struct.unpack("<I", struct.pack("<f", first[3]))[0] == 0x00FF8000


def test_empty_segmentation_result_round_trip() -> None:
    res = SegmentationResult(query="a unicorn", found=False, message="no matching object")
    out = _round_trip(res)
    _assert_same(res, out)
    assert out.num_points == 0 and len(out.cloud.data) == 0 and not out.found


def test_segment_service_round_trip() -> None:
    req = Segment.Request(**_query_fields())
    _assert_same(req, _round_trip(req))
    resp = Segment.Response(success=True, message="done", result=_result())
    _assert_same(resp, _round_trip(resp))
    # "Node default" encodings survive the wire.
    nan_req = _round_trip(Segment.Request(query="q", num_views=0, score_threshold=float("nan")))
    assert nan_req.num_views == 0 and math.isnan(nan_req.score_threshold) and nan_req.target_frame == ""


@pytest.mark.parametrize("srv", [SaveMap, LoadMap], ids=["SaveMap", "LoadMap"])
def test_map_services_round_trip(srv: Any) -> None:
    req = srv.Request(directory="kitchen/2026-11-21")
    _assert_same(req, _round_trip(req))
    resp = srv.Response(success=False, message="permission denied: /tmp/maps")
    _assert_same(resp, _round_trip(resp))


def test_segment_query_action_round_trip() -> None:
    goal = SegmentQuery.Goal(**_query_fields())
    _assert_same(goal, _round_trip(goal))
    result = SegmentQuery.Result(success=True, message="", result=_result())
    _assert_same(result, _round_trip(result))
    feedback = SegmentQuery.Feedback(stage="segment_2d", views_done=3, views_total=12)
    _assert_same(feedback, _round_trip(feedback))


def test_segment_query_action_internal_types_round_trip() -> None:
    """The action's wire types (goal id + payload) depend on action_msgs / unique_identifier_msgs."""
    send_goal = SegmentQuery.Impl.SendGoalService.Request(goal=SegmentQuery.Goal(**_query_fields()))
    send_goal.goal_id.uuid = list(range(16))
    _assert_same(send_goal, _round_trip(send_goal))
    fb = SegmentQuery.Impl.FeedbackMessage(
        feedback=SegmentQuery.Feedback(stage="fusion", views_done=1, views_total=2)
    )
    fb.goal_id.uuid = [255] * 16
    _assert_same(fb, _round_trip(fb))
    get_result = SegmentQuery.Impl.GetResultService.Response(
        status=4, result=SegmentQuery.Result(success=True)
    )
    _assert_same(get_result, _round_trip(get_result))


# --- Development layout ---------------------------------------------------------------------------


@pytest.mark.skipif("REASONING_SEG_ROOT" not in os.environ, reason="only under scripts/env.sh")
def test_sources_are_imported_from_the_working_tree() -> None:
    """The package comes from src/ (edits apply without a rebuild); the interfaces from the colcon build."""
    root = Path(os.environ["REASONING_SEG_ROOT"]).resolve()
    assert Path(reasoning_seg.__file__).resolve().parent == root / "src" / "reasoning_seg"
    import reasoning_seg_msgs.msg as generated

    # --symlink-install: the install tree links into ros2_ws/build.
    assert (root / "ros2_ws").resolve() in Path(generated.__file__).resolve().parents
