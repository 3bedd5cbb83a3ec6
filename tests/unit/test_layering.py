"""The floors of the package (docs/ARCHITECTURE.md): the ground floor (the modules at
the package's root and wire/) imports none of the folders; security/ and engine/ stand on
it alone; then models/, observability/, api/, daemon/ (which wires them together) and
cli/. And the import rules of DESIGN.md: api/ never touches llama_cpp or engine/llama.py;
engine/ never imports the web framework."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "mullama"
FOLDERS = ("api", "cli", "daemon", "engine", "models", "observability", "security", "ui")
GROUND = ("wire",)  # folders on the ground floor, with the root's modules


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.add("." * node.level + mod)
            names.update(f"{'.' * node.level}{mod}.{a.name}" for a in node.names)
    return names


def _modules(path: Path) -> set[str]:
    """The absolute names of the Mullama modules (and their members) that a file imports."""
    package = ["mullama", *path.relative_to(SRC).parts[:-1]]
    out: set[str] = set()
    for name in _imports(path):
        level = len(name) - len(name.lstrip("."))
        if level:
            base = package[: len(package) - level + 1]
            name = ".".join([*base, name[level:]] if name[level:] else base)
        if name == "mullama" or name.startswith("mullama."):
            out.add(name)
    return out


def _folder(path: Path) -> str | None:
    """The top-level folder a file is in (None for the modules at the package's root)."""
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else None


def _folders_imported(path: Path) -> dict[str, str]:
    """The top-level folders a file imports, each with one module it takes from there.
    ``from .. import requestctx`` names a root module, not a folder."""
    out: dict[str, str] = {}
    for name in sorted(_modules(path)):
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in FOLDERS + GROUND:
            out.setdefault(parts[1], name)
    return out


def _sources(folder: str | None = None) -> list[Path]:
    if folder is None:
        return sorted(SRC.rglob("*.py"))
    return sorted((SRC / folder).rglob("*.py"))


def test_api_never_imports_the_engine_binding():
    for path in _sources("api"):
        for name in _imports(path):
            assert not name.startswith("llama_cpp"), (path, name)
            assert not name.endswith("engine.llama"), (path, name)


def test_engine_never_imports_the_web_framework():
    for path in _sources("engine"):
        for name in _imports(path):
            assert not name.startswith(("fastapi", "starlette", "uvicorn")), (path, name)


def test_only_engine_llama_imports_llama_cpp():
    for path in _sources():
        if path.relative_to(SRC).as_posix() == "engine/llama.py":
            continue
        for name in _imports(path):
            assert not name.startswith("llama_cpp"), (path, name)


def test_security_and_api_never_import_each_other():
    """The guards answer in each API's error shape through wire/errors.py and know
    nothing else of the API layer; what a route needs is declared in access.py, a
    ground-floor module both read."""
    for path in _sources("security"):
        assert "api" not in _folders_imported(path), (path, _folders_imported(path))
    for path in _sources("api"):
        assert "security" not in _folders_imported(path), (path, _folders_imported(path))


def test_engine_never_imports_observability():
    """The engine reports through its observer and logs with logsetup.py."""
    for path in _sources("engine"):
        assert "observability" not in _folders_imported(path), (path, _folders_imported(path))


def test_daemon_imports_api_only_to_mount_routes():
    """app.py mounts the API's routers (and makes the services they call); openapi.py
    mounts /openapi.json from the routes' own documents. The rest of the daemon (guards,
    middleware, server, in-flight tails) answers with the ground floor's wire forms."""
    mounting = {"daemon/app.py", "daemon/openapi.py"}
    importing = {
        path.relative_to(SRC).as_posix()
        for path in _sources("daemon")
        if "api" in _folders_imported(path)
    }
    assert importing <= mounting, importing - mounting


def test_ground_floor_imports_no_folder():
    """The root's modules (errors, config, requestctx, access, logsetup, files) and
    wire/ are what every floor stands on: they import none of the folders (``__main__``
    is the command line's entry, the top, not the ground)."""
    ground = [
        p
        for p in _sources()
        if (_folder(p) is None and p.name != "__main__.py") or _folder(p) in GROUND
    ]
    for path in ground:
        above = {f: m for f, m in _folders_imported(path).items() if f not in GROUND}
        assert not above, (path.relative_to(SRC).as_posix(), above)


def _folder_graph() -> dict[str, dict[str, str]]:
    """folder -> {folder it imports: "file: module" of one such import}."""
    graph: dict[str, dict[str, str]] = {f: {} for f in FOLDERS + GROUND}
    for path in _sources():
        folder = _folder(path)
        if folder is None:
            continue
        for target, module in _folders_imported(path).items():
            if target != folder:
                where = f"{path.relative_to(SRC).as_posix()}: {module}"
                graph[folder].setdefault(target, where)
    return graph


def _cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of the graph as its nodes in order (first == last), or None."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, [*trail, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}, "d": {}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": "x"}, "b": {}}) is None


def test_folders_import_each_other_without_a_cycle():
    graph = _folder_graph()
    cycle = _cycle(graph)
    if cycle is not None:
        steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle between folders:\n  " + "\n  ".join(steps))
