"""Byte-level image rules of the sensor boundary (no ROS needed)."""

from __future__ import annotations

import array

import numpy as np
import pytest

from reasoning_seg.io.image_codec import (
    ENCODINGS,
    decode_image,
    depth_from_metres,
    depth_to_metres,
    encode_image,
    to_rgb8,
)

H, W = 5, 7


def _sample(encoding: str, rng: np.random.Generator) -> np.ndarray:
    info = ENCODINGS[encoding]
    shape = (H, W) if info.channels == 1 else (H, W, info.channels)
    dt = info.dtype.newbyteorder("=")
    if dt.kind == "f":
        return rng.uniform(0.1, 9.0, size=shape).astype(dt)
    lim = np.iinfo(dt)
    return rng.integers(lim.min, lim.max, size=shape, endpoint=True).astype(dt)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_round_trips(encoding: str) -> None:
    img = _sample(encoding, np.random.default_rng(0))
    data, step = encode_image(img, encoding)
    assert step == W * ENCODINGS[encoding].bytes_per_pixel
    assert len(data) == step * H
    out = decode_image(data, encoding, W, H, step, False)
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "16UC1", "32FC1", "mono8"])
def test_padded_step_is_skipped(encoding: str) -> None:
    img = _sample(encoding, np.random.default_rng(1))
    data, step = encode_image(img, encoding)
    pad = 13  # odd on purpose: rows of 16-bit / float pixels are then unaligned
    rows = [data[r * step : (r + 1) * step] + bytes([0xAB]) * pad for r in range(H)]
    out = decode_image(b"".join(rows), encoding, W, H, step + pad, False)
    np.testing.assert_array_equal(out, img)


def test_big_endian_16bit_and_float() -> None:
    depth = np.array([[1, 256, 65535], [1000, 0, 4660]], dtype=np.uint16)
    out = decode_image(depth.astype(">u2").tobytes(), "16UC1", 3, 2, 6, True)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, depth)
    f = np.array([[1.5, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(decode_image(f.astype(">f4").tobytes(), "32FC1", 2, 1, 8, True), f)
    # The flag is meaningless for 8-bit data and must not change it.
    rgb = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    np.testing.assert_array_equal(decode_image(rgb.tobytes(), "rgb8", 2, 1, 6, True), rgb)


def test_view_and_copy_rules() -> None:
    img = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    data, step = encode_image(img, "16UC1")
    # Immutable bytes: zero-copy, read-only.
    view = decode_image(data, "16UC1", W, H, step)
    assert not view.flags.writeable
    # Mutable buffer (rclpy messages hold array.array): copied by default, so later writes to the
    # buffer cannot leak into the decoded image.
    buf = array.array("B", data)
    safe = decode_image(buf, "16UC1", W, H, step)
    buf[0] = 0xFF
    assert safe[0, 0] == 0 and safe.flags.writeable
    # copy=False: the caller asked for a view; it must be read-only and really shared.
    shared = decode_image(buf, "16UC1", W, H, step, copy=False)
    assert not shared.flags.writeable
    buf[2] = 7
    assert shared[0, 1] == 7
    assert decode_image(data, "16UC1", W, H, step, copy=True).flags.writeable


def test_32fc1_invalid_values_become_zero() -> None:
    d = np.array([[np.nan, np.inf, -np.inf], [-1.0, 0.0, 2.5]], dtype=np.float32)
    data, step = encode_image(d, "32FC1")
    m = depth_to_metres(decode_image(data, "32FC1", 3, 2, step), "32FC1", depth_scale=123.0)
    np.testing.assert_array_equal(m, [[0, 0, 0], [0, 0, 2.5]])
    assert m.dtype == np.float32


def test_integer_depth_to_metres() -> None:
    mm = np.array([[0, 1000, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm, "16UC1"), [[0.0, 1.0, 65.535]], rtol=1e-6)
    np.testing.assert_allclose(depth_to_metres(mm, "mono16", depth_scale=5000.0), [[0.0, 0.2, 13.107]])
    signed = np.array([[-5, 0, 1500]], dtype=np.int16)
    np.testing.assert_allclose(depth_to_metres(signed, "16SC1"), [[0.0, 0.0, 1.5]])
    ro = np.frombuffer(mm.tobytes(), dtype=np.uint16).reshape(1, 3)
    out = depth_to_metres(ro, "16UC1")
    assert out.flags.writeable and not np.shares_memory(out, ro)


def test_depth_from_metres_round_trip_and_invalid() -> None:
    rng = np.random.default_rng(2)
    mm = rng.integers(1, 65535, size=(H, W)).astype(np.uint16)
    metres = depth_to_metres(mm, "16UC1")
    np.testing.assert_array_equal(depth_from_metres(metres, "16UC1"), mm)  # exact for real mm data
    d = np.array([[np.nan, -1.0, 70.0, 1.2344]])
    np.testing.assert_array_equal(depth_from_metres(d, "16UC1"), [[0, 0, 0, 1234]])
    f = depth_from_metres(d, "32FC1")
    assert f.dtype == np.float32 and np.isnan(f[0, :2]).all() and f[0, 2] == 70.0


def test_to_rgb8_channel_rules() -> None:
    rgb = np.random.default_rng(3).integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full((H, W, 1), 9, np.uint8)
    assert to_rgb8(rgb, "rgb8") is rgb
    np.testing.assert_array_equal(to_rgb8(bgr, "bgr8"), rgb)
    np.testing.assert_array_equal(to_rgb8(bgr, "8UC3"), rgb)  # cv_bridge rule: 8UC3 is BGR
    np.testing.assert_array_equal(to_rgb8(np.concatenate([rgb, alpha], 2), "rgba8"), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([bgr, alpha], 2), "bgra8"), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([bgr, alpha], 2), "8UC4"), rgb)
    grey = rgb[:, :, 0].copy()
    np.testing.assert_array_equal(to_rgb8(grey, "mono8"), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(to_rgb8(grey.astype(np.uint16) << 8, "mono16")[:, :, 1], grey)
    with pytest.raises(ValueError, match="no colour"):
        to_rgb8(np.zeros((H, W), np.float32), "32FC1")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((b"\0" * 12, "yuv422", 2, 2, 4, False), "unsupported image encoding"),
        ((b"\0" * 12, "rgb8", 2, 2, 5, False), "step 5 is shorter"),
        ((b"\0" * 11, "rgb8", 2, 2, 6, False), "expected step\\*height"),
        ((b"", "mono8", 0, 0, 0, False), "size must be positive"),
        ((b"\0" * 4, "mono8", 2, 0, 2, False), "size must be positive"),
        ((b"\0" * 6, "16UC1", 2, 2, 3, False), "shorter than one row"),
    ],
)
def test_decode_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_image(*args)


def test_encode_errors() -> None:
    with pytest.raises(ValueError, match="dtype uint16"):
        encode_image(np.ones((2, 2), np.float32), "16UC1")  # float metres published as mm: refused
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="positive"):
        encode_image(np.zeros((0, 3), np.uint8), "mono8")
    with pytest.raises(ValueError, match="unsupported"):
        encode_image(np.zeros((2, 2), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="not a depth encoding"):
        depth_to_metres(np.zeros((2, 2), np.uint8), "mono8")
