"""``mullama backup`` / ``mullama restore``: the store's manifests (and, with --models, its
blobs; with --sessions, the saved conversations of ``<cache dir>/sessions``) in one
.tar.gz with an index of sha256 checksums.

A backup holds conversations: it is written 0600. A restore reads an archive that may
come from anywhere, so it bounds what it reads before it writes a byte: at most
MAX_MEMBERS entries; regular files only, at the names a backup writes (no links, devices,
sparse files, absolute or ``..`` paths; tarfile's ``data`` filter must agree); an index
and manifests of at most a few MiB; a blob only if a manifest before it names its digest,
and of exactly the size that manifest gives; a saved session of at most MAX_SESSION; and
all of it within the free space of the store's disk. An index or manifest of the wrong
shape is a ClientError, like a checksum that does not match.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import AlreadyExists, ClientError, InvalidName, MullamaError
from ..files import create_private, private_dir
from .aliases import check_name
from .store import Manifest, ModelStore, atomic_write, check_digest, sha256_file, space_error

INDEX = "mullama-backup.json"
FORMAT = 1
MAX_MEMBERS = 65536
MAX_INDEX = 16 << 20
MAX_MANIFEST = 1 << 20
MAX_SESSION = 64 << 30  # a long context's KV state of a big model


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


SESSIONS = "sessions"


def _session_files(store: ModelStore) -> list[Path]:
    root = store.root / SESSIONS
    return sorted(p for p in root.glob("*/*.kvs") if p.is_file()) if root.is_dir() else []


def backup(
    store: ModelStore, target: Path, *, models: bool = False, sessions: bool = False
) -> dict[str, Any]:
    """Write ``target`` (a .tar.gz). Returns the index."""
    manifests = store.list()
    index: dict[str, Any] = {"format": FORMAT, "created": time.time(), "manifests": {}, "blobs": [],
                             "sessions": {}}  # fmt: skip
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with (
            os.fdopen(create_private(tmp), "wb") as out,
            tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar,
        ):
            for m in manifests:
                data = m.to_json()
                arc = f"manifests/{quote(m.name, safe='')}.json"
                index["manifests"][m.name] = {"path": arc, "sha256": _sha(data)}
                _add_bytes(tar, arc, data)
            if models:
                digests = sorted({f.digest for m in manifests for f in m.files})
                for d in digests:
                    blob = store.blob_path(d)
                    if blob.is_file():
                        tar.add(blob, arcname=f"blobs/{blob.name}", recursive=False)
                        index["blobs"].append(d)
            if sessions:
                for path in _session_files(store):
                    arc = f"{SESSIONS}/{path.parent.name}/{path.name}"
                    index["sessions"][arc] = sha256_file(path)
                    tar.add(path, arcname=arc, recursive=False)
            _add_bytes(tar, INDEX, orjson.dumps(index, option=orjson.OPT_INDENT_2))
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise space_error(exc, target.parent) from exc
    return index


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _member_ok(member: tarfile.TarInfo) -> bool:
    name = member.name
    return (
        member.isfile()
        and not name.startswith("/")
        and ".." not in name
        and "\\" not in name
        and (
            (name == INDEX or name.startswith(("manifests/", "blobs/")))
            and name.count("/") <= 1
            or name.startswith(f"{SESSIONS}/")
            and name.count("/") == 2
            and name.endswith(".kvs")
        )
    )


def restore(
    store: ModelStore, source: Path, *, force: bool = False, max_bytes: int | None = None
) -> dict[str, Any]:
    """Verify everything first (bounds, checksums, names, conflicts), then install.
    ``max_bytes`` bounds what the archive may unpack to (default: the free space of the
    store's disk). Returns ``{"models": [...], "blobs": n, "missing": [...]}``."""
    if not source.is_file():
        raise ClientError(f"backup file not found: {source}")
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=_ensure(store.root)))
    if max_bytes is None:
        max_bytes = shutil.disk_usage(staging).free
    try:
        manifests, blobs, sessions = _unpack_and_verify(source, staging, max_bytes)
        conflicts = [
            m.name
            for m in manifests
            if (old := store.get(m.name)) is not None and old.to_json() != m.to_json()
        ]
        if conflicts and not force:
            raise AlreadyExists(
                f"restore would overwrite {', '.join(sorted(conflicts))}; use --force"
            )
        for digest, path in blobs.items():
            dest = store.blob_path(digest)
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(path, dest)
                except OSError as exc:
                    raise space_error(exc, store.root) from exc
        missing = []
        for m in manifests:
            absent = [f.digest for f in m.files if not store.blob_path(f.digest).is_file()]
            if absent:
                missing.append(m.name)
            atomic_write(store.manifest_path(m.name), m.to_json())
        for arc, path in sessions.items():  # saved conversations: a newer one is kept
            dest = store.root / arc
            if not dest.exists():
                private_dir(dest.parent, levels=2)  # sessions/ and sessions/<model>/
                os.replace(path, dest)
        return {"models": [m.name for m in manifests], "blobs": len(blobs), "missing": missing,
                "sessions": len(sessions)}  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Unpacker:
    """Reads the archive's entries one by one into ``staging``, each checked before it
    is written: see the module's docstring."""

    def __init__(self, source: Path, staging: Path, max_bytes: int) -> None:
        self.source = source
        self.staging = staging
        self.left = max_bytes
        self.files: dict[str, Path] = {}
        self.sizes: dict[str, int] = {}  # blob digest -> size, from the manifests so far

    def refuse(self, member: tarfile.TarInfo, why: str) -> ClientError:
        return ClientError(f"{self.source}: unexpected entry {member.name!r} in the backup ({why})")

    def limit(self, member: tarfile.TarInfo) -> int:
        """The most bytes ``member`` may hold (ClientError when it may not be there)."""
        name = member.name
        if not _member_ok(member) or member.issparse():
            raise self.refuse(member, "not a file a backup writes")
        try:
            tarfile.data_filter(member, str(self.staging))
        except tarfile.FilterError as exc:
            raise self.refuse(member, str(exc)) from exc
        if name == INDEX:
            return MAX_INDEX
        if name.startswith("manifests/"):
            return MAX_MANIFEST
        if name.startswith("blobs/"):
            digest = "sha256:" + name.removeprefix("blobs/sha256-")
            if digest not in self.sizes:
                raise self.refuse(member, "no manifest before it names this blob")
            if member.size != self.sizes[digest]:
                raise self.refuse(member, f"its manifest says {self.sizes[digest]} bytes")
            return self.sizes[digest]
        return MAX_SESSION

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if len(self.files) >= MAX_MEMBERS:
            raise ClientError(f"{self.source}: more than {MAX_MEMBERS} entries in the backup")
        if member.name in self.files:
            raise self.refuse(member, "a second entry of that name")
        if member.size > self.limit(member):
            raise self.refuse(member, f"{member.size} bytes, at most {self.limit(member)}")
        if member.size > self.left:
            raise ClientError(
                f"{self.source}: the backup unpacks to more than the {self.left} bytes free for it"
            )
        self.left -= member.size
        dest = self.staging / member.name.replace("/", "__")
        extracted = tar.extractfile(member)
        assert extracted is not None
        try:
            with os.fdopen(create_private(dest), "wb") as out:
                shutil.copyfileobj(extracted, out, 1 << 20)
        except OSError as exc:
            raise space_error(exc, self.staging) from exc
        self.files[member.name] = dest
        if member.name.startswith("manifests/"):  # the blobs it names may follow
            try:
                m = Manifest.from_json(dest.read_bytes())
            except MullamaError:
                return  # refused by the checks of the index's manifests
            self.sizes.update((f.digest, f.size) for f in m.files)


