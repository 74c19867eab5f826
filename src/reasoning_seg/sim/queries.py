"""Query generation with verified answers: a query is kept only if it selects exactly its target."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from reasoning_seg.sim.catalogue import (
    ABSENT_OBJECTS,
    AFFORDANCE_CLAUSES,
    AFFORDANCE_PHRASES,
    CATEGORY_AFFORDANCES,
    CATEGORY_COLORS,
    FRONT_CATEGORIES,
    STRUCTURE_CATEGORIES,
    SURROUNDING_CATEGORIES,
)
from reasoning_seg.sim.objects import (
    _ANCHOR_CATEGORIES,
    QueryPredicate,
    SceneQuery,
    _rests_on,
)

if TYPE_CHECKING:  # typing only: no import cycle at run time
    from reasoning_seg.sim.scene import SyntheticScene


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def _mentions(text: str, category: str) -> bool:
    """True when ``text`` names ``category`` as a word (singular or plural): "bin" is not in "cabinet"."""
    return re.search(rf"\b{re.escape(category)}(e?s)?\b", text) is not None


def _describe_objects(
    scene: SyntheticScene, counts: Counter[str], categories: Sequence[str], require_front: bool
) -> list[tuple[str, QueryPredicate]]:
    """Unambiguous noun phrases for objects usable as anchors / supports, at most one per object.

    "the monitor" for a category present once; for tables (always two): "the table by the window",
    "the table by the door", "the white table", whichever is unique first. ``require_front``
    keeps only objects with a front (:meth:`SyntheticScene.facing`), for "on the left of".
    """
    phrases: list[tuple[str, QueryPredicate]] = [
        (f"the {c}", QueryPredicate(category=c)) for c in sorted(categories) if counts[c] == 1
    ]
    for landmark in ("window", "door"):
        if counts[landmark] == 1:
            phrases.append(
                (
                    f"the table by the {landmark}",
                    QueryPredicate(category="table", nearest_to=QueryPredicate(category=landmark)),
                )
            )
    for color in sorted({o.color_name for o in scene.objects if o.category == "table"}):
        phrases.append((f"the {color} table", QueryPredicate(category="table", color_name=color)))
    out, used = [], set()
    for text, pred in phrases:
        ids = scene.select(pred)
        if len(ids) != 1 or ids[0] in used:
            continue
        if require_front and scene.facing(scene.object(ids[0])) is None:
            continue
        used.add(ids[0])
        out.append((text, pred))
    return out


def _generate_queries(scene: SyntheticScene) -> list[SceneQuery]:
    """All template queries whose predicate singles out exactly one object, in a fixed order.

    A description with a relation ("closest to", "on the left of", "with ... on it") is only kept
    when the same description without it is ambiguous, so spatial queries really need the
    relation. Kinds come in the order of :data:`QUERY_KINDS`; "absent" queries are a seeded
    handful (3-6) of requests for things this room does not have.
    """
    out: dict[str, SceneQuery] = {}

    def offer(
        text: str, kind: str, pred: QueryPredicate, ambiguous_without: QueryPredicate | None = None
    ) -> bool:
        """Add the query when it is unique (and needs its relation); True when it was added."""
        if text in out:
            return False
        ids = scene.select(pred)
        if len(ids) != 1:
            return False
        if ambiguous_without is not None and len(scene.select(ambiguous_without)) < 2:
            return False
        if kind == "no_name":
            target = scene.object(ids[0])
            if target.category in SURROUNDING_CATEGORIES or _mentions(text, target.category):
                return False
        out[text] = SceneQuery(text, ids[0], kind, pred)
        return True

    counts = Counter(o.category for o in scene.objects)
    anchors = [a for a in _ANCHOR_CATEGORIES if counts[a] == 1]
    landmarks = [a for a in anchors if a in ("door", "window")]  # the landmarks people use
    targets = [o for o in scene.objects if o.category not in SURROUNDING_CATEGORIES]
    multi = sorted(c for c, n in counts.items() if n >= 2 and c not in STRUCTURE_CATEGORIES)
    side_anchors = _describe_objects(scene, counts, sorted(FRONT_CATEGORIES), require_front=True)
    bearers = {s.category for s in scene.objects for o in targets if _rests_on(o, s)} - SURROUNDING_CATEGORIES
    supports = _describe_objects(scene, counts, sorted(bearers), False)
    sides = ("left", "right")

    def side_rel(side: str, anchor: QueryPredicate) -> dict[str, QueryPredicate]:
        return {"left_of": anchor} if side == "left" else {"right_of": anchor}

    # -- explicit: the object's name (and colour where the name alone is ambiguous)
    for o in targets:
        offer(f"the {o.category}", "explicit", QueryPredicate(category=o.category))
        offer(
            f"the {o.color_name} {o.category}",
            "explicit",
            QueryPredicate(category=o.category, color_name=o.color_name),
            ambiguous_without=QueryPredicate(category=o.category),
        )

    # -- affordance: what it is for, with a landmark where the use alone is ambiguous
    affordances = sorted({a for o in scene.objects for a in o.affordances})
    for aff in affordances:
        phrase = AFFORDANCE_PHRASES.get(aff, f"something to {aff}")
        base = QueryPredicate(affordance=aff)
        offer(phrase, "affordance", base)
        for anchor in landmarks:
            ap = QueryPredicate(category=anchor)
            offer(
                f"{phrase}, whichever is closest to the {anchor}",
                "affordance",
                replace(base, nearest_to=ap),
                ambiguous_without=base,
            )
            offer(
                f"{phrase}, whichever is farthest from the {anchor}",
                "affordance",
                replace(base, farthest_from=ap),
                ambiguous_without=base,
            )

    # -- spatial: one of several same-category objects, told apart by a relation
    for cat in multi:
        base = QueryPredicate(category=cat)
        for anchor in anchors:
            if anchor == cat:
                continue
            ap = QueryPredicate(category=anchor)
            offer(f"the {cat} closest to the {anchor}", "spatial", replace(base, nearest_to=ap), base)
            offer(f"the {cat} farthest from the {anchor}", "spatial", replace(base, farthest_from=ap), base)
        members = [o for o in scene.objects if o.category == cat]
        loads = sorted({o.category for o in scene.objects for m in members if _rests_on(o, m)})
        for load in loads:
            offer(
                f"the {cat} with the {load} on it",
                "spatial",
                replace(base, supports=QueryPredicate(category=load)),
                base,
            )
    for cat in multi:
        base = QueryPredicate(category=cat)
        for text, sp in supports:  # "the book on the shelf", "the cup on the table by the window"
            if sp.category != cat:
                offer(f"the {cat} on {text}", "spatial", replace(base, on=sp), base)
    for cat in multi:
        colors = sorted({o.color_name for o in scene.objects if o.category == cat})
        for text, ap in side_anchors:  # "the cup on the left of the monitor"
            if ap.category == cat:
                continue
            for side in sides:
                base = QueryPredicate(category=cat)
                if offer(
                    f"the {cat} on the {side} of {text}", "spatial", replace(base, **side_rel(side, ap)), base
                ):
                    continue
                for color in colors:  # else maybe "the red chair on the right of the sofa"
                    base = QueryPredicate(category=cat, color_name=color)
                    offer(
                        f"the {color} {cat} on the {side} of {text}",
                        "spatial",
                        replace(base, **side_rel(side, ap)),
                        base,
                    )

    # -- no_name: the target's name replaced by "object" / "thing" (VG-w/o-ON)
    colors = sorted({o.color_name for o in targets})
    for color in colors:
        offer(f"the {color} object", "no_name", QueryPredicate(color_name=color))
    for aff in affordances:
        clause = AFFORDANCE_CLAUSES.get(aff, f"that you can {aff}")
        base = QueryPredicate(affordance=aff)
        for color in colors:
            offer(f"the {color} object {clause}", "no_name", replace(base, color_name=color), base)
        for anchor in landmarks:
            ap = QueryPredicate(category=anchor)
            offer(
                f"the object closest to the {anchor} {clause}", "no_name", replace(base, nearest_to=ap), base
            )
            offer(
                f"the object farthest from the {anchor} {clause}",
                "no_name",
                replace(base, farthest_from=ap),
                base,
            )
    for text, ap in side_anchors:
        for side in sides:
            if offer(f"the object on the {side} of {text}", "no_name", QueryPredicate(**side_rel(side, ap))):
                continue
            for color in colors:
                base = QueryPredicate(color_name=color)
                offer(
                    f"the {color} object on the {side} of {text}",
                    "no_name",
                    replace(base, **side_rel(side, ap)),
                    base,
                )
    for text, sp in supports:
        if offer(f"the thing on {text}", "no_name", QueryPredicate(on=sp)):
            continue
        for color in colors:
            base = QueryPredicate(color_name=color)
            offer(f"the {color} thing on {text}", "no_name", replace(base, on=sp), base)

    for q in _absent_queries(scene, counts):
        if q.text not in out:
            out[q.text] = q
    return list(out.values())


#: Catalogue categories the layout may leave out of a room, and so may be asked for as absent.
_OPTIONAL_CATEGORIES = ("scissors", "printer", "laptop", "cabinet")
#: Uses that other objects might plausibly serve even without the category (a monitor and a
#: keyboard make a computer to browse the web on): never asked for as "absent".
_NOT_ABSENT_USES = frozenset({"browse the web on"})


def _absent_queries(scene: SyntheticScene, counts: Counter[str]) -> list[SceneQuery]:
    """3-6 requests for things this room does not have (seeded by the scene's seed).

    First the honest hard cases: a catalogue object this room happens to lack ("something I can
    use to cut this paper" without scissors), then a colour of a present category that no
    instance has ("the green sofa" next to a blue one), then plausible household objects that no
    room has (:data:`ABSENT_OBJECTS`). Every one is verified to select nothing.
    """
    rng = np.random.default_rng([0xAB5E, int(scene.seed or 0)])
    missing: list[tuple[str, QueryPredicate]] = []
    for cat in _OPTIONAL_CATEGORIES:
        if counts[cat] == 0:
            missing.append((f"the {cat}", QueryPredicate(category=cat)))
            missing += [
                (AFFORDANCE_PHRASES[a], QueryPredicate(affordance=a))
                for a in CATEGORY_AFFORDANCES[cat]
                if a not in _NOT_ABSENT_USES
            ]
    recoloured = [
        (f"the {color} {cat}", QueryPredicate(category=cat, color_name=color))
        for cat in sorted(c for c, n in counts.items() if n == 1 and c not in STRUCTURE_CATEGORIES)
        for color in CATEGORY_COLORS.get(cat, ())
        if all(o.color_name != color for o in scene.objects if o.category == cat)
    ]
    household: list[tuple[str, QueryPredicate]] = []
    for name, use in ABSENT_OBJECTS.items():
        household.append((f"the {name}", QueryPredicate(category=name)))
        if use is not None:
            household.append((AFFORDANCE_PHRASES[use], QueryPredicate(affordance=use)))

    def shuffled(items: list[tuple[str, QueryPredicate]]) -> list[tuple[str, QueryPredicate]]:
        return [items[i] for i in rng.permutation(len(items))]

    n = int(rng.integers(3, 7))
    pool = shuffled(missing)[:2] + shuffled(recoloured)[:1] + shuffled(household)
    out: list[SceneQuery] = []
    for text, pred in pool:
        if len(out) == n:
            break
        if scene.select(pred) == [] and all(q.text != text for q in out):
            out.append(SceneQuery(text, 0, "absent", pred))
    return out
