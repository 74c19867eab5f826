"""Procedural room layout: objects placed one by one with rejection sampling (``generate``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reasoning_seg.sim.catalogue import (
    CATEGORY_AFFORDANCES,
    CATEGORY_COLORS,
    COLOR_PALETTE,
    shelf_board_tops,
)
from reasoning_seg.sim.objects import (
    ObjectSpec,
    _boxes_overlap,
    _footprint_corners,
    _horizontal_distance,
    _to_local_xy,
    _world_parts,
)

if TYPE_CHECKING:  # typing only: no import cycle at run time
    pass


# ---------------------------------------------------------------------------------------------
# Procedural layout
# ---------------------------------------------------------------------------------------------


_Sampler = Callable[[], tuple[float, float, float, float]]  # -> (x, y, z of the bottom, yaw)


class _LayoutError(RuntimeError):
    """The random draw boxed itself in; the generator retries with the next draws."""


_Box = tuple[tuple[float, float, float], tuple[float, float, float], float]  # (center, size, yaw)


class _Layout:
    """Places objects one by one with rejection sampling against everything placed so far."""

    def __init__(self, rng: np.random.Generator, room_size: tuple[float, float, float]) -> None:
        self.rng = rng
        self.lx, self.ly, self.h = room_size
        self.objects: list[ObjectSpec] = []
        # Boxes nothing may enter, with the instance id of their object (0: a keep-out zone).
        self.obstacles: list[tuple[_Box, int]] = []

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick_color(self, category: str) -> str:
        names = CATEGORY_COLORS[category]
        return names[int(self.rng.integers(len(names)))]

    def add(
        self,
        category: str,
        center: Sequence[float],
        size: Sequence[float],
        yaw: float = 0.0,
        color_name: str | None = None,
        obstacle: bool = True,
    ) -> ObjectSpec:
        name = color_name or self.pick_color(category)
        o = ObjectSpec(
            len(self.objects) + 1,
            category,
            name,
            COLOR_PALETTE[name],
            tuple(center),
            tuple(size),
            yaw,
            list(CATEGORY_AFFORDANCES.get(category, ())),
        )
        self.objects.append(o)
        if obstacle:
            self.obstacles.append(((o.center, o.size, o.yaw), o.instance_id))
        return o

    def keep_out(self, center: Sequence[float], size: Sequence[float], yaw: float) -> None:
        """Reserve a volume nothing may be placed in (a door's swing, for example)."""
        self.obstacles.append(((tuple(center), tuple(size), yaw), 0))  # type: ignore[arg-type]

    def wall_length(self, wall: int) -> float:
        return self.lx if wall in (0, 2) else self.ly

    def wall_pose(self, wall: int, s: float, depth: float, gap: float) -> tuple[float, float, float]:
        """(x, y, yaw) of an object of footprint depth ``depth`` with its back ``gap`` from ``wall``.

        Walls: 0 = y=0, 1 = x=lx, 2 = y=ly, 3 = x=0; ``s`` runs along the wall; the object's local
        +y (front) faces into the room and its local x runs along the wall.
        """
        off = gap + depth / 2
        if wall == 0:
            return s, off, 0.0
        if wall == 1:
            return self.lx - off, s, math.pi / 2
        if wall == 2:
            return s, self.ly - off, math.pi
        return off, s, -math.pi / 2

    def inside(self, center: Sequence[float], size: Sequence[float], yaw: float) -> bool:
        xy = _footprint_corners(center, size, yaw)
        return bool(
            np.all(xy >= -1e-9)
            and np.all(xy[:, 0] <= self.lx + 1e-9)
            and np.all(xy[:, 1] <= self.ly + 1e-9)
            and center[2] - size[2] / 2 >= -1e-9
            and center[2] + size[2] / 2 <= self.h + 1e-9
        )

    def fits(
        self,
        center: Sequence[float],
        size: Sequence[float],
        yaw: float,
        clearance: float = 0.05,
        within: ObjectSpec | None = None,
    ) -> bool:
        """Inside the room and clear of every obstacle.

        ``within``: an object this one is placed *inside* (a book on a shelf board): it is checked
        against that object's parts instead of its bounding box.
        """
        if not self.inside(center, size, yaw):
            return False
        for (c, s, y), owner in self.obstacles:
            if within is not None and owner == within.instance_id:
                parts = _world_parts(within)
                if any(
                    _boxes_overlap(center, size, yaw, b.center, b.size, b.yaw, clearance=clearance)
                    for b in parts
                ):
                    return False
            elif _boxes_overlap(center, size, yaw, c, s, y, clearance=clearance):
                return False
        return True

    def place(
        self,
        category: str,
        size: Sequence[float],
        sampler: _Sampler,
        tries: int = 80,
        clearance: float = 0.05,
        color_name: str | None = None,
        support: ObjectSpec | None = None,
        within: ObjectSpec | None = None,
    ) -> ObjectSpec:
        """Draw (x, y, z_bottom, yaw) from ``sampler`` until the object fits; add it.

        ``support``: the object it stands on; its whole footprint must then lie on that object.
        """
        for _ in range(tries):
            x, y, zb, yaw = sampler()
            center = (x, y, zb + size[2] / 2)
            if support is not None:
                corners = _footprint_corners(center, size, yaw)
                if not all(support.contains_xy(xy) for xy in corners):
                    continue
            if self.fits(center, size, yaw, clearance, within):
                return self.add(category, center, size, yaw, color_name)
        raise _LayoutError(f"could not place a {category}")

    def maybe_place(
        self, category: str, size: Sequence[float], sampler: _Sampler, **kwargs: Any
    ) -> ObjectSpec | None:
        """:meth:`place` for optional objects: None instead of an error when it does not fit."""
        try:
            return self.place(category, size, sampler, **kwargs)
        except _LayoutError:
            return None

    def against_wall(
        self, size: Sequence[float], gap: float = 0.01, walls: Sequence[int] = (0, 1, 2, 3)
    ) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            wall = int(walls[int(self.rng.integers(len(walls)))])
            length = self.wall_length(wall)
            s = self.uniform(size[0] / 2 + 0.05, max(size[0] / 2 + 0.05, length - size[0] / 2 - 0.05))
            x, y, yaw = self.wall_pose(wall, s, size[1], gap)
            return x, y, 0.0, yaw

        return sample

    def free_standing(self, yaw_choices: Sequence[float] | None = None, yaw_jitter: float = 0.1) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            if yaw_choices is None:
                yaw = self.uniform(-math.pi, math.pi)
            else:
                base = yaw_choices[int(self.rng.integers(len(yaw_choices)))]
                yaw = base + self.uniform(-yaw_jitter, yaw_jitter)
            return self.uniform(0.3, self.lx - 0.3), self.uniform(0.3, self.ly - 0.3), 0.0, yaw

        return sample

    @staticmethod
    def local_to_world(support: ObjectSpec, u: float, v: float) -> tuple[float, float]:
        c, s = math.cos(support.yaw), math.sin(support.yaw)
        return support.center[0] + c * u - s * v, support.center[1] + s * u + c * v

    def on_top_of(
        self,
        support: ObjectSpec,
        size: Sequence[float],
        inset: float,
        back: float | None = None,
        yaw_jitter: float = 0.0,
        front_half: bool = False,
    ) -> _Sampler:
        """Positions on ``support``'s top face; ``back`` pins the object near the support's back edge.

        ``front_half`` keeps small things on the half towards the support's front (the room side
        of a desk), where the camera sees them instead of behind a monitor.
        """

        def sample() -> tuple[float, float, float, float]:
            hu = max(0.0, support.size[0] / 2 - size[0] / 2 - inset)
            hv = max(0.0, support.size[1] / 2 - size[1] / 2 - inset)
            u = self.uniform(-hu, hu)
            if back is not None:
                v = -support.size[1] / 2 + size[1] / 2 + back
            else:
                v = self.uniform(0.0 if front_half else -hv, hv)
            yaw = support.yaw + (self.uniform(-yaw_jitter, yaw_jitter) if yaw_jitter else 0.0)
            return (*self.local_to_world(support, u, v), support.top, yaw)

        return sample

    def beside_on_top(
        self, support: ObjectSpec, neighbour: ObjectSpec, size: Sequence[float], inset: float
    ) -> _Sampler:
        """Positions on ``support`` clearly to the left or right (drawn each time) of ``neighbour``."""
        nu, _ = _to_local_xy(support, neighbour.center[:2])

        def sample() -> tuple[float, float, float, float]:
            side = 1 if self.chance(0.5) else -1
            u = nu + side * (neighbour.size[0] / 2 + size[0] / 2 + self.uniform(0.12, 0.35))
            hv = max(0.0, support.size[1] / 2 - size[1] / 2 - inset)
            return (*self.local_to_world(support, u, self.uniform(-hv, hv)), support.top, support.yaw)

        return sample


def _layout_room(rng: np.random.Generator) -> tuple[tuple[float, float, float], list[ObjectSpec]]:
    """One attempt at a furnished room; raises :class:`_LayoutError` when a piece does not fit.

    Required pieces (shell, shelf, sofa, two tables, monitor, 2-3 cups, 2+ books, chairs, two bins,
    lamp, plant) fail the attempt when they do not fit; optional ones (cabinet, keyboard, laptop,
    scissors, printer) are simply left out, which is also what makes "absent" queries about them
    possible in some rooms.
    """
    room = (round(float(rng.uniform(4.7, 5.3)), 2), round(float(rng.uniform(3.7, 4.3)), 2), 2.6)
    lx, ly, h = room
    lay = _Layout(rng, room)
    t = 0.1  # shell thickness; the shell lies outside the interior so nothing inside touches it
    lay.add("floor", (lx / 2, ly / 2, -t / 2), (lx + 2 * t, ly + 2 * t, t), obstacle=False)
    lay.add("ceiling", (lx / 2, ly / 2, h + t / 2), (lx + 2 * t, ly + 2 * t, t), obstacle=False)
    lay.add("wall", (lx / 2, -t / 2, h / 2), (lx + 2 * t, t, h), obstacle=False)
    lay.add("wall", (lx + t / 2, ly / 2, h / 2), (t, ly, h), obstacle=False)
    lay.add("wall", (lx / 2, ly + t / 2, h / 2), (lx + 2 * t, t, h), obstacle=False)
    lay.add("wall", (-t / 2, ly / 2, h / 2), (t, ly, h), obstacle=False)

    # Door (with a swing area nobody may block) and a window on another wall.
    door_wall = int(rng.integers(4))
    door_size = (0.9, 0.04, 2.05)
    s_door = lay.uniform(0.8, lay.wall_length(door_wall) - 0.8)
    x, y, yaw = lay.wall_pose(door_wall, s_door, door_size[1], 0.0)
    door = lay.add("door", (x, y, door_size[2] / 2), door_size, yaw)
    x, y, yaw = lay.wall_pose(door_wall, s_door, 1.0, door_size[1])
    lay.keep_out((x, y, 1.0), (1.1, 1.0, 2.0), yaw)

    window_wall = int((door_wall + rng.integers(1, 4)) % 4)
    win_size = (lay.uniform(1.0, 1.4), 0.03, lay.uniform(1.0, 1.2))
    s_win = lay.uniform(0.4 + win_size[0] / 2, lay.wall_length(window_wall) - 0.4 - win_size[0] / 2)
    x, y, yaw = lay.wall_pose(window_wall, s_win, win_size[1], 0.0)
    lay.add("window", (x, y, 0.9 + win_size[2] / 2), win_size, yaw)

    # Tall pieces go against walls, keeping the middle of the room free for the camera path.
    shelf_size = (lay.uniform(0.8, 1.0), lay.uniform(0.3, 0.4), lay.uniform(1.7, 1.9))
    shelf = lay.place("shelf", shelf_size, lay.against_wall(shelf_size))
    sofa_size = (lay.uniform(1.8, 2.1), lay.uniform(0.85, 0.95), lay.uniform(0.78, 0.88))
    lay.place("sofa", sofa_size, lay.against_wall(sofa_size))
    cabinet = None
    if lay.chance(0.7):
        cab_size = (lay.uniform(0.8, 1.0), lay.uniform(0.44, 0.5), lay.uniform(0.75, 0.9))
        cabinet = lay.maybe_place("cabinet", cab_size, lay.against_wall(cab_size))

    tables = []
    for k in range(2):
        size = (lay.uniform(1.2, 1.6), lay.uniform(0.7, 0.8), lay.uniform(0.72, 0.76))
        if k == 0 and rng.random() < 0.7:  # the desk: under the window, as in most offices

            def under_window(size: tuple[float, float, float] = size) -> tuple[float, float, float, float]:
                x, y, yaw = lay.wall_pose(window_wall, s_win + lay.uniform(-0.2, 0.2), size[1], 0.01)
                return x, y, 0.0, yaw

            sampler = under_window
        elif k == 0 or rng.random() < 0.5:  # the desk stays at a wall, out of the camera's path
            sampler = lay.against_wall(size)
        else:
            sampler = lay.free_standing((0.0, math.pi / 2), 0.1)
        tables.append(lay.place("table", size, sampler, clearance=0.15))
    desk = tables[0]

    # The desk: a monitor (top ~1.25 m, below the camera's path) at its back, a keyboard in front
    # of it, and a cup beside it, so that "the cup on the left of the monitor" can mean something.
    mon_size = (lay.uniform(0.5, 0.6), 0.18, lay.uniform(0.42, 0.48))
    centred = desk.size[0] / 2 - mon_size[0] / 2 - 0.15  # within 15 cm of the middle: room for a cup
    monitor = lay.place(
        "monitor", mon_size, lay.on_top_of(desk, mon_size, inset=centred, back=0.06), clearance=0.0
    )
    if lay.chance(0.8):
        kb_size = (lay.uniform(0.42, 0.46), lay.uniform(0.13, 0.15), 0.03)
        mu, mv = _to_local_xy(desk, monitor.center[:2])

        def before_monitor() -> tuple[float, float, float, float]:
            u = mu + lay.uniform(-0.05, 0.05)
            v = mv + monitor.size[1] / 2 + lay.uniform(0.04, 0.1) + kb_size[1] / 2
            return (*lay.local_to_world(desk, u, v), desk.top, desk.yaw + lay.uniform(-0.05, 0.05))

        lay.maybe_place("keyboard", kb_size, before_monitor, support=desk, clearance=0.02)

    cup_w = lay.uniform(0.075, 0.09)
    cup_size = (cup_w, cup_w, lay.uniform(0.09, 0.11))
    n_cups = 3 if lay.chance(0.4) else 2
    first = lay.maybe_place(
        "cup", cup_size, lay.beside_on_top(desk, monitor, cup_size, 0.08), support=desk, tries=40
    )
    for _ in range(n_cups - (first is not None)):
        tb = tables[1] if lay.chance(0.6) else desk
        lay.place("cup", cup_size, lay.on_top_of(tb, cup_size, inset=0.08), support=tb)

    if lay.chance(0.7):
        lap_size = (lay.uniform(0.32, 0.36), lay.uniform(0.23, 0.26), lay.uniform(0.22, 0.25))
        tb = tables[1] if lay.chance(0.7) else desk
        lay.maybe_place(
            "laptop", lap_size, lay.on_top_of(tb, lap_size, inset=0.05, yaw_jitter=0.3), support=tb
        )
    if lay.chance(0.6):
        sc_size = (lay.uniform(0.08, 0.1), lay.uniform(0.2, 0.24), lay.uniform(0.012, 0.016))
        tb = tables[int(rng.integers(2))]
        lay.maybe_place(
            "scissors",
            sc_size,
            lay.on_top_of(tb, sc_size, inset=0.06, yaw_jitter=math.pi, front_half=True),
            support=tb,
        )
    if lay.chance(0.6):
        pr_size = (lay.uniform(0.42, 0.48), lay.uniform(0.36, 0.42), lay.uniform(0.2, 0.25))
        tb = cabinet if cabinet is not None and lay.chance(0.8) else tables[1]
        lay.maybe_place(
            "printer", pr_size, lay.on_top_of(tb, pr_size, inset=0.02, yaw_jitter=0.1), support=tb
        )

    # Books: upright on the shelf's boards (spine to the front) and lying on tables / the cabinet.
    n_shelf_books = int(rng.integers(1, 4))
    n_flat_books = max(int(rng.integers(0, 3)), 2 - n_shelf_books)
    flat_supports = tables + ([cabinet] if cabinet is not None else [])
    for _ in range(n_flat_books):
        bk = (lay.uniform(0.17, 0.22), lay.uniform(0.24, 0.28), lay.uniform(0.03, 0.05))
        sup = flat_supports[int(rng.integers(len(flat_supports)))]
        lay.place("book", bk, lay.on_top_of(sup, bk, inset=0.05, yaw_jitter=0.4), support=sup)
    boards = shelf_board_tops(shelf.size)[1:-1]  # not the top (above eye height) nor the bottom (hidden)
    for _ in range(n_shelf_books):
        bk = (lay.uniform(0.03, 0.06), lay.uniform(0.15, 0.22), lay.uniform(0.2, 0.28))

        def on_board(bk: tuple[float, float, float] = bk) -> tuple[float, float, float, float]:
            z = shelf.center[2] + boards[int(rng.integers(len(boards)))]
            hu = shelf.size[0] / 2 - 0.02 - bk[0] / 2 - 0.01
            u, v = lay.uniform(-hu, hu), shelf.size[1] / 2 - 0.01 - bk[1] / 2
            return (*lay.local_to_world(shelf, u, v), z, shelf.yaw)

        lay.place("book", bk, on_board, clearance=0.01, within=shelf)

    n_chairs = int(rng.integers(2, 5))
    chair_size = (lay.uniform(0.44, 0.5), lay.uniform(0.48, 0.54), lay.uniform(0.85, 0.95))
    for _ in range(n_chairs):

        def at_table() -> tuple[float, float, float, float]:
            tb = tables[int(rng.integers(2))]
            side = int(rng.integers(4))  # 0: +y, 1: -y, 2: +x, 3: -x of the table
            gap = lay.uniform(0.05, 0.2)
            if side < 2:
                u = lay.uniform(-tb.size[0] / 2 + chair_size[0] / 2, tb.size[0] / 2 - chair_size[0] / 2)
                v = (1 if side == 0 else -1) * (tb.size[1] / 2 + gap + chair_size[1] / 2)
            else:
                u = (1 if side == 2 else -1) * (tb.size[0] / 2 + gap + chair_size[1] / 2)
                v = lay.uniform(-0.1, 0.1)
            facing = (math.pi, 0.0, math.pi / 2, -math.pi / 2)[side]  # chair front towards the table
            yaw = tb.yaw + facing + lay.uniform(-0.15, 0.15)
            return (*lay.local_to_world(tb, u, v), 0.0, yaw)

        try:
            lay.place("chair", chair_size, at_table, tries=60)
        except _LayoutError:
            lay.place("chair", chair_size, lay.free_standing(), tries=60)

    # Two identical bins: one near the door, one clearly farther, so "the bin closest to the door"
    # has a well-defined answer that needs spatial reasoning.
    bin_size = (lay.uniform(0.28, 0.34), 0.0, lay.uniform(0.4, 0.5))
    bin_size = (bin_size[0], bin_size[0], bin_size[2])
    bin_color = lay.pick_color("bin")
    inward = np.array([-math.sin(door.yaw), math.cos(door.yaw)])
    along = np.array([math.cos(door.yaw), math.sin(door.yaw)])

    def near_door() -> tuple[float, float, float, float]:
        p = np.array(door.center[:2]) + inward * lay.uniform(0.35, 1.6) + along * lay.uniform(-1.5, 1.5)
        return float(p[0]), float(p[1]), 0.0, lay.uniform(-math.pi, math.pi)

    bin_a = lay.place("bin", bin_size, near_door, color_name=bin_color)
    d_a = _horizontal_distance(bin_a, door)
    for _ in range(80):
        sampler = lay.against_wall(bin_size, gap=0.05) if rng.random() < 0.5 else lay.free_standing()
        x, y, zb, yaw = sampler()
        center = (x, y, bin_size[2] / 2)
        farther = math.hypot(x - door.center[0], y - door.center[1]) - d_a >= 1.0
        if farther and lay.fits(center, bin_size, yaw):
            lay.add("bin", center, bin_size, yaw, bin_color)
            break
    else:
        raise _LayoutError("could not place the second bin")

    lamp_size = (0.35, 0.35, lay.uniform(1.55, 1.7))

    def near_wall_gap(size: Sequence[float], lo: float, hi: float) -> _Sampler:
        def sample() -> tuple[float, float, float, float]:
            return lay.against_wall(size, gap=lay.uniform(lo, hi))()

        return sample

    lay.place("lamp", lamp_size, near_wall_gap(lamp_size, 0.05, 0.2))
    plant_w = lay.uniform(0.4, 0.5)
    plant_size = (plant_w, plant_w, lay.uniform(0.8, 1.1))
    lay.place("plant", plant_size, near_wall_gap(plant_size, 0.02, 0.3))
    return room, lay.objects