def _manifest(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.from_json(data, where=where)
    except MullamaError as exc:
        raise ClientError(exc.message) from exc


def _unpack_and_verify(
    source: Path, staging: Path, max_bytes: int
) -> tuple[list[Manifest], dict[str, Path], dict[str, Path]]:
    try:
        tar = tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ClientError(f"{source} is not a readable backup: {exc}") from exc
    unpacker = _Unpacker(source, staging, max_bytes)
    with tar:
        try:
            for member in tar:
                unpacker.add(tar, member)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ClientError(f"{source} is damaged or truncated: {exc}") from exc
    files = unpacker.files
    if INDEX not in files:
        raise ClientError(f"{source} is not a Mullama backup (no {INDEX})")
    try:
        return _verify(source, files, orjson.loads(files[INDEX].read_bytes()))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise ClientError(f"{source}: the backup's index is malformed ({exc!r})") from exc


def _verify(
    source: Path, files: dict[str, Path], index: dict[str, Any]
) -> tuple[list[Manifest], dict[str, Path], dict[str, Path]]:
    manifests = []
    for name, entry in index.get("manifests", {}).items():
        try:
            check_name(name)
        except InvalidName as exc:
            raise ClientError(f"{source}: {exc.message}") from exc
        path = files.get(entry["path"])
        if path is None:
            raise ClientError(f"{source}: manifest of {name!r} is missing")
        data = path.read_bytes()
        if _sha(data) != entry["sha256"]:
            raise ClientError(f"{source}: checksum mismatch in the manifest of {name!r}")
        m = _manifest(data, f"{source}: manifest of {name!r}")
        if m.name != name:
            raise ClientError(f"{source}: manifest of {name!r} names {m.name!r}")
        manifests.append(m)
    blobs = {}
    for digest in index.get("blobs", []):
        hexd = check_digest(digest)
        path = files.get(f"blobs/sha256-{hexd}")
        if path is None:
            raise ClientError(f"{source}: blob {digest} is missing")
        if sha256_file(path) != digest:
            raise ClientError(f"{source}: checksum mismatch in blob {digest}")
        blobs[digest] = path
    sessions = {}
    for arc, digest in index.get("sessions", {}).items():
        path = files.get(arc)
        if path is None or not _member_ok(tarfile.TarInfo(arc)) or ".." in arc:
            raise ClientError(f"{source}: saved session {arc!r} is missing")
        if sha256_file(path) != digest:
            raise ClientError(f"{source}: checksum mismatch in saved session {arc!r}")
        sessions[arc] = path
    return manifests, blobs, sessions
