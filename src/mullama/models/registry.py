"""Turning what a user typed after ``--model`` into a name and a checked GGUF file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ClientError, InvalidName, ModelNotFound
from .adapters import Adapter
from .aliases import EMBEDDED_NAME, check_name, hub_source, is_local_path, unknown_model
from .embedded import embedded_model_path
from .gguf import read_gguf
from .store import Manifest, ModelStore

__all__ = [
    "EMBEDDED_NAME",
    "ModelRef",
    "default_cache_dir",
    "embedded_model_path",
    "resolve",
]


@dataclass(frozen=True)
class ModelRef:
    """A servable model. ``system``, ``template`` (a Jinja chat template) and ``parameters``
    (Ollama-style option names: temperature, top_p, stop, num_ctx, ...) come from a custom
    model's manifest and act as request defaults."""

    name: str
    path: Path
    system: str | None = None
    template: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # A model in the store is known by its manifest: content digest, size of all parts,
    # when it was stored. A bare file (a path after --model) has none of these.
    digest: str | None = None
    size: int | None = None
    modified: float | None = None
    lora: tuple[Adapter, ...] = ()  # a custom model's LoRA adapters (blobs in the store)


def default_cache_dir() -> Path:
    """``MULLAMA_CACHE_DIR`` or the Settings default."""
    from ..config import Settings

    raw = os.environ.get("MULLAMA_CACHE_DIR") or Settings.model_fields["cache_dir"].default
    return Path(raw).expanduser()


def check_model_file(path: Path) -> Path:
    """The structural GGUF check done before any load (raises InvalidGGUF naming the
    file)."""
    read_gguf(path)
    return path


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the file system cannot take (too long) is not."""
    try:
        return path.is_file()
    except OSError:
        return False


def resolve(spec: str, *, cache_dir: str | Path | None = None, paths: bool = True) -> ModelRef:
    """``smollm2:135m``, a model in the store (pulled, created, copied), ``path/to/x.gguf``
    (served under its stem) or ``NAME=SPEC``. The file is GGUF-checked when the model is
    loaded (models/manager.py), so a corrupt file fails that model alone, with a clear
    error naming the file, and never a worker or the daemon. ``paths=False`` (a name
    from a request) never looks at the file system outside the store."""
    spec = spec.strip()
    if not spec:
        raise ClientError("empty model name")
    if any(ord(c) < 32 or ord(c) == 127 for c in spec):
        raise InvalidName(f"model {spec!r} contains a control character")
    if "=" in spec:
        name, _, raw = spec.partition("=")
        if not name.strip():
            raise ClientError(f"missing model name in {spec!r}")
        return replace(resolve(raw, cache_dir=cache_dir, paths=paths), name=name.strip())
    if spec == EMBEDDED_NAME:
        # The digest a store copy of the built-in model has too (Manifest.digest).
        digest = Manifest(name=EMBEDDED_NAME, embedded=True).digest
        return ModelRef(EMBEDDED_NAME, embedded_model_path(), digest=digest)
    path = Path(spec).expanduser()
    if paths and (
        is_local_path(spec) or (not spec.startswith(("hf:", "hf.co/")) and _is_file(path))
    ):
        if not _is_file(path):
            raise ModelNotFound(f"model file not found: {path}")
        return ModelRef(path.stem, path.resolve())
    check_name(spec)
    store = ModelStore(cache_dir if cache_dir is not None else default_cache_dir())
    manifest = store.get(spec)
    if manifest is not None:
        return ModelRef(
            spec,
            store.model_path(manifest),
            system=manifest.system,
            template=manifest.template,
            parameters=dict(manifest.parameters),
            digest=manifest.digest,
            size=manifest.size,
            modified=manifest.modified,
            lora=tuple(Adapter(str(store.blob_path(a.digest)), a.scale) for a in manifest.adapters),
        )
    if hub_source(spec) is not None:
        raise ModelNotFound(
            f"model {spec!r} is not in the model store ({store.root}); "
            f"run `mullama pull {spec}` first",
            param="model",
        )
    raise unknown_model(spec, store.names())
