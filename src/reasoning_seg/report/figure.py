"""One picture per query: the room with the target, and what the 2D model saw in each view.

Left, the cut-away map render (:mod:`.render`) with the target tinted, its box and confidence,
and a numbered frustum for every view the 2D model answered. Right, those views: the keyframe
image with the model's mask, its fusion weight, whether fusion used or filtered it and why, and
the model's answer text. The numbers match, so "the model masked the door in view 2" can be seen.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.query.result import OrientedBox, ViewImage
from reasoning_seg.report.render import PinholeView, cutaway, render_points, room_view, shade_only

_BOX_EDGES = ((0, 1), (0, 2), (1, 3), (2, 3), (4, 5), (4, 6), (5, 7), (6, 7), (0, 4), (1, 5), (2, 6), (3, 7))
USED = (20, 160, 90)
FILTERED = (200, 60, 60)
INK = (30, 30, 30)
BOX_COLOUR = (230, 150, 0)


@dataclass(frozen=True)
class ViewPanel:
    """One view of a query as the figure shows it."""

    image: ViewImage
    weight: float
    confidence: float
    filtered: str  # "" when the view voted
    answer: str


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _frustum(view: PinholeView, T: np.ndarray, intr: CameraIntrinsics, depth: float) -> np.ndarray:
    """(5, 2) screen points: the camera centre and the four image corners at ``depth`` metres."""
    w, h = intr.width, intr.height
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    rays = np.c_[(corners[:, 0] - intr.cx) / intr.fx, (corners[:, 1] - intr.cy) / intr.fy, np.ones(4)] * depth
    pts = np.vstack([T[:3, 3], rays @ T[:3, :3].T + T[:3, 3]])
    u, v, z = view.project(pts)
    return np.c_[u, v] if np.all(z > 0.05) else np.zeros((0, 2))


def map_panel(
    map_points: np.ndarray,
    map_colors: np.ndarray,
    target: np.ndarray,
    box: OrientedBox | None,
    label: str,
    voxel: float,
    panels: Sequence[ViewPanel] = (),
    size: tuple[int, int] = (960, 640),
) -> Image.Image:
    """The cut-away render with the target (``target``: (N,) bool over ``map_points``) and its box."""
    pts = np.asarray(map_points, np.float64).reshape(-1, 3)
    target = np.asarray(target, bool)
    focus = pts[target].mean(0) if target.any() else None
    view = room_view(pts, focus, *size)
    toward_viewer = view.T_world_cam[:3, 3] - np.median(pts, axis=0) if len(pts) else np.ones(3)
    draw, floor = cutaway(pts, target, toward_viewer)
    img = render_points(view, pts[draw], np.asarray(map_colors)[draw], voxel, target[draw], floor[draw])
    pil = Image.fromarray(img)
    pen = ImageDraw.Draw(pil)
    for i, p in enumerate(panels, 1):
        fr = _frustum(view, p.image.T_world_cam, p.image.intrinsics, 0.45)
        if not len(fr):
            continue
        colour = USED if not p.filtered else FILTERED
        for k in range(1, 5):
            pen.line([tuple(fr[0]), tuple(fr[k])], fill=colour, width=2)
            pen.line([tuple(fr[k]), tuple(fr[k % 4 + 1])], fill=colour, width=2)
        pen.text(tuple(fr[0] + [4, -18]), str(i), fill=colour, font=_font(16))
    if box is not None and np.any(box.size > 0):
        u, v, z = view.project(box.corners())
        if np.all(z > 0.05):
            for a, b in _BOX_EDGES:
                pen.line([(u[a], v[a]), (u[b], v[b])], fill=BOX_COLOUR, width=3)
            top = int(np.argmin(v))
            pen.text(
                (u[top] + 6, v[top] - 24),
                label,
                fill=INK,
                font=_font(18),
                stroke_width=3,
                stroke_fill="white",
            )
    return pil


def view_tile(panel: ViewPanel, number: int, width: int = 300) -> Image.Image:
    """The keyframe image with the mask tinted and outlined, and three lines of caption."""
    color = np.asarray(panel.image.color, np.uint8)
    mask = np.asarray(panel.image.mask, bool)
    tint = np.array(USED if not panel.filtered else FILTERED, np.float32)
    shown = color.astype(np.float32)
    shown[mask] = 0.45 * shown[mask] + 0.55 * tint
    edge = mask & ~(
        np.pad(mask, 1, mode="edge")[:-2, 1:-1]
        & np.pad(mask, 1, mode="edge")[2:, 1:-1]
        & np.pad(mask, 1, mode="edge")[1:-1, :-2]
        & np.pad(mask, 1, mode="edge")[1:-1, 2:]
    )
    shown[edge] = tint
    h = int(round(color.shape[0] * width / color.shape[1]))
    thumb = Image.fromarray(shown.astype(np.uint8)).resize((width, h), Image.Resampling.BILINEAR)
    caption = 62
    tile = Image.new("RGB", (width, h + caption), "white")
    tile.paste(thumb, (0, 0))
    pen = ImageDraw.Draw(tile)
    rgb = tuple(int(c) for c in tint)
    pen.rectangle([0, 0, 26, 22], fill=rgb)
    pen.text((7, 3), str(number), fill="white", font=_font(15))
    status = "used" if not panel.filtered else f"filtered: {panel.filtered}"
    line1 = f"keyframe {panel.image.keyframe_id} · weight {panel.weight:.2f} · conf {panel.confidence:.2f}"
    pen.text((4, h + 3), line1, fill=INK, font=_font(13))
    pen.text((4, h + 21), textwrap.shorten(status, 46), fill=rgb, font=_font(13))
    answer = textwrap.shorten(f'model: "{panel.answer}"', 46) if panel.answer else "model: (no text)"
    pen.text((4, h + 39), answer, fill=(90, 90, 90), font=_font(13))
    return tile


def query_figure(
    path: str | Path,
    title: str,
    map_points: np.ndarray,
    map_colors: np.ndarray,
    target: np.ndarray,
    box: OrientedBox | None,
    confidence: float,
    voxel: float,
    panels: Sequence[ViewPanel] = (),
) -> Path:
    """Write the query's picture (PNG): title, map panel on the left, view tiles in two columns."""
    tiles = [view_tile(p, i) for i, p in enumerate(panels, 1)]
    tw, th = tiles[0].size if tiles else (0, 0)
    cols = 2 if tiles else 0
    rows = -(-len(tiles) // 2) if tiles else 0
    label = f"target · conf {confidence:.2f}"
    size = (960, max(640, rows * (th + 8) - 8))
    left = map_panel(map_points, map_colors, target, box, label, voxel, panels, size)
    head = 40
    width = left.width + cols * (tw + 8) + (8 if tiles else 0)
    height = head + max(left.height, rows * (th + 8))
    fig = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(fig)
    pen.text((10, 9), textwrap.shorten(title, 150), fill=INK, font=_font(20))
    fig.paste(left, (0, head))
    for k, tile in enumerate(tiles):
        fig.paste(tile, (left.width + 8 + (k % 2) * (tw + 8), head + (k // 2) * (th + 8)))
    path = Path(path)
    fig.save(path)
    return path


MISSED = np.array([40, 200, 70]) / 255.0
WRONG = np.array([230, 40, 40]) / 255.0
RIGHT = np.array([250, 200, 0]) / 255.0


def comparison_figure(
    path: str | Path,
    title: str,
    map_points: np.ndarray,
    map_colors: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    voxel: float,
    size: tuple[int, int] = (960, 640),
) -> Path:
    """Answer against ground truth on the cut-away map: why a benchmark query failed, at a glance.

    Green: target points the answer missed; red: answer points not on the target; yellow: both.
    """
    pts = np.asarray(map_points, np.float64).reshape(-1, 3)
    pred, gt = np.asarray(predicted, bool), np.asarray(truth, bool)
    cols = np.array(map_colors, np.float32, copy=True).reshape(-1, 3)
    cols[gt & ~pred], cols[pred & ~gt], cols[pred & gt] = MISSED, WRONG, RIGHT
    marked = pred | gt
    view = room_view(pts, pts[marked].mean(0) if marked.any() else None, *size)
    toward_viewer = view.T_world_cam[:3, 3] - np.median(pts, axis=0) if len(pts) else np.ones(3)
    draw, floor = cutaway(pts, marked, toward_viewer)
    img = shade_only(view, pts[draw], cols[draw], voxel, floor[draw])
    fig = Image.new("RGB", (size[0], size[1] + 40), "white")
    ImageDraw.Draw(fig).text((10, 9), textwrap.shorten(title, 110), fill=INK, font=_font(18))
    fig.paste(Image.fromarray(img), (0, 40))
    path = Path(path)
    fig.save(path)
    return path
