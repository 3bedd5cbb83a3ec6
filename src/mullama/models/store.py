"""The local model store: content-addressed blobs plus one manifest per model name.

Layout under the cache directory (``MULLAMA_CACHE_DIR``)::

    blobs/sha256-<hex>          model files, named by their sha256 (shared between names)
    manifests/<name>.json       one per model name (the name percent-encoded)
    partial/sha256-<hex>.partial  downloads in progress (resumable)
    links/<model id>/<file>     symlinks with the original names, for split GGUFs
    locks/                      file locks (one per blob, one for the whole store)

A blob is only ever created by renaming a verified partial file, and a manifest only by
renaming a complete temporary file, so a half-written file is never taken for a model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import orjson
from filelock import FileLock

from ..errors import AlreadyExists, InvalidName, ModelNotFound, NoSpace, ServerError
from .aliases import EMBEDDED_NAME, check_name
from .embedded import embedded_model_path

log = logging.getLogger(__name__)

SCHEMA = 1
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    m = _DIGEST.fullmatch(digest)
    if not m:
        raise InvalidName(f"not a sha256 digest: {digest!r}")
    return m.group(1)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return "sha256:" + h.hexdigest()


@dataclass
class FileRef:
    digest: str  # "sha256:<hex>"
    size: int
    filename: str  # the original file name (split GGUFs need it)


@dataclass
class AdapterRef(FileRef):
    """A LoRA adapter blob of a custom model and the scale it is applied with."""

    scale: float = 1.0


@dataclass
class Manifest:
    """One model name. ``files`` is the GGUF (all parts, in order, for a split GGUF);
    ``embedded`` means the built-in model instead of blobs."""

    name: str
    files: list[FileRef] = field(default_factory=list)
    embedded: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    quant: str | None = None
    parent: str | None = None
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    modified: float = field(default_factory=time.time)
    adapters: list[AdapterRef] = field(default_factory=list)  # LoRA, applied in order

    def to_json(self) -> bytes:
        return orjson.dumps({"schema": SCHEMA, **asdict(self)}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, where: str = "manifest") -> Manifest:
        try:
            obj = orjson.loads(data)
            files = [FileRef(**f) for f in obj.get("files", [])]
            adapters = [AdapterRef(**a) for a in obj.get("adapters", [])]
            for f in [*files, *adapters]:
                check_digest(f.digest)
            lists = ("files", "adapters")
            known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj and k not in lists}
            m = cls(files=files, adapters=adapters, **known)
            check_name(m.name)
        except (ValueError, TypeError, KeyError, InvalidName) as exc:
            raise ServerError(f"{where} is corrupt: {exc}") from exc
        return m

    @property
    def size(self) -> int:
        if self.embedded:
            return embedded_model_path().stat().st_size
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """Identifies the content (files + custom settings), not the name: a copy has the
        same digest, a custom model built on it a different one."""
        content = asdict(self)
        for key in ("name", "modified", "source", "parent"):
            content.pop(key)
        if not content["adapters"]:  # the digests of models without adapters stay as they were
            del content["adapters"]
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @property
    def id(self) -> str:
        return self.digest[:12]


class ModelStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    # ---- paths --------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest_path(self, name: str) -> Path:
        check_name(name)
        return self.root / "manifests" / (quote(name, safe="") + ".json")

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / f"sha256-{check_digest(digest)}"

    def partial_path(self, digest: str) -> Path:
        return self._dir("partial") / f"sha256-{check_digest(digest)}.partial"

    def blob_lock(self, digest: str) -> FileLock:
        return FileLock(str(self._dir("locks") / f"sha256-{check_digest(digest)}.lock"))

    def store_lock(self) -> FileLock:
        """Held while manifests change and while unused blobs are collected."""
        return FileLock(str(self._dir("locks") / "store.lock"))

    # ---- manifests ----------------------------------------------------------------

    def get(self, name: str) -> Manifest | None:
        path = self.manifest_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return Manifest.from_json(data, where=f"manifest of {name!r} ({path})")

    def require(self, name: str) -> Manifest:
        m = self.get(name)
        if m is None:
            from .aliases import unknown_model

            raise unknown_model(name, self.names())
        return m

    def names(self) -> list[str]:
        folder = self.root / "manifests"
        if not folder.is_dir():
            return []
        out = []
        for p in folder.glob("*.json"):
            name = unquote(p.name[: -len(".json")])
            with contextlib.suppress(InvalidName):
                out.append(check_name(name))
        return sorted(out)

    def list(self) -> list[Manifest]:
        out = []
        for name in self.names():
            with contextlib.suppress(ServerError):
                m = self.get(name)
                if m is not None:
                    out.append(m)
        return out

    def write(self, manifest: Manifest, *, overwrite: bool = True) -> None:
        """Atomically write a manifest; every blob it names must be present."""
        path = self.manifest_path(manifest.name)
        with self.store_lock():
            if not overwrite and path.exists():
                raise AlreadyExists(f"model {manifest.name!r} already exists")
            for f in [*manifest.files, *manifest.adapters]:
                if not self.blob_path(f.digest).is_file():
                    raise ServerError(
                        f"blob {f.digest} of {manifest.name!r} vanished while it was written; "
                        "try again"
                    )
            atomic_write(path, manifest.to_json())

    def remove(self, name: str) -> list[str]:
        """Delete a model name; returns the digests of blobs no other name uses (deleted)."""
        path = self.manifest_path(name)
        with self.store_lock():
            if self.get(name) is None:
                raise ModelNotFound(f"model {name!r} not found in {self.root}", param="model")
            path.unlink()
            return self._collect_garbage()

    def copy(self, src: str, dst: str) -> Manifest:
        check_name(dst)
        if src == EMBEDDED_NAME and self.get(src) is None:
            base = Manifest(name=dst, embedded=True, parent=EMBEDDED_NAME)
        else:
            base = self.require(src)
        if src == dst:  # nothing to do (as Ollama); the built-in model gets no store copy
            return base
        new = Manifest(**{**_shallow(base), "name": dst, "modified": time.time()})
        self.write(new)
        return new

    def _collect_garbage(self) -> list[str]:
        used = {f.digest for m in self.list() for f in [*m.files, *m.adapters]}
        removed = []
        folder = self.root / "blobs"
        for blob in folder.glob("sha256-*") if folder.is_dir() else []:
            digest = "sha256:" + blob.name[len("sha256-") :]
            if digest not in used:
                blob.unlink(missing_ok=True)
                removed.append(digest)
        links = self.root / "links"
        if links.is_dir():
            live = {m.id for m in self.list()}
            for d in links.iterdir():
                if d.name not in live:
                    shutil.rmtree(d, ignore_errors=True)
        return removed

    # ---- blobs --------------------------------------------------------------------

    def model_path(self, manifest: Manifest) -> Path:
        """The path llama.cpp opens: the blob, or for a split GGUF the first of a set of
        symlinks that carry the original file names (llama.cpp finds the other parts by
        name). A LoRA adapter blob of the model that is gone is named as a file would be."""
        if manifest.embedded:
            self._check_blobs(manifest, manifest.adapters)
            return embedded_model_path()
        if not manifest.files:
            raise ServerError(f"model {manifest.name!r} has no files")
        self._check_blobs(manifest, [*manifest.files, *manifest.adapters])
        if len(manifest.files) == 1:
            return self.blob_path(manifest.files[0].digest)
        folder = self._dir("links") / manifest.id
        folder.mkdir(exist_ok=True)
        for f in manifest.files:
            link = folder / Path(f.filename).name
            if not link.is_symlink():
                with contextlib.suppress(FileExistsError):
                    link.symlink_to(self.blob_path(f.digest))
        return folder / Path(manifest.files[0].filename).name

    def _check_blobs(self, manifest: Manifest, refs: list[Any]) -> None:
        for f in refs:
            if not self.blob_path(f.digest).is_file():
                raise ModelNotFound(
                    f"model {manifest.name!r}: blob {f.digest} is missing from the store; "
                    "pull or restore it again"
                )

    def import_file(self, path: Path) -> FileRef:
        """Copy a local file into the blobs (for ``create`` from a file)."""
        digest = sha256_file(path)
        blob = self.blob_path(digest)
        with self.blob_lock(digest):
            if not blob.is_file():
                partial = self.partial_path(digest)
                try:
                    shutil.copyfile(path, partial)
                except OSError as exc:
                    partial.unlink(missing_ok=True)
                    raise space_error(exc, self.root) from exc
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial, blob)
        return FileRef(digest, path.stat().st_size, path.name)

    def blobs(self) -> Iterator[Path]:
        folder = self.root / "blobs"
        if folder.is_dir():
            yield from sorted(folder.glob("sha256-*"))


def _shallow(m: Manifest) -> dict[str, Any]:
    return {k: getattr(m, k) for k in Manifest.__dataclass_fields__}


def space_error(exc: OSError, where: Path) -> Exception:
    """The error a client sees (no file-system path in it; the log has ``where``)."""
    log.warning("cannot write to %s: %s", where, exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace("no space left on device for the model store")
    return ServerError(f"cannot write to the model store: {exc.strerror or exc}")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise space_error(exc, path.parent) from exc
