"""Raw image buffers <-> numpy arrays, for every encoding an RGB-D camera driver publishes.

This is the ROS-free half of the sensor boundary: ``sensor_msgs/Image`` carries ``data`` (bytes),
``encoding``, ``width``, ``height``, ``step`` (bytes per row, possibly padded) and
``is_bigendian``; the rclpy layer (:mod:`reasoning_seg.ros.conversions`) passes those fields here
unchanged, so all the byte-level rules live in one numpy-only module that is tested without ROS.

Rules (written here once so the rest of the package never re-derives them):

- Decoded arrays are (H, W) for one channel and (H, W, C) otherwise, always in native byte order.
- ``8UC3`` / ``8UC4`` are generic OpenCV matrices with no declared channel order; like cv_bridge we
  treat them as **BGR / BGRA** (OpenCV's native order) when a colour interpretation is needed
  (:func:`to_rgb8`). ``8UC1`` is treated as ``mono8``, ``16UC1`` as ``mono16`` / millimetre depth.
- Depth: ``16UC1`` / ``mono16`` / ``16SC1`` are integer units of ``1 / depth_scale`` metres
  (millimetres by ROS convention, REP-118); ``32FC1`` is already metres. In metres, anything that
  is not a finite positive reading becomes ``0.0``, the package-wide "no reading" value.
- Encoding always writes little-endian, tightly packed rows (``step = width * bytes_per_pixel``),
  so the message's ``is_bigendian`` must be ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ENCODINGS",
    "EncodingInfo",
    "decode_image",
    "depth_from_metres",
    "depth_to_metres",
    "encode_image",
    "encoding_info",
    "to_rgb8",
]


@dataclass(frozen=True)
class EncodingInfo:
    """Pixel layout of one encoding: numpy scalar type (little-endian) and channel count."""

    dtype: np.dtype
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes of one pixel (all channels)."""
        return self.dtype.itemsize * self.channels


def _info(dtype: str, channels: int) -> EncodingInfo:
    return EncodingInfo(np.dtype(dtype), channels)


#: Supported encodings. Names follow ``sensor_msgs/image_encodings.hpp``; the generic OpenCV-style
#: names (``8UC3`` ...) are included because depth and some colour drivers emit them.
ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": _info("u1", 3),
    "bgr8": _info("u1", 3),
    "rgba8": _info("u1", 4),
    "bgra8": _info("u1", 4),
    "mono8": _info("u1", 1),
    "mono16": _info("<u2", 1),
    "8UC1": _info("u1", 1),
    "8UC3": _info("u1", 3),
    "8UC4": _info("u1", 4),
    "16UC1": _info("<u2", 1),
    "16SC1": _info("<i2", 1),
    "32FC1": _info("<f4", 1),
}

_INT_DEPTH = {"16UC1", "mono16", "16SC1"}
_FLOAT_DEPTH = {"32FC1"}


def encoding_info(encoding: str) -> EncodingInfo:
    """Layout of ``encoding``; a clear ``ValueError`` (listing what is supported) otherwise."""
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        ) from None


def _is_immutable_buffer(data: object) -> bool:
    """True only for ``bytes``: the one buffer type whose contents nobody can change under us.

    A read-only ``memoryview`` does not qualify: the object it was taken from may still be
    writable by its owner.
    """
    return isinstance(data, bytes)


def decode_image(
    data: bytes | bytearray | memoryview,
    encoding: str,
    width: int,
    height: int,
    step: int,
    is_bigendian: bool = False,
    *,
    copy: bool | None = None,
) -> np.ndarray:
    """Interpret a raw image buffer as an (H, W) or (H, W, C) array in native byte order.

    ``copy`` decides whether the result may share memory with ``data``:

    - ``None`` (default): share only when ``data`` is an immutable ``bytes`` object; any other
      buffer (``bytearray``, ``array.array`` as in rclpy messages, memoryviews) is copied, so a
      later write to the caller's buffer cannot silently change the decoded image.
    - ``False``: share whenever the layout allows (the caller promises not to modify ``data``
      while the array is alive, e.g. a message owned by a subscription callback).
    - ``True``: always return a fresh array.

    Arrays that share memory are marked read-only, so accidental writes raise instead of
    corrupting the source message. Big-endian multi-byte data is always converted (a copy).

    Raises ``ValueError`` for an unsupported encoding, a non-positive size, a ``step`` shorter
    than one row of pixels, or fewer than ``step * height`` bytes. Extra trailing bytes are
    ignored.
    """
    info = encoding_info(encoding)
    width, height, step = int(width), int(height), int(step)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    row_bytes = width * info.bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f"step {step} is shorter than one row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    buf = memoryview(data).cast("B")
    if buf.nbytes < step * height:
        raise ValueError(
            f"image buffer has {buf.nbytes} bytes, expected step*height = {step}*{height} = {step * height}"
        )

    raw = np.frombuffer(buf, dtype=np.uint8, count=step * height).reshape(height, step)[:, :row_bytes]
    dtype = info.dtype.newbyteorder(">") if is_bigendian and info.dtype.itemsize > 1 else info.dtype
    try:
        arr = raw.view(dtype)
    except ValueError:  # odd step for a multi-byte type on an older numpy: fall back to a copy
        arr = np.ascontiguousarray(raw).view(dtype)
    arr = arr.reshape(height, width, info.channels) if info.channels > 1 else arr.reshape(height, width)

    shares = np.shares_memory(arr, raw)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    elif shares and (copy or (copy is None and not _is_immutable_buffer(data))):
        arr = arr.copy()
    if np.shares_memory(arr, raw):
        arr.flags.writeable = False
    return arr


