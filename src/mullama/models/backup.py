"""``mullama backup`` / ``mullama restore``: the store's manifests (and, with --models, its
blobs; with --sessions, the saved conversations of ``<cache dir>/sessions``) in one
.tar.gz with an index of sha256 checksums."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import AlreadyExists, ClientError, InvalidName
from .aliases import check_name
from .store import Manifest, ModelStore, atomic_write, check_digest, sha256_file, space_error

INDEX = "mullama-backup.json"
FORMAT = 1


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
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
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


def restore(store: ModelStore, source: Path, *, force: bool = False) -> dict[str, Any]:
    """Verify everything first (checksums, names, conflicts), then install. Returns
    ``{"models": [...], "blobs": n, "missing": [...]}``."""
    if not source.is_file():
        raise ClientError(f"backup file not found: {source}")
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=_ensure(store.root)))
    try:
        manifests, blobs, sessions = _unpack_and_verify(source, staging)
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
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
        return {"models": [m.name for m in manifests], "blobs": len(blobs), "missing": missing,
                "sessions": len(sessions)}  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unpack_and_verify(
    source: Path, staging: Path
) -> tuple[list[Manifest], dict[str, Path], dict[str, Path]]:
    try:
        tar = tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ClientError(f"{source} is not a readable backup: {exc}") from exc
    files: dict[str, Path] = {}
    with tar:
        try:
            for member in tar:
                if not _member_ok(member):
                    raise ClientError(f"{source}: unexpected entry {member.name!r} in the backup")
                dest = staging / member.name.replace("/", "__")
                extracted = tar.extractfile(member)
                assert extracted is not None
                try:
                    with dest.open("wb") as out:
                        shutil.copyfileobj(extracted, out, 1 << 20)
                except OSError as exc:
                    raise space_error(exc, staging) from exc
                files[member.name] = dest
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ClientError(f"{source} is damaged or truncated: {exc}") from exc
    if INDEX not in files:
        raise ClientError(f"{source} is not a Mullama backup (no {INDEX})")
    index = orjson.loads(files[INDEX].read_bytes())
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
        m = Manifest.from_json(data, where=f"{source}: manifest of {name!r}")
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
