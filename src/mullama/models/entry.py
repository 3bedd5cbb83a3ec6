"""A servable model: its name, its file, and (read lazily, once) its GGUF metadata,
request defaults and digest."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from .defaults import gguf_sampling
from .gguf import GGUFInfo, read_gguf
from .registry import ModelRef
from .store import sha256_file


class ModelEntry:
    """A servable model: its name, file and (lazily, cached) GGUF metadata and digest."""

    def __init__(self, ref: ModelRef) -> None:
        self.name = ref.name
        self.path = ref.path
        self.ref = ref  # a custom model's system prompt, template and default parameters
        if ref.size is None or ref.modified is None:
            stat = ref.path.stat()
        self.size = ref.size if ref.size is not None else stat.st_size
        self.modified = ref.modified if ref.modified is not None else stat.st_mtime

    @cached_property
    def _gguf(self) -> GGUFInfo:
        return read_gguf(self.path)

    def gguf(self) -> GGUFInfo:
        return self._gguf

    @cached_property
    def sampling(self) -> dict[str, tuple[Any, str]]:
        """The GGUF's own request defaults: field -> (value, its general.sampling key)."""
        return gguf_sampling(self.gguf().metadata)

    def current_digest(self) -> str:
        """The digest of the file as it is now: a bare GGUF path replaced since it was
        hashed is hashed again (a store blob never changes)."""
        if self.ref.digest is None:
            stat = self.path.stat()
            if (stat.st_size, stat.st_mtime) != (self.size, self.modified):
                self.size, self.modified = stat.st_size, stat.st_mtime
                self.__dict__.pop("_digest", None)
        return self._digest

    @cached_property
    def _digest(self) -> str:
        # One digest whether served or not: the manifest's for a model in the store (no
        # hashing), the file's own sha256 for a bare GGUF path (hashed once, on demand).
        if self.ref.digest is not None:
            return self.ref.digest
        return sha256_file(self.path).removeprefix("sha256:")

    def digest(self) -> str:
        return self._digest
