"""The package's shape: no import circle, ROS only in ``ros/``, contracts that name no backend (issue 20).

Imports are read from the source (``ast``), function-level (lazy) ones included: a lazy import is
still a dependency. Imports under ``if TYPE_CHECKING:`` are not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reasoning_seg"
ROS_ONLY = ("rclpy", "launch", "launch_ros", "message_filters", "tf2_ros", "std_srvs", "ament_index_python")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, module: str) -> list[str]:
    """Dotted names this file imports at run time (absolute, relative resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):  # if TYPE_CHECKING: blocks never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            names += [f"{base}.{a.name}" for a in node.names] + [base]
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        return ".".join(parts) if parts else None

    return {
        m: {r for n in _imports(p, m) if (r := resolve(n)) and r != m and r != "reasoning_seg"}
        for m, p in mods.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not m.startswith("reasoning_seg.ros")))
def test_ros_is_imported_only_in_the_ros_layer(module: str) -> None:
    path = _modules()[module]
    bad = [
        n
        for n in _imports(path, module)
        if n.split(".")[0] in ROS_ONLY
        or n.split(".")[0].endswith("_msgs")
        or n.startswith("reasoning_seg.ros")
    ]
    assert not bad, f"{module} imports {sorted(set(bad))}: the core must run without ROS (use ros/)"


def test_contracts_and_foundations_name_no_implementation() -> None:
    graph = _graph()
    # The 2D-model contract and the registry know no backend; camera/config/registry are the floor.
    assert graph["reasoning_seg.segmenter"] <= {"reasoning_seg.camera"}
    for floor in ("reasoning_seg.camera", "reasoning_seg.registry"):
        assert graph[floor] == set(), (floor, graph[floor])
    assert graph["reasoning_seg.config"] <= {"reasoning_seg.camera"}, graph["reasoning_seg.config"]


FOUNDATION = {"camera", "config", "registry", "backends", "transfer", "segmenter"}
#: Which stages each stage may import (besides itself and the foundation): one way, ros on top.
ALLOWED = {
    "mapping": set(),
    "io": {"mapping"},
    "query": {"mapping"},
    "report": {"query"},
    "lisa": set(),
    "sim": {"io", "mapping"},
    "pipeline": {"mapping", "query", "net"},
    "net": {"mapping", "query", "pipeline", "io", "sim", "eval"},
    "eval": {"mapping", "query", "pipeline", "io", "sim", "report"},
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "reasoning_seg"


def test_stages_depend_one_way() -> None:
    """A stage imports only the stages below it and the foundation (mapping <- query <- pipeline <- ros)."""
    bad = []
    for module, deps in _graph().items():
        stage = _stage(module)
        if stage in ("ros", "reasoning_seg") or stage in FOUNDATION:
            continue
        allowed = ALLOWED[stage] | FOUNDATION | {stage}
        bad += [f"{module} -> {d}" for d in sorted(deps) if _stage(d) not in allowed]
    assert not bad, bad


def test_every_stage_folder_says_what_it_may_import() -> None:
    for stage in ("mapping", "query", "io", "eval", "report", "sim", "net", "lisa", "ros"):
        doc = ast.get_docstring(ast.parse((SRC / stage / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"{stage}/__init__.py has no docstring"
