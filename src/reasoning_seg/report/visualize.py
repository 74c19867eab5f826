"""Pictures a person can check at a glance: the map from above and from the side, target in red.

Pure numpy + Pillow (no display, no OpenGL), so it works in CI and on headless robots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reasoning_seg.query.result import OrientedBox

Overlay = tuple[np.ndarray, tuple[int, int, int]]
"""Points drawn over the map in one colour (e.g. the target in red)."""

TARGET_RED = (255, 40, 40)


def _panel(
    pts: np.ndarray,
    cols: np.ndarray,
    overlays: list[Overlay],
    box: OrientedBox | None,
    axes: tuple[int, int],
    lo: np.ndarray,
    scale: float,
    size: tuple[int, int],
    title: str,
) -> Image.Image:
    w, h = size
    img = np.full((h, w, 3), 30, dtype=np.uint8)

    def to_px(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = ((p[:, axes[0]] - lo[0]) * scale).astype(int) + 10
        y = h - 10 - ((p[:, axes[1]] - lo[1]) * scale).astype(int)
        return np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)

    if len(pts):
        # Paint far-to-near along the hidden axis so nearer surfaces win.
        hidden = 3 - axes[0] - axes[1]
        order = np.argsort(pts[:, hidden] if hidden == 2 else -pts[:, hidden])
        x, y = to_px(pts[order])
        img[y, x] = (np.clip(cols[order], 0, 1) * 255).astype(np.uint8)
    for points, rgb in overlays:
        if not len(points):
            continue
        x, y = to_px(np.asarray(points).reshape(-1, 3))
        for dx in (0, 1):
            for dy in (0, 1):
                img[np.clip(y + dy, 0, h - 1), np.clip(x + dx, 0, w - 1)] = rgb
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    if box is not None and np.any(box.size > 0):
        c = box.corners()
        x, y = to_px(c)
        edges = [
            (0, 1),
            (0, 2),
            (1, 3),
            (2, 3),
            (4, 5),
            (4, 6),
            (5, 7),
            (6, 7),
            (0, 4),
            (1, 5),
            (2, 6),
            (3, 7),
        ]
        for i, j in edges:
            draw.line([(x[i], y[i]), (x[j], y[j])], fill=(255, 220, 0), width=2)
    draw.text((8, 6), title, fill=(255, 255, 255))
    return pil


def render_map_picture(
    path: str | Path,
    map_points: np.ndarray,
    map_colors: np.ndarray,
    target_points: np.ndarray,
    box: OrientedBox | None,
    title: str,
    width: int = 900,
) -> None:
    """Write a PNG with a top view (x-y) and a side view (x-z) of the map, target in red, box in yellow."""
    render_overlay_picture(path, map_points, map_colors, [(target_points, TARGET_RED)], box, title, width)


def render_comparison_picture(
    path: str | Path,
    map_points: np.ndarray,
    map_colors: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    title: str,
    width: int = 900,
) -> None:
    """Prediction against ground truth (point masks over ``map_points``): why a query failed, at a glance.

    Green: true target points that were missed; red: predicted points that are not the target;
    yellow: correctly predicted target points.
    """
    pts = np.asarray(map_points, dtype=np.float64)
    pred, gt = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    overlays: list[Overlay] = [
        (pts[gt & ~pred], (40, 220, 60)),
        (pts[pred & ~gt], TARGET_RED),
        (pts[pred & gt], (255, 220, 0)),
    ]
    render_overlay_picture(path, pts, map_colors, overlays, None, title, width)


def render_overlay_picture(
    path: str | Path,
    map_points: np.ndarray,
    map_colors: np.ndarray,
    overlays: list[Overlay],
    box: OrientedBox | None,
    title: str,
    width: int = 900,
) -> None:
    """Top view (x-y) and side view (x-z) of the map with coloured point overlays and an optional box."""
    pts = np.asarray(map_points, dtype=np.float64)
    extra = [np.asarray(o[0]).reshape(-1, 3) for o in overlays]
    allp = np.vstack([pts, *extra]) if len(pts) else np.zeros((1, 3))
    lo, hi = allp.min(0), allp.max(0)
    span = np.maximum(hi - lo, 1e-3)
    scale = (width - 20) / span[0]
    top_h = int(span[1] * scale) + 20
    side_h = int(span[2] * scale) + 20
    top = _panel(
        pts, map_colors, overlays, box, (0, 1), lo[[0, 1]], scale, (width, top_h), f"top view: {title}"
    )
    side = _panel(pts, map_colors, overlays, box, (0, 2), lo[[0, 2]], scale, (width, side_h), "side view")
    out = Image.new("RGB", (width, top_h + side_h + 4), (0, 0, 0))
    out.paste(top, (0, 0))
    out.paste(side, (0, top_h + 4))
    out.save(path)
