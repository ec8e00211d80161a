"""The layout holds: the library never imports training, integrations or the apps; the rooms of
integrations import in one direction; nothing imports in a circle; no module grows past 400 lines;
pynetdicom's private hooks live in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Import name prefix -> source folder (setuptools package-dir in pyproject.toml).
PACKAGES = {"medblip_dicom": ROOT / "medblip_dicom", "medblip_dicom.training": ROOT / "training",
            "medblip_dicom.integrations": ROOT / "integrations"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module `name` imports, at any depth of the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _kind(name: str) -> str:
    if name == "medblip_dicom.__main__":  # `python -m medblip_dicom`: the command's other entry point
        return "apps"
    for kind in ("medblip_dicom.training", "medblip_dicom.integrations", "medblip_dicom.apps"):
        if name == kind or name.startswith(kind + "."):
            return kind.split(".")[1]
    return "core"


def test_the_graph_sees_the_whole_project():
    assert {"medblip_dicom.pipeline", "medblip_dicom.apps.main", "medblip_dicom.training.trainer",
            "medblip_dicom.integrations.spool.journal"} <= set(MODULES)
    assert "medblip_dicom.pipeline" in GRAPH["medblip_dicom.api"]  # the parser finds real edges


def test_the_library_never_imports_training_integrations_or_apps():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _kind(m) == "core"
                    for t in targets if _kind(t) != "core")
    assert not upward, "the core imports upward:\n" + "\n".join(upward)


def test_training_and_integrations_do_not_import_each_other_or_the_apps():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _kind(m) in ("training", "integrations")
                   for t in targets if _kind(t) not in ("core", _kind(m)))
    assert not wrong, "\n".join(wrong)


#: The base rooms of integrations, in order: each may import only those before it.
BASE_ROOMS = ("config", "net", "spool", "ops")
#: Rooms that use the base rooms and never each other.
PEER_ROOMS = ("ingest", "worker", "delivery", "review", "batch")
#: Rooms that assemble the others (the services, ``medblip pull``): they may import any room.
ASSEMBLY_ROOMS = ("service", "pull")
_INTEGRATIONS = "medblip_dicom.integrations."


def _room(name: str) -> str | None:
    return name[len(_INTEGRATIONS):].split(".")[0] if name.startswith(_INTEGRATIONS) else None


def _may_import(room: str, target: str) -> bool:
    if room == target or room in ASSEMBLY_ROOMS:
        return True
    if room in BASE_ROOMS:
        return target in BASE_ROOMS and BASE_ROOMS.index(target) < BASE_ROOMS.index(room)
    return target in BASE_ROOMS


def test_every_module_of_integrations_lives_in_a_room():
    rooms = {_room(m) for m in MODULES if _room(m) is not None}
    assert rooms == set(BASE_ROOMS + PEER_ROOMS + ASSEMBLY_ROOMS), sorted(rooms)
    flat = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "integrations").glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules lying flat beside the rooms: {flat}"


def test_the_rooms_of_integrations_import_in_one_direction():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _room(m) is not None
                   for t in targets if _room(t) is not None and not _may_import(_room(m), _room(t)))
    assert not wrong, "imports across rooms (only service and pull assemble):\n" + "\n".join(wrong)


def test_nothing_imports_in_a_circle():
    # A package's __init__ re-exporting its own submodules is not a circle of interest.
    def edges(m: str) -> set[str]:
        return {t for t in GRAPH[m] if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))
                and not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}

    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                circles.append([*path[path.index(t):], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines; split it by job"


def test_pynetdicom_private_attributes_are_used_in_one_module_only():
    private = ("._servers", "._run_loop_delay", "._create_socket", "process_request_thread")
    users = sorted(str(path.relative_to(ROOT)) for path in MODULES.values()
                   if any(p in path.read_text() for p in private))
    assert users == ["integrations/net/pynetdicom_compat.py"], users
