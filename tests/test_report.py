"""The report's pictures and page: hand-built geometry, hand-built answers, and a real browser."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium, headless
from reasoning_seg.camera import CameraIntrinsics
from reasoning_seg.query.result import OrientedBox, ViewImage
from reasoning_seg.report.figure import ViewPanel, query_figure, view_tile
from reasoning_seg.report.page import ReportEntry, explain_answer, write_report
from reasoning_seg.report.render import PinholeView, cutaway, look_at, render_points, room_view

INTR = CameraIntrinsics(64, 48, 60.0, 50.0, 30.0, 25.0)


def _room(step: float = 0.1) -> np.ndarray:
    """A 4 x 3 x 2.5 m box room: floor, ceiling and four walls as points ``step`` apart."""
    xs, ys, zs = np.arange(0, 4.01, step), np.arange(0, 3.01, step), np.arange(0, 2.51, step)
    faces = []
    for z in (0.0, 2.5):
        faces.append(np.array([(x, y, z) for x in xs for y in ys]))
    for x in (0.0, 4.0):
        faces.append(np.array([(x, y, z) for y in ys for z in zs]))
    for y in (0.0, 3.0):
        faces.append(np.array([(x, y, z) for x in xs for z in zs]))
    return np.vstack(faces)


def test_look_at_puts_the_target_in_the_centre_and_up_on_top() -> None:
    view = PinholeView(look_at(np.array([3.0, -2.0, 4.0]), np.array([1.0, 1.0, 0.5])), 100.0, 201, 101)
    u, v, z = view.project(np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 1.5]]))
    assert u[0] == pytest.approx(100.0, abs=1e-6) and v[0] == pytest.approx(50.0, abs=1e-6)
    assert z[0] == pytest.approx(np.linalg.norm([2.0, -3.0, 3.5]), rel=1e-9)
    assert v[1] < v[0] - 5  # a point above the target is drawn higher on screen


def test_the_nearer_point_wins_its_pixel_whatever_the_input_order() -> None:
    view = PinholeView(look_at(np.zeros(3), np.array([1.0, 0.0, 0.0])), 50.0, 41, 41)
    near, far = [2.0, 0.0, 0.0], [5.0, 0.0, 0.0]
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    for order in ([near, far], [far, near]):
        cols = [red, blue] if order[0] == near else [blue, red]
        img = render_points(view, np.array(order), np.array(cols), voxel=0.01)
        centre = img[20, 20].astype(int)
        assert centre[0] > 2 * centre[2], (order, centre)  # red (the near point), shaded or not


def test_the_cut_away_drops_ceiling_and_near_walls_and_keeps_the_target() -> None:
    pts = _room()
    target = np.zeros(len(pts), bool)
    in_near_wall = np.flatnonzero((pts[:, 0] == 4.0) & (pts[:, 2] > 1.0))[:5]
    target[in_near_wall] = True
    draw, floor = cutaway(pts, target, toward_viewer=np.array([1.0, 1.0, 1.0]))
    z = pts[:, 2]
    assert not draw[(z == 2.5) & ~target].any()  # ceiling
    assert not draw[(pts[:, 0] == 4.0) & (z > 0.1) & ~target].any()  # near walls (x = 4, y = 3)
    assert not draw[(pts[:, 1] == 3.0) & (z > 0.1) & ~target].any()
    # The far walls stay, except where they meet a near wall's band.
    assert draw[(pts[:, 0] == 0.0) & (pts[:, 1] < 2.65) & (z > 0.1) & (z < 2.0)].all()
    assert draw[(pts[:, 1] == 0.0) & (pts[:, 0] < 3.65) & (z > 0.1) & (z < 2.0)].all()
    assert draw[target].all() and not floor[target].any()
    np.testing.assert_array_equal(floor, (z < 0.05) & ~target)


def test_the_room_view_sees_the_whole_room() -> None:
    pts = _room()
    view = room_view(pts, focus=np.array([3.5, 2.5, 0.5]), width=320, height=200)
    u, v, z = view.project(pts)
    assert np.all(z > 0) and u.min() >= 0 and u.max() <= 319 and v.min() >= 0 and v.max() <= 199
    # On the focus's side: the camera stands beyond the x = 4, y = 3 corner, above the room.
    eye = view.T_world_cam[:3, 3]
    assert eye[0] > 2.0 and eye[1] > 1.5 and eye[2] > 2.5


def _view(mask_rows: slice) -> ViewImage:
    color = np.full((48, 64, 3), 200, np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[mask_rows, 10:50] = True
    return ViewImage(7, color, mask, look_at(np.array([4.0, 3.0, 1.5]), np.array([2.0, 1.5, 0.5])), INTR)


def test_a_view_tile_tints_the_mask_by_whether_fusion_used_it() -> None:
    used = np.asarray(view_tile(ViewPanel(_view(slice(0, 24)), 0.6, 0.9, "", "Sure, [SEG]."), 1, width=64))
    dropped = np.asarray(
        view_tile(ViewPanel(_view(slice(0, 24)), 0.0, 0.2, "low confidence", ""), 2, width=64)
    )
    inside, outside = (14, 30), (40, 30)  # (row, col) inside the mask, below it
    assert used[inside][1] > used[inside][0] + 40  # green
    assert dropped[inside][0] > dropped[inside][1] + 40  # red
    assert tuple(used[outside]) == (200, 200, 200) == tuple(dropped[outside])


def test_query_figure_writes_map_and_one_tile_per_view(tmp_path: Path) -> None:
    pts = _room()
    target = np.zeros(len(pts), bool)
    target[:40] = True
    box = OrientedBox(pts[:40].mean(0), np.eye(3), np.ptp(pts[:40], axis=0) + 0.05)
    panels = [
        ViewPanel(_view(slice(5, 20)), 0.5, 0.8, "", "it"),
        ViewPanel(_view(slice(0, 1)), 0.0, 0.1, "x", ""),
    ]
    path = query_figure(
        tmp_path / "q.png", "a query", pts, np.full((len(pts), 3), 0.5), target, box, 0.9, 0.1, panels
    )
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape[1] == 960 + 2 * (300 + 8) + 8
    left = img[40:, :960]
    # The target is tinted orange somewhere in the map panel; grey map points are there too.
    orange = (left[..., 0] > 100) & (left[..., 0] > 1.5 * left[..., 1]) & (left[..., 0] > 2 * left[..., 2])
    assert orange.sum() > 20


def test_explain_answer_names_what_went_wrong() -> None:
    names = {1: "white shelf", 2: "grey bin", 3: "brown door"}
    assert explain_answer(True, "found", np.array([2] * 95 + [0] * 5), 2, 100, names) == ""
    wrong = explain_answer(True, "found", np.array([3] * 80 + [2] * 20), 2, 100, names)
    assert (
        "wrong object" in wrong
        and "80%" in wrong
        and "'brown door'" in wrong
        and "20% on 'grey bin'" in wrong
    )
    assert "covers 30%" in explain_answer(True, "found", np.array([2] * 30), 2, 100, names)
    missing = explain_answer(False, "not found: every view was filtered out", np.zeros(0), 2, 100, names)
    assert "is in the map (100 voxels)" in missing and "every view was filtered out" in missing
    assert "not in the map" in explain_answer(False, "not found", np.zeros(0), 2, 0, names)


def _report(tmp_path: Path, broken_picture: bool = False) -> Path:
    picture = tmp_path / "p.png"
    Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))).save(picture)
    if broken_picture:
        picture.write_bytes(picture.read_bytes()[:40])
    entries = [
        ReportEntry(
            "the <b>bin</b> & more",
            True,
            "found 12 points",
            12,
            0.8,
            "Sure",
            "spatial",
            0.9,
            "",
            "",
            {"fusion": 0.1},
            picture,
        ),
        ReportEntry(
            "the dragon",
            False,
            "not found: every view was filtered out",
            why="not in the map",
            picture=picture,
        ),
    ]
    return write_report(tmp_path / "index.html", "demo", entries, {"seed": 3}, "intro")


def test_the_page_escapes_text_and_inlines_its_pictures(tmp_path: Path) -> None:
    page = _report(tmp_path).read_text(encoding="utf-8")
    assert "the &lt;b&gt;bin&lt;/b&gt; &amp; more" in page and "<b>bin</b>" not in page
    assert page.count("src='data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=['\"](https?:|//)", page)  # nothing from the network
    assert "class='bad'" not in page and "class='ok'>right" in page and "class='none'>not found" in page


@pytest.mark.skipif(
    chromium() is None, reason="no Chromium (scripts/setup.sh installs Debian's where apt works)"
)
@pytest.mark.parametrize("broken", [False, True], ids=["page", "broken-picture"])
def test_the_page_renders_in_headless_chromium(tmp_path: Path, broken: bool) -> None:
    browser = chromium()
    page = _report(tmp_path, broken_picture=broken)
    dom = headless(browser, page.as_uri(), "--dump-dom")
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, dom.stdout[-2000:] + dom.stderr[-2000:]  # the page's script ran
    ok, total = map(int, loaded.groups())
    assert total == 2 and (ok == 0 if broken else ok == 2)
    assert "CONSOLE" not in dom.stderr, [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    if not broken:
        shot = tmp_path / "shot.png"
        headless(browser, page.as_uri(), f"--screenshot={shot}", "--window-size=1200,900")
        img = np.asarray(Image.open(shot).convert("L"))
        assert img.shape == (900, 1200) and img.std() > 10  # text, tables and pictures, not a blank page
