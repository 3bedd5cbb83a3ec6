"""Which models this daemon serves and their engine clients."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
from functools import cached_property
from pathlib import Path

from ..config import Settings
from ..engine.client import WorkerClient, WorkerSpec
from ..errors import ClientError, ModelNotFound, MullamaError
from .gguf import GGUFInfo, read_gguf
from .registry import EMBEDDED_NAME, resolve

log = logging.getLogger(__name__)


class ModelEntry:
    """A servable model: its name, file and (lazily, cached) GGUF metadata and digest."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        stat = path.stat()
        self.size = stat.st_size
        self.modified = stat.st_mtime

    @cached_property
    def _gguf(self) -> GGUFInfo:
        return read_gguf(self.path)

    def gguf(self) -> GGUFInfo:
        return self._gguf

    @cached_property
    def _digest(self) -> str:
        h = hashlib.sha256()
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def digest(self) -> str:
        return self._digest


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, WorkerClient] = {}
        self._entries: dict[str, ModelEntry] = {}
        for spec in settings.model or [EMBEDDED_NAME]:
            ref = resolve(spec)
            if ref.name in self._clients:
                raise ClientError(f"model name {ref.name!r} is given twice")
            self._entries[ref.name] = ModelEntry(ref.name, ref.path)
            self._clients[ref.name] = WorkerClient(
                WorkerSpec(
                    name=ref.name,
                    path=str(ref.path),
                    parallel=settings.parallel,
                    context_size=settings.context_size,
                    batch_size=settings.batch_size,
                    threads=settings.threads,
                    gpu_layers=settings.gpu_layers,
                    log_level=settings.log_level,
                    log_format=settings.log_format,
                    log_file=settings.log_file,
                    load_timeout=settings.load_timeout,
                )
            )

    @property
    def names(self) -> list[str]:
        return list(self._clients)

    def clients(self) -> list[WorkerClient]:
        return list(self._clients.values())

    def entry(self, name: str | None) -> ModelEntry:
        self.get(name)
        return self._entries[name or ""]

    def get(self, name: str | None) -> WorkerClient:
        if not name:
            raise ClientError("you must provide a model parameter", param="model")
        client = self._clients.get(name)
        if client is None:
            close = difflib.get_close_matches(name, self._clients, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelNotFound(f"The model '{name}' does not exist{hint}", param="model")
        return client

    async def start(self) -> dict[str, str]:
        """Start every model's worker; returns {name: reason} for those that failed."""
        results = await asyncio.gather(
            *(c.ensure_started() for c in self._clients.values()), return_exceptions=True
        )
        failed: dict[str, str] = {}
        for name, result in zip(self._clients, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                reason = result.message if isinstance(result, MullamaError) else repr(result)
                log.error("model %s failed to load: %s", name, reason)
                failed[name] = reason
        return failed

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
