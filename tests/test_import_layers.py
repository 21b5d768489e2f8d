"""The rooms of docs/architecture.md hold: no import circles, imports only downwards, small folders.

The table of rooms is read from the document itself, so the code and its description cannot drift
apart unnoticed. Every import counts: at module level, inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "glsnet", "calibration")
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_MODULES_PER_FOLDER = 12


@dataclass(frozen=True)
class Room:
    rank: int
    name: str
    paths: tuple[str, ...]


def read_rooms(text: str) -> list[Room]:
    """The rows of the rooms table: rank | room | paths (in backticks) | owns."""
    rooms = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rooms.append(Room(int(cells[0]), cells[1], tuple(re.findall(r"`([^`]+)`", cells[2]))))
    return rooms


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def collect_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for package in PACKAGES
        for p in sorted((root / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source, resolved to known module names."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    resolved = set()
    for target in targets:
        if target.split(".")[0] not in PACKAGES:
            continue
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def room_of(path: Path, root: Path, rooms: list[Room]) -> Room | None:
    """The room whose path is the longest prefix of ``path`` (a folder ends in '/', a file is exact)."""
    relative = path.relative_to(root).as_posix()
    best: tuple[int, Room] | None = None
    for room in rooms:
        for prefix in room.paths:
            matches = relative == prefix or (prefix.endswith("/") and relative.startswith(prefix))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), room)
    return best[1] if best else None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def direction_violations(graph: dict[str, set[str]], rooms_of: dict[str, Room]) -> list[str]:
    """Imports into a room above, or into a peer room of the same rank."""
    out = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = rooms_of[source], rooms_of[target]
            if a.name != b.name and b.rank <= a.rank:
                out.append(f"{source} ({a.name}, rank {a.rank}) imports {target} ({b.name}, rank {b.rank})")
    return out


def project_graph() -> tuple[dict[str, set[str]], dict[str, Room], list[str]]:
    rooms = read_rooms(ARCHITECTURE.read_text())
    modules = collect_modules(ROOT)
    known = set(modules)
    graph = {name: imported_modules(name, path, known) for name, path in modules.items()}
    rooms_of, homeless = {}, []
    for name, path in modules.items():
        room = room_of(path, ROOT, rooms)
        if room is None:
            homeless.append(name)
        else:
            rooms_of[name] = room
    return graph, rooms_of, homeless


def test_the_architecture_document_has_the_rooms_table():
    rooms = read_rooms(ARCHITECTURE.read_text())
    names = [r.name for r in rooms]
    assert len(rooms) >= 10 and len(set(names)) == len(names), names
    assert all(r.paths for r in rooms), [r.name for r in rooms if not r.paths]


def test_every_module_belongs_to_a_documented_room():
    _, _, homeless = project_graph()
    assert not homeless, f"modules no row of docs/architecture.md names: {homeless}"


def test_no_import_circles():
    graph, _, _ = project_graph()
    assert not import_cycles(graph), "import circles: " + "; ".join(" <-> ".join(c) for c in import_cycles(graph))


def test_imports_follow_the_documented_direction():
    graph, rooms_of, homeless = project_graph()
    graph = {s: {t for t in ts if t not in homeless} for s, ts in graph.items() if s not in homeless}
    violations = direction_violations(graph, rooms_of)
    assert not violations, "imports against docs/architecture.md:\n" + "\n".join(violations)


@pytest.mark.parametrize("top", [*PACKAGES, "tests"])
def test_no_folder_holds_more_than_twelve_modules(top):
    for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "conftest.py")]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"


# The checks themselves, on a made-up tree: each must catch what it is for.


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_checks_catch_a_circle_an_upward_import_and_a_homeless_module(tmp_path):
    write_tree(tmp_path, {
        "runtime/__init__.py": "",
        "runtime/low/__init__.py": "",
        "runtime/low/a.py": "def f():\n    from runtime.top import b\n",  # inside a function: still counts
        "runtime/top.py": "from runtime.low import a\nfrom . import stray\n",
        "runtime/stray.py": "",
    })
    rooms = read_rooms(
        "| rank | room | paths | owns |\n| --- | --- | --- | --- |\n"
        "| 1 | top | `runtime/top.py`, `runtime/__init__.py` | x |\n| 2 | low | `runtime/low/` | y |\n"
    )
    modules = {n: p for n, p in collect_modules(tmp_path).items() if n.startswith("runtime")}
    graph = {n: imported_modules(n, p, set(modules)) for n, p in modules.items()}
    assert graph["runtime.top"] == {"runtime.low.a", "runtime.stray"}
    assert import_cycles(graph) == [["runtime.low.a", "runtime.top"]]
    homed = {n: room_of(p, tmp_path, rooms) for n, p in modules.items()}
    assert homed["runtime.stray"] is None and homed["runtime.low"].name == "low"
    graph = {s: {t for t in ts if homed[t]} for s, ts in graph.items() if homed[s]}
    assert direction_violations(graph, {n: r for n, r in homed.items() if r}) == [
        "runtime.low.a (low, rank 2) imports runtime.top (top, rank 1)"
    ]


def test_peers_of_one_rank_may_not_import_each_other(tmp_path):
    rooms = [Room(1, "calibration", ("calibration/",)), Room(1, "glsnet", ("glsnet/",))]
    graph = {"calibration.x": {"glsnet.y"}, "glsnet.y": set()}
    homed = {"calibration.x": rooms[0], "glsnet.y": rooms[1]}
    assert direction_violations(graph, homed) == ["calibration.x (calibration, rank 1) imports glsnet.y (glsnet, rank 1)"]
