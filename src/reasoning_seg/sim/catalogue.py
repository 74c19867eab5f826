"""The object catalogue of the simulated room: categories, their box geometry, colours and uses.

Why a separate module: the scene generator, the query generator and the simulated 2D model all
need the same facts about a category (what it looks like, what it is for, where its front is),
and keeping them in one table makes it impossible for, say, the renderer and the "on the left of"
relation to disagree about which side of a monitor is its screen.

Conventions every part builder follows (tests check them):

- A builder maps an :class:`~reasoning_seg.sim.objects.ObjectSpec` to boxes in the object's local
  frame, centred on the object's bounding box and never leaving it.
- The object's **front is its local +y** (a chair's seat front, a sofa's seat, a monitor's screen,
  a shelf's open side, a cabinet's doors, a laptop's keyboard side, a printer's paper output);
  the back is -y. For a person standing in front of the object and facing it, local +x is on
  their *left*. :data:`FRONT_CATEGORIES` lists the categories whose geometry really has such a
  front (a cup or a bin looks the same from every side).
- Nothing here is random: the same spec always gives the same boxes, so a scene file that stores
  only specs re-renders identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the builders only read .size / .color of the spec; no import cycle at runtime
    from reasoning_seg.sim.objects import ObjectSpec

__all__ = [
    "ABSENT_OBJECTS",
    "AFFORDANCE_CLAUSES",
    "AFFORDANCE_PHRASES",
    "CATEGORY_AFFORDANCES",
    "CATEGORY_COLORS",
    "COLOR_PALETTE",
    "FRONT_CATEGORIES",
    "PART_BUILDERS",
    "STRUCTURE_CATEGORIES",
    "SURROUNDING_CATEGORIES",
    "BoxPart",
    "PartBuilder",
    "object_parts",
    "shelf_board_tops",
]

#: Categories that make up the room shell rather than furniture; they are rendered and labelled
#: like everything else, but are not "furnished objects" (door and window can still be targets).
STRUCTURE_CATEGORIES = frozenset({"floor", "ceiling", "wall", "door", "window"})

#: Shell parts that surround everything: never "on the left of" anything, never a nameless target.
SURROUNDING_CATEGORIES = frozenset({"floor", "ceiling", "wall"})

#: Categories whose geometry has a well-defined front at local +y (see the module docstring).
#: Tables are not listed: a table has a front only when it stands with its back to a wall (a desk),
#: which depends on the room, so :meth:`SyntheticScene.facing` decides that case.
FRONT_CATEGORIES = frozenset(
    {"chair", "sofa", "shelf", "cabinet", "monitor", "laptop", "keyboard", "printer", "door", "window"}
)

COLOR_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (190, 40, 40),
    "blue": (40, 80, 180),
    "green": (50, 140, 60),
    "yellow": (225, 190, 50),
    "orange": (225, 120, 35),
    "white": (235, 235, 228),
    "black": (38, 38, 40),
    "grey": (125, 125, 128),
    "brown": (115, 78, 48),
    "beige": (205, 185, 150),
    "light blue": (170, 200, 225),
    "off-white": (222, 218, 208),
    "taupe": (150, 138, 122),
}

#: Colour names a category is drawn from (the generator picks one per object).
CATEGORY_COLORS: dict[str, tuple[str, ...]] = {
    "table": ("brown", "white", "beige", "black"),
    "chair": ("red", "blue", "green", "yellow", "orange", "black"),
    "sofa": ("blue", "grey", "beige", "green"),
    "bin": ("grey", "black"),
    "shelf": ("brown", "white"),
    "cabinet": ("brown", "white", "grey"),
    "monitor": ("black",),
    "keyboard": ("black", "white", "grey"),
    "laptop": ("grey", "black", "white"),
    "printer": ("white", "grey", "black"),
    "cup": ("red", "white", "yellow", "blue"),
    "book": ("red", "blue", "green", "yellow", "black", "orange"),
    "scissors": ("red", "black", "orange", "blue"),
    "lamp": ("white", "black"),
    "plant": ("green",),
    "door": ("brown", "grey"),  # not white: it must stand out against the off-white walls
    "window": ("light blue",),
    "wall": ("off-white",),
    "floor": ("taupe",),
    "ceiling": ("white",),
}

CATEGORY_AFFORDANCES: dict[str, tuple[str, ...]] = {
    "table": ("put a cup on", "work at"),
    "chair": ("sit on",),
    "sofa": ("sit on", "lie down on"),
    "bin": ("throw away",),
    "shelf": ("store in",),
    "cabinet": ("store in",),
    "monitor": ("watch a video on",),
    "keyboard": ("type on",),
    "laptop": ("type on", "browse the web on"),
    "printer": ("print",),
    "cup": ("drink from",),
    "book": ("read",),
    "scissors": ("cut with",),
    "lamp": ("read by",),
    "plant": ("water",),
    "door": ("leave through",),
    "window": ("look outside through",),
}

#: How an implicit request for an affordance is phrased in a query.
AFFORDANCE_PHRASES: dict[str, str] = {
    "throw away": "somewhere to throw away this wrapper",
    "sit on": "somewhere I can sit down",
    "lie down on": "somewhere I can lie down for a nap",
    "put a cup on": "somewhere to put my cup down",
    "work at": "somewhere I can work on my laptop",
    "store in": "somewhere to store these books",
    "watch a video on": "something to watch a video on",
    "type on": "something I can type an email on",
    "browse the web on": "something I can browse the web on",
    "print": "something that can print this document",
    "drink from": "something I can drink my coffee from",
    "read": "something to read while I wait",
    "cut with": "something I can use to cut this paper",
    "read by": "something that gives light to read by",
    "water": "something that needs watering",
    "leave through": "the way out of this room",
    "look outside through": "somewhere to look outside",
    # uses of objects that are never in a generated room (for "absent" queries)
    "keep food cold": "somewhere to keep my milk cold",
    "heat food in": "something to heat up my lunch in",
    "take a bath in": "somewhere I can take a bath",
    "wash clothes in": "something to wash my clothes in",
    "bake in": "something to bake a cake in",
    "ride": "something I can ride to work",
}

#: Relative clauses for queries that do not name the target ("the object ... that you can sit on").
AFFORDANCE_CLAUSES: dict[str, str] = {
    "throw away": "that you can throw rubbish into",
    "sit on": "that you can sit on",
    "lie down on": "that you can lie down on",
    "put a cup on": "that you can put a cup on",
    "work at": "that you can work at",
    "store in": "that you can store things in",
    "watch a video on": "that you can watch a video on",
    "type on": "that you can type on",
    "browse the web on": "that you can browse the web on",
    "print": "that can print a document",
    "drink from": "that you can drink from",
    "read": "that you can read",
    "cut with": "that can cut paper",
    "read by": "that gives light to read by",
    "water": "that needs watering",
    "leave through": "that you can leave the room through",
    "look outside through": "that you can look outside through",
}

#: Plausible indoor objects that the generator never places, with the use a person would ask for
#: (``None``: asked for by name only). Synonyms of catalogue categories (couch, desk, bookcase,
#: trash can, screen, ...) are deliberately *not* here: asking for "the couch" in a room with a
#: sofa has an answer, so it would be a dishonest "absent" query.
ABSENT_OBJECTS: dict[str, str | None] = {
    "piano": None,
    "fridge": "keep food cold",
    "microwave": "heat food in",
    "bathtub": "take a bath in",
    "washing machine": "wash clothes in",
    "oven": "bake in",
    "bicycle": "ride",
    "guitar": None,
    "fish tank": None,
    "fireplace": None,
    "coat rack": None,
    "vacuum cleaner": None,
}


# ---------------------------------------------------------------------------------------------
# Part builders: ObjectSpec -> boxes in the object's local frame (centred on the bounding box)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxPart:
    """An axis-aligned box in its object's local frame (before the object's yaw)."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    color: tuple[int, int, int]


