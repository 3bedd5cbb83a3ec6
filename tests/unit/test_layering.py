"""The import rules of DESIGN.md: api/ never touches llama_cpp or engine/llama.py;
engine/ never imports the web framework."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "mullama"


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


def test_api_never_imports_the_engine_binding():
    for path in (SRC / "api").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith("llama_cpp"), (path, name)
            assert not name.endswith("engine.llama"), (path, name)


def test_engine_never_imports_the_web_framework():
    for path in (SRC / "engine").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(("fastapi", "starlette", "uvicorn")), (path, name)


def test_only_engine_llama_imports_llama_cpp():
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix() == "engine/llama.py":
            continue
        for name in _imports(path):
            assert not name.startswith("llama_cpp"), (path, name)


def test_security_takes_only_the_error_builders_from_api():
    """The guards answer in each API's own error shape (api/errors.py) and know nothing
    else of the API layer; the API layer never reaches back into the guards."""
    for path in (SRC / "security").rglob("*.py"):
        for name in _imports(path):
            if name.startswith("..api") or name.startswith("mullama.api"):
                assert name.startswith(("..api.errors", "mullama.api.errors")), (path, name)
    for path in (SRC / "api").rglob("*.py"):
        for name in _imports(path):
            assert "security" not in name.split("."), (path, name)