def _check_array(array: np.ndarray, encoding: str) -> tuple[np.ndarray, EncodingInfo]:
    info = encoding_info(encoding)
    arr = np.asarray(array)
    expected_ndim = (2,) if info.channels == 1 else (3,)
    if info.channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in expected_ndim or (info.channels > 1 and arr.shape[2] != info.channels):
        want = "(H, W)" if info.channels == 1 else f"(H, W, {info.channels})"
        raise ValueError(f"{encoding} needs a {want} array, got shape {arr.shape}")
    if arr.dtype.newbyteorder("=") != info.dtype.newbyteorder("="):
        raise ValueError(
            f"{encoding} needs dtype {info.dtype.newbyteorder('=').name}, got {arr.dtype.name}; "
            "convert explicitly (e.g. depth_from_metres) so no value is silently truncated"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image size must be positive, got shape {arr.shape}")
    return arr, info


def encode_image(array: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Serialise ``array`` to tightly packed little-endian rows; returns ``(data, step)``.

    The dtype must already match the encoding (uint8 for 8-bit, uint16 for ``16UC1``/``mono16``,
    int16 for ``16SC1``, float32 for ``32FC1``): converting here would hide unit mistakes such as
    publishing float metres as ``16UC1``. Set ``is_bigendian = False`` on the message.
    """
    arr, info = _check_array(array, encoding)
    data = np.ascontiguousarray(arr, dtype=info.dtype).tobytes()
    return data, arr.shape[1] * info.bytes_per_pixel


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB view of a colour or grey image, for display and the reasoning model.

    BGR-ordered encodings (``bgr8``, ``bgra8``, and ``8UC3`` / ``8UC4`` by the cv_bridge rule) are
    reordered; alpha is dropped; grey is replicated; 16-bit grey keeps its high byte. ``rgb8``
    input is returned as is (no copy). Depth-like ``32FC1`` / ``16SC1`` raise ``ValueError``:
    there is no colour meaning to recover, use :func:`depth_to_metres`.
    """
    arr, _ = _check_array(array, encoding)
    if encoding == "rgb8":
        return arr
    if encoding in ("bgr8", "8UC3"):
        return np.ascontiguousarray(arr[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(arr[:, :, :3])
    if encoding in ("bgra8", "8UC4"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if encoding in ("mono8", "8UC1"):
        return np.repeat(arr[:, :, None], 3, axis=2)
    if encoding in ("mono16", "16UC1"):
        return np.repeat((arr >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    raise ValueError(f"{encoding} images carry no colour; use depth_to_metres for depth")


def depth_to_metres(array: np.ndarray, encoding: str, depth_scale: float = 1000.0) -> np.ndarray:
    """Float32 metres from a depth image, with every non-reading set to ``0.0``.

    Integer encodings are divided by ``depth_scale`` (units per metre: 1000 for the ROS millimetre
    convention); ``32FC1`` is already metres and ``depth_scale`` is ignored. NaN, +/-inf, zero and
    negative values all become ``0.0`` so downstream code tests a single condition. Always
    returns a new array (never a view of the message buffer).
    """
    if encoding not in _INT_DEPTH | _FLOAT_DEPTH:
        raise ValueError(
            f"{encoding!r} is not a depth encoding; expected one of {sorted(_INT_DEPTH | _FLOAT_DEPTH)}"
        )
    arr, _ = _check_array(array, encoding)
    if encoding in _INT_DEPTH:
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise ValueError(f"depth_scale must be finite and positive, got {depth_scale}")
        out = arr.astype(np.float32) / np.float32(depth_scale)
    else:
        out = arr.astype(np.float32, copy=True)
    out[~(np.isfinite(out) & (out > 0))] = 0.0
    return out


def depth_from_metres(
    depth_m: np.ndarray, encoding: str = "16UC1", depth_scale: float = 1000.0
) -> np.ndarray:
    """Depth in metres -> an array ready for :func:`encode_image` with ``encoding``.

    ``16UC1`` / ``mono16``: rounded to ``1 / depth_scale`` m units; non-readings and depths that do
    not fit in 16 bits become 0 (an invalid value is better than a wrong clipped one).
    ``32FC1``: float32 metres with non-readings as NaN, as REP-118 asks for float depth (our own
    decoder maps NaN back to 0).
    """
    d = np.asarray(depth_m, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    if encoding in ("16UC1", "mono16"):
        if not (np.isfinite(depth_scale) and depth_scale > 0):
            raise ValueError(f"depth_scale must be finite and positive, got {depth_scale}")
        units = np.zeros(d.shape, dtype=np.float64)
        units[valid] = np.rint(d[valid] * depth_scale)
        units[units > np.iinfo(np.uint16).max] = 0
        return units.astype(np.uint16)
    if encoding == "32FC1":
        out = d.astype(np.float32)
        out[~valid] = np.nan
        return out
    raise ValueError(f"cannot write depth as {encoding!r}; use 16UC1, mono16 or 32FC1")
