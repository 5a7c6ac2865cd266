"""The shape of ``node/``: every dependency points one way, from the edges down to the core and the base.

Reads the imports of every module under ``node/`` with :mod:`ast` (module-level, function-level and
``TYPE_CHECKING`` imports alike: each is a dependency a reader has to follow) and fails on

* a cycle between packages, or between modules;
* an import from a lower layer into a higher one (base < core < edges);
* one of the edges the architecture rules out by name (``docs/architecture.md``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[1] / "node"

#: Top-level rooms of ``node/`` by layer. A room may import its own layer's rooms only where listed in ALLOWED.
BASE = {"errors", "config", "values", "log", "vocabulary", "labels", "spool", "docgen", "heap", "__init__"}
CORE = {"imaging", "model", "training", "evaluation", "datasets", "sr", "ledger", "synth", "dl", "research",
        "retention"}
EDGES = {"scp", "jobs", "delivery", "web", "cli"}
LAYER = {**{r: 0 for r in BASE}, **{r: 1 for r in CORE}, **{r: 2 for r in EDGES}}

#: Edges the architecture rules out even where the layers would allow them.
FORBIDDEN: dict[str, set[str]] = {
    "ledger": {"scp", "delivery", "jobs", "imaging", "sr", "web", "model", "training", "evaluation", "datasets"},
    "scp": {"delivery", "jobs", "sr", "imaging", "model", "training", "evaluation", "web", "cli"},
    "sr": {"jobs", "ledger", "model", "training", "evaluation", "datasets", "imaging"},
    "imaging": {"ledger", "scp", "jobs", "sr", "model", "training", "evaluation", "datasets"},
    "model": {"training", "evaluation", "ledger", "jobs", "datasets", "sr"},
    "training": {"evaluation", "ledger", "jobs", "datasets", "sr"},
    "evaluation": {"ledger", "jobs", "datasets", "sr"},
    "delivery": {"jobs", "scp", "web", "imaging", "model", "sr"},
    "web": {"scp", "cli", "imaging", "model", "training", "sr"},
    "jobs": {"web", "cli", "scp"},
    "synth": {"ledger", "jobs", "scp", "web", "model", "training", "evaluation", "sr"},
    # the deep model's training stack (torch): only the command line uses it; the node serves ONNX (node.model)
    "dl": {"ledger", "jobs", "scp", "web", "sr", "datasets"},
    # the research toolkit (study recipes and reports): training-side, nothing of the running node
    "research": {"ledger", "jobs", "scp", "web", "sr", "delivery", "dl"},
    # retention: the ledger and the spool only; the scheduler (jobs) and the command line call it
    "retention": {"scp", "jobs", "web", "cli", "delivery", "imaging", "sr", "model", "training", "evaluation",
                  "datasets", "synth", "dl", "research"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(NODE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, known: set[str], external: tuple[str, ...] = ()) -> Iterable[str]:
    """The ``node.*`` modules one file imports (``from a import b`` counts ``a.b`` when that is a module), and
    the imports of the ``external`` modules (``sqlalchemy.orm``: ``from sqlalchemy import orm`` counts too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for item in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(item, ast.Import):
            names = [alias.name for alias in item.names]
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (item.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in item.names]
            names += [f"{base}.{alias.name}" for alias in item.names if f"{base}.{alias.name}" in external]
        else:
            continue
        for name in names:
            if name == "node" or name.startswith("node."):
                while name not in known and "." in name:
                    name = name.rpartition(".")[0]
                yield name
            else:
                yield from (e for e in external if name == e or name.startswith(f"{e}."))


def _graph(external: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Module -> the ``node`` modules it imports, plus the ``external`` modules it imports (not vertices)."""
    files = {(_module_name(p)): p for p in NODE.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        graph[module]  # every module is a vertex
        for target in _imports(path, module, known, external):
            if target != module and target != "node":
                graph[module].add(target)
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one vertex (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(vertex: str) -> None:
        index[vertex] = low[vertex] = len(index)
        stack.append(vertex)
        on_stack.add(vertex)
        for nxt in graph.get(vertex, ()):
            if nxt not in index:
                visit(nxt)
                low[vertex] = min(low[vertex], low[nxt])
            elif nxt in on_stack:
                low[vertex] = min(low[vertex], index[nxt])
        if low[vertex] == index[vertex]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == vertex:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return found


def _room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if _room(source) != _room(target):
                rooms[_room(source)].add(_room(target))
    return rooms


def test_every_room_has_a_layer() -> None:
    rooms = {_room(module) for module in _graph()}
    assert rooms <= set(LAYER), f"rooms without a layer in tests/test_layout.py: {sorted(rooms - set(LAYER))}"


def test_no_module_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_package_cycle() -> None:
    assert _cycles(_room_graph(_graph())) == []


def test_dependencies_point_down() -> None:
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if LAYER.get(_room(target), 0) > LAYER.get(_room(source), 0)
    )
    assert wrong == []


def test_no_forbidden_edge() -> None:
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if _room(target) in FORBIDDEN.get(_room(source), set())
    )
    assert wrong == []


def test_the_checker_sees_a_cycle_and_a_wrong_edge() -> None:
    """The checks above can fail: a planted cycle and a planted upward edge are both found."""
    planted = {"node.ledger.a": {"node.scp.b"}, "node.scp.b": {"node.ledger.a"}}
    assert _cycles(planted) == [["node.ledger.a", "node.scp.b"]]
    assert "scp" in FORBIDDEN["ledger"]


#: What only ``node/ledger/`` may import: its ORM tables, and the ORM itself (everyone else gets frozen records).
LEDGER_ONLY = ("node.ledger.tables", "sqlalchemy.orm")


def _ledger_only_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if _room(source) != "ledger" and target in LEDGER_ONLY
    )


def test_only_the_ledger_touches_its_tables() -> None:
    assert _ledger_only_imports(_graph(external=("sqlalchemy.orm",))) == []


def test_the_checker_sees_an_import_of_the_tables(tmp_path: Path) -> None:
    """The check above can fail: each way of importing the tables or the ORM outside the ledger is found."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from node.ledger.tables import Study\nfrom node.ledger import tables\nimport node.ledger.tables\n"
        "from sqlalchemy.orm import Session\nfrom sqlalchemy import orm\nimport sqlalchemy.orm\n"
        "from sqlalchemy import select\n",
        encoding="utf-8",
    )
    known = set(_graph())
    found = list(_imports(planted, "node.web.planted", known, ("sqlalchemy.orm",)))
    assert found == ["node.ledger.tables"] * 3 + ["sqlalchemy.orm"] * 3
    assert _ledger_only_imports({"node.web.planted": set(found), "node.ledger.views": set(found)}) == [
        "node.web.planted -> node.ledger.tables", "node.web.planted -> sqlalchemy.orm",
    ]


@pytest.mark.parametrize("path", sorted(NODE.rglob("*.py")), ids=lambda p: str(p.relative_to(NODE)))
def test_module_size(path: Path) -> None:
    """No module over ~400 lines unless its docstring says why (a line starting ``Size:``)."""
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > 420:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "Size:" in doc, f"{path.relative_to(NODE)} has {lines} lines and no 'Size:' reason in its docstring"