PartBuilder = Callable[["ObjectSpec"], list[BoxPart]]

_METAL = COLOR_PALETTE["grey"]
_PAGES = (236, 232, 218)
_SCREEN = (22, 26, 34)


def _shade(color: Sequence[int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in color)  # type: ignore[return-value]


def _part(x: float, y: float, z: float, sx: float, sy: float, sz: float, color: Sequence[int]) -> BoxPart:
    return BoxPart((x, y, z), (sx, sy, sz), tuple(int(c) for c in color))  # type: ignore[arg-type]


def _single_box(o: ObjectSpec) -> list[BoxPart]:
    return [_part(0.0, 0.0, 0.0, *o.size, o.color)]


def _table_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    top_t, leg = 0.04, 0.05
    z0 = -sz / 2
    parts = [_part(0.0, 0.0, sz / 2 - top_t / 2, sx, sy, top_t, o.color)]
    leg_h = sz - top_t
    legc = _shade(o.color, 0.7)
    for ix in (-1, 1):
        for iy in (-1, 1):
            parts.append(
                _part(
                    ix * (sx / 2 - leg / 2 - 0.03),
                    iy * (sy / 2 - leg / 2 - 0.03),
                    z0 + leg_h / 2,
                    leg,
                    leg,
                    leg_h,
                    legc,
                )
            )
    return parts


def _chair_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    seat_h, seat_t, leg, back_t = 0.45, 0.04, 0.04, 0.04
    z0 = -sz / 2
    legc = _shade(o.color, 0.6)
    parts = [_part(0.0, 0.0, z0 + seat_h - seat_t / 2, sx, sy, seat_t, o.color)]
    leg_h = seat_h - seat_t
    for ix in (-1, 1):
        for iy in (-1, 1):
            parts.append(
                _part(ix * (sx / 2 - leg / 2), iy * (sy / 2 - leg / 2), z0 + leg_h / 2, leg, leg, leg_h, legc)
            )
    back_h = sz - seat_h  # the backrest is at the back (-y): the seat front faces +y
    parts.append(
        _part(0.0, -sy / 2 + back_t / 2, z0 + seat_h + back_h / 2, sx, back_t, back_h, _shade(o.color, 0.9))
    )
    return parts


def _sofa_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    base_h, back_d, arm_w, arm_h = 0.42, 0.2, 0.18, 0.2
    z0 = -sz / 2
    parts = [_part(0.0, 0.0, z0 + base_h / 2, sx, sy, base_h, o.color)]
    back_h = sz - base_h
    parts.append(
        _part(0.0, -sy / 2 + back_d / 2, z0 + base_h + back_h / 2, sx, back_d, back_h, _shade(o.color, 0.9))
    )
    arm_d = sy - back_d
    for ix in (-1, 1):
        parts.append(
            _part(
                ix * (sx / 2 - arm_w / 2),
                -sy / 2 + back_d + arm_d / 2,
                z0 + base_h + arm_h / 2,
                arm_w,
                arm_d,
                arm_h,
                _shade(o.color, 0.85),
            )
        )
    return parts


_SHELF_PANEL = 0.02  # thickness of the shelf's side panels, back panel and boards (m)
_SHELF_BOARDS = 5


def shelf_board_tops(size: Sequence[float]) -> list[float]:
    """Heights (local z, bounding-box centre = 0) of the upper faces of a shelf's boards, bottom first.

    Shared by :func:`_shelf_parts` and the layout that stands books on the boards, so the two can
    never disagree about where a board is.
    """
    sz = size[2]
    p = _SHELF_PANEL
    return [-sz / 2 + p + k * (sz - p) / (_SHELF_BOARDS - 1) for k in range(_SHELF_BOARDS)]


def _shelf_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    p = _SHELF_PANEL
    parts = [_part(ix * (sx / 2 - p / 2), 0.0, 0.0, p, sy, sz, o.color) for ix in (-1, 1)]
    parts.append(_part(0.0, -sy / 2 + p / 2, 0.0, sx - 2 * p, p, sz, _shade(o.color, 0.8)))  # back at -y
    for top in shelf_board_tops(o.size):
        parts.append(_part(0.0, p / 2, top - p / 2, sx - 2 * p, sy - p, p, _shade(o.color, 1.05)))
    return parts


def _cabinet_parts(o: ObjectSpec) -> list[BoxPart]:
    """A closed low cabinet: carcass, two doors on the front (+y) and their handles."""
    sx, sy, sz = o.size
    door_t, handle_d, plinth = 0.018, 0.022, 0.05
    body_d = sy - door_t - handle_d
    z0 = -sz / 2
    parts = [_part(0.0, -sy / 2 + body_d / 2, 0.0, sx, body_d, sz, o.color)]
    door_h = sz - plinth - 0.01
    door_y = -sy / 2 + body_d + door_t / 2
    door_w = sx / 2 - 0.015
    for ix in (-1, 1):
        parts.append(
            _part(
                ix * sx / 4, door_y, z0 + plinth + door_h / 2, door_w, door_t, door_h, _shade(o.color, 1.08)
            )
        )
        parts.append(
            _part(ix * 0.05, sy / 2 - handle_d / 2, z0 + plinth + door_h - 0.1, 0.02, handle_d, 0.12, _METAL)
        )
    return parts


def _bin_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    p, b = 0.015, 0.02
    z0 = -sz / 2
    side_h = sz - b
    zc = z0 + b + side_h / 2
    inner = _shade(o.color, 0.75)
    return [
        _part(0.0, 0.0, z0 + b / 2, sx, sy, b, inner),
        _part(0.0, -sy / 2 + p / 2, zc, sx, p, side_h, o.color),
        _part(0.0, sy / 2 - p / 2, zc, sx, p, side_h, o.color),
        _part(-sx / 2 + p / 2, 0.0, zc, p, sy - 2 * p, side_h, o.color),
        _part(sx / 2 - p / 2, 0.0, zc, p, sy - 2 * p, side_h, o.color),
    ]


def _monitor_parts(o: ObjectSpec) -> list[BoxPart]:
    """Stand, neck behind the panel, and the panel with a dark screen on its front (+y) face."""
    sx, sy, sz = o.size
    base_t, neck_h, panel_d, glass = 0.02, 0.10, 0.03, 0.004
    z0 = -sz / 2
    screen_h = sz - base_t - neck_h
    panel_y = 0.02
    zs = z0 + base_t + neck_h + screen_h / 2
    return [
        _part(0.0, 0.0, z0 + base_t / 2, min(0.22, sx), sy, base_t, o.color),
        _part(0.0, -0.005, z0 + base_t + neck_h / 2, 0.04, 0.04, neck_h, o.color),
        _part(0.0, panel_y, zs, sx, panel_d, screen_h, o.color),
        _part(0.0, panel_y + panel_d / 2 + glass / 2, zs, sx - 0.03, glass, screen_h - 0.03, _SCREEN),
        _part(0.0, panel_y - panel_d / 2 - 0.015, zs, 0.5 * sx, 0.03, 0.5 * screen_h, _shade(o.color, 1.3)),
    ]


def _keyboard_parts(o: ObjectSpec) -> list[BoxPart]:
    """A flat base with a raised key block; the typing side (front) is +y."""
    sx, sy, sz = o.size
    base_h = 0.6 * sz
    z0 = -sz / 2
    keys = _shade(o.color, 0.8) if sum(o.color) > 300 else _shade(o.color, 1.8)
    return [
        _part(0.0, 0.0, z0 + base_h / 2, sx, sy, base_h, o.color),
        _part(0.0, -0.05 * sy, z0 + base_h + (sz - base_h) / 2, 0.94 * sx, 0.75 * sy, sz - base_h, keys),
    ]


def _laptop_parts(o: ObjectSpec) -> list[BoxPart]:
    """Open laptop: base with keys in front (+y), lid standing up at the back with its screen facing +y."""
    sx, sy, sz = o.size
    base_t, lid_t, glass = 0.02, 0.012, 0.003
    z0 = -sz / 2
    base_d = sy - lid_t
    keys = _shade(o.color, 0.6)
    glass_h, keys_d = sz - base_t - 0.035, 0.45 * base_d
    return [
        _part(0.0, sy / 2 - base_d / 2, z0 + base_t / 2, sx, base_d, base_t, o.color),
        _part(0.0, -sy / 2 + lid_t / 2, 0.0, sx, lid_t, sz, o.color),
        _part(
            0.0,
            -sy / 2 + lid_t + glass / 2,
            z0 + base_t + 0.02 + glass_h / 2,
            sx - 0.03,
            glass,
            glass_h,
            _SCREEN,
        ),
        _part(0.0, -sy / 2 + lid_t + 0.01 + keys_d / 2, z0 + base_t + 0.002, 0.88 * sx, keys_d, 0.004, keys),
    ]


def _printer_parts(o: ObjectSpec) -> list[BoxPart]:
    """Body, paper input tray on top at the back, output tray sticking out of the front (+y)."""
    sx, sy, sz = o.size
    tray_d, in_h = 0.05, 0.04
    z0 = -sz / 2
    body_d, body_h = sy - tray_d, sz - in_h
    return [
        _part(0.0, -sy / 2 + body_d / 2, z0 + body_h / 2, sx, body_d, body_h, o.color),
        _part(0.0, sy / 2 - tray_d / 2, z0 + 0.06, 0.6 * sx, tray_d, 0.012, _shade(o.color, 0.8)),
        _part(0.0, -sy / 2 + 0.07, sz / 2 - in_h / 2, 0.6 * sx, 0.1, in_h, _shade(o.color, 0.85)),
        _part(0.3 * sx, -sy / 2 + body_d - 0.05, z0 + body_h + 0.005, 0.2 * sx, 0.06, 0.01, _SCREEN),
    ]


def _cup_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    body = 0.78 * sx
    return [
        _part(-sx / 2 + body / 2, 0.0, 0.0, body, sy, sz, o.color),
        _part(sx / 2 - (sx - body) / 2, 0.0, 0.05 * sz, sx - body, 0.2 * sy, 0.55 * sz, o.color),
    ]


def _book_parts(o: ObjectSpec) -> list[BoxPart]:
    """Covers, spine and a recessed page block; upright books (on a shelf) show their spine at +y.

    A book is lying flat when its height is its smallest dimension (then the covers are top and
    bottom and the spine is at -x), otherwise it stands upright (covers at +-x).
    """
    sx, sy, sz = o.size
    c = 0.004  # cover thickness
    pages = _PAGES
    spine = _shade(o.color, 0.8)
    if sz < min(sx, sy):  # lying flat
        return [
            _part(0.0, 0.0, sz / 2 - c / 2, sx, sy, c, o.color),
            _part(0.0, 0.0, -sz / 2 + c / 2, sx, sy, c, o.color),
            _part(-sx / 2 + c / 2, 0.0, 0.0, c, sy, sz - 2 * c, spine),
            _part((c - 0.004) / 2, 0.0, 0.0, sx - c - 0.004, sy - 0.008, sz - 2 * c, pages),
        ]
    return [
        _part(sx / 2 - c / 2, 0.0, 0.0, c, sy, sz, o.color),
        _part(-sx / 2 + c / 2, 0.0, 0.0, c, sy, sz, o.color),
        _part(0.0, sy / 2 - c / 2, 0.0, sx - 2 * c, c, sz, spine),
        _part(0.0, -c / 2 + 0.001, 0.0, sx - 2 * c, sy - c - 0.002, sz - 0.01, pages),
    ]


def _scissors_parts(o: ObjectSpec) -> list[BoxPart]:
    """Lying flat: blades pointing to +y, a pivot, two handle loops at -y."""
    sx, sy, sz = o.size
    z0 = -sz / 2
    blade_h = 0.5 * sz
    return [
        _part(0.0, sy / 2 - 0.275 * sy, z0 + blade_h / 2, 0.3 * sx, 0.55 * sy, blade_h, _METAL),
        _part(0.0, -0.075 * sy, 0.0, 0.2 * sx, 0.05 * sy, sz, _shade(_METAL, 0.7)),
        _part(-0.3 * sx, -sy / 2 + 0.2 * sy, 0.0, 0.4 * sx, 0.4 * sy, sz, o.color),
        _part(0.3 * sx, -sy / 2 + 0.2 * sy, 0.0, 0.4 * sx, 0.4 * sy, sz, o.color),
    ]


def _lamp_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    base_t, shade_h, pole = 0.03, 0.28, 0.03
    z0 = -sz / 2
    pole_h = sz - base_t - shade_h
    return [
        _part(0.0, 0.0, z0 + base_t / 2, 0.8 * sx, 0.8 * sy, base_t, _METAL),
        _part(0.0, 0.0, z0 + base_t + pole_h / 2, pole, pole, pole_h, _METAL),
        _part(0.0, 0.0, sz / 2 - shade_h / 2, sx, sy, shade_h, o.color),
    ]


def _plant_parts(o: ObjectSpec) -> list[BoxPart]:
    sx, sy, sz = o.size
    pot_h = 0.35 * sz
    z0 = -sz / 2
    terracotta = (170, 90, 55)
    return [
        _part(0.0, 0.0, z0 + pot_h / 2, 0.6 * sx, 0.6 * sy, pot_h, terracotta),
        _part(0.0, 0.0, z0 + pot_h + (sz - pot_h) / 2, sx, sy, sz - pot_h, o.color),
    ]


#: Category -> geometry builder; unknown categories render as their bounding box.
PART_BUILDERS: dict[str, PartBuilder] = {
    "table": _table_parts,
    "chair": _chair_parts,
    "sofa": _sofa_parts,
    "shelf": _shelf_parts,
    "cabinet": _cabinet_parts,
    "bin": _bin_parts,
    "monitor": _monitor_parts,
    "keyboard": _keyboard_parts,
    "laptop": _laptop_parts,
    "printer": _printer_parts,
    "cup": _cup_parts,
    "book": _book_parts,
    "scissors": _scissors_parts,
    "lamp": _lamp_parts,
    "plant": _plant_parts,
}


def object_parts(o: ObjectSpec) -> list[BoxPart]:
    """Local-frame boxes of ``o`` (its bounding box when the category has no builder)."""
    return PART_BUILDERS.get(o.category, _single_box)(o)
