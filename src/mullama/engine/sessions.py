"""Sessions that survive a restart: the hottest conversation KV states, written to disk at
shutdown (and at unload, and every ``--session-save-interval`` seconds when set) under
``<cache dir>/sessions/<model>/``, and found again by the next worker of the same model
and settings.

One file per conversation: ``MLKV``, a little-endian u32 header length, the header (JSON:
format version, the fingerprint of the model and context settings, the token count, the
state's size, a CRC-32 of tokens and state, the cache scope when not ""), the tokens
(int32) and the state as ``llama_state_seq_get_data`` wrote it. Files are written to a
temporary name, flushed and renamed, so a crash mid-write leaves no broken entry. At
start only headers and tokens are read; a state is read (and its CRC checked) when a
request restores it. A file whose fingerprint differs (another model file, other context
settings, another llama.cpp) is ignored with one log line; a corrupt or truncated one is
skipped and removed.

The state bytes go to llama.cpp as they are, so what is read is checked first: a regular
file of this user (no link, FIFO or device: files.py), a header of the expected
types whose token count fits the context and whose state size fits the disk budget (a
forged count or size never makes the worker allocate or read gigabytes), and a state
that starts as this engine's own do (its magic and KV stream count, taken from the
engine's state of an empty sequence) with no more KV cells than the header's tokens.
llama.cpp checks the rest (layer count, types, row sizes) and refuses a mismatch
cleanly. Folders are made 0700 and files 0600: they hold conversations.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..files import UnsafePath, create_private, open_own, private_dir
from .kvcache import Entry, state_buffer

log = logging.getLogger(__name__)

MAGIC = b"MLKV"
FORMAT = 1
SUFFIX = ".kvs"
MAX_HEADER = 64 * 1024  # the header is a few hundred bytes of JSON
MAX_TOKENS = 1 << 24  # when the fingerprint names no context size


class Unusable(ValueError):
    """A session file that is not read further (the reason is the message)."""


class _Other(Exception):
    """A session file of another model file, context settings or engine: kept, unused."""


def _count(header: dict[str, Any], key: str, low: int, high: int) -> int:
    value = header.get(key)
    if type(value) is not int or not low <= value <= high:
        raise Unusable(f"{key} {value!r} is not in [{low}, {high}]")
    return value


def state_refusal(state: Any, n_tokens: int, empty: bytes | None) -> str | None:
    """Why ``state`` cannot be a state this engine saved for ``n_tokens`` tokens (None
    when it can be): its first bytes (llama.cpp's magic, a sequence id, the KV stream
    count) against ``empty``, the engine's own state of an empty sequence, then the cell
    count of its one non-empty stream (a sliding-window model keeps fewer than its
    tokens, never more)."""
    if empty is None or len(empty) < 12:
        return None
    buf = memoryview(state).cast("B")
    if len(buf) < 16 or bytes(buf[:4]) != empty[:4] or bytes(buf[8:12]) != empty[8:12]:
        return "not a KV state of this engine and context"
    (n_stream,) = struct.unpack_from("<I", empty, 8)
    at = 12
    for _ in range(n_stream):
        if at + 4 > len(buf):
            break
        (cells,) = struct.unpack_from("<I", buf, at)
        if cells:
            return None if cells <= n_tokens else f"{cells} KV cells for {n_tokens} tokens"
        at += 4
    return "no KV cells"


@dataclass
class Saved:
    """One conversation to keep on disk: in memory (``data``) or already in ``path``."""

    tokens: np.ndarray
    data: Any = None
    size: int = 0
    path: Path | None = None
    scope: str = ""  # the cache scope it belongs to (kvcache.Entry.scope)


def _name(tokens: np.ndarray, scope: str = "") -> str:
    digest = hashlib.sha256(tokens.tobytes())
    if scope:  # the same tokens in two scopes are two files
        digest.update(b"\0" + scope.encode())
    return digest.hexdigest()[:32] + SUFFIX


class SessionStore:
    def __init__(
        self,
        directory: Path,
        budget: int,
        fingerprint: dict[str, Any],
        empty_state: bytes | None = None,
    ) -> None:
        self.dir = directory
        self.budget = budget
        self.fingerprint = fingerprint
        # The engine's saved state of an empty sequence: how each of its states begins.
        self.empty_state = empty_state
        n_ctx = fingerprint.get("n_ctx_seq")
        self.max_tokens = n_ctx if type(n_ctx) is int and n_ctx > 0 else MAX_TOKENS
        # The files this worker found or wrote: the only ones it removes (several
        # daemons on one cache dir each keep their own).
        self.known: set[str] = set()

    # ---- reading --------------------------------------------------------------------

    def _header(self, path: Path) -> tuple[dict[str, Any], np.ndarray, int] | None:
        """The header, the tokens and the state's offset; None (logged) when unusable
        (_Other when it is another model's or context's)."""
        try:
            fd = open_own(path)
        except OSError as exc:  # a link, a FIFO, another user's file: not ours to remove
            log.warning("session file %s skipped: %s", path.name, exc)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                return self._read_header(f, os.fstat(f.fileno()).st_size)
        except (OSError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("session file %s skipped and removed: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def _read_header(self, f: Any, file_size: int) -> tuple[dict[str, Any], np.ndarray, int]:
        """Each count is checked before it sizes a read or an allocation."""
        head = f.read(8)
        if len(head) < 8 or head[:4] != MAGIC:
            raise Unusable("not a session file")
        (n,) = struct.unpack("<I", head[4:])
        if n > MAX_HEADER:
            raise Unusable("header too long")
        raw_header = f.read(n)
        if len(raw_header) != n:
            raise Unusable("truncated header")
        header = orjson.loads(raw_header)
        if not isinstance(header, dict):
            raise Unusable("the header is not an object")
        if header.get("format") != FORMAT or header.get("fingerprint") != self.fingerprint:
            raise _Other
        count = _count(header, "n_tokens", 1, self.max_tokens)
        size = _count(header, "size", 1, self.budget)
        _count(header, "crc32", 0, 0xFFFFFFFF)
        offset = 8 + n + 4 * count
        if file_size != offset + size:
            raise Unusable("truncated" if file_size < offset + size else "bytes past the state")
        raw = f.read(4 * count)
        if len(raw) != 4 * count:
            raise Unusable("truncated tokens")
        return header, np.frombuffer(raw, dtype="<i4").astype(np.int32), offset

    def index(self) -> list[Entry]:
        """The saved conversations this worker can restore (states read on demand)."""
        if not self.dir.is_dir():
            return []
        for tmp in self.dir.glob(f".*{SUFFIX}.tmp"):  # a write cut by a crash, long ago
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
        entries, other = [], 0
        for path in sorted(self.dir.glob(f"*{SUFFIX}"), key=_newest_first):
            try:
                found = self._header(path)
            except _Other:
                other += 1
                continue
            if found is None:
                continue
            header, tokens, offset = found
            size = int(header["size"])
            scope = header.get("scope", "")
            if not isinstance(scope, str):
                other += 1
                continue
            loader = self._loader(path, header, offset, zlib.crc32(tokens.astype("<i4").tobytes()))
            entries.append(Entry(tokens, None, size, loader=loader, path=path, scope=scope))
            self.known.add(path.name)
        if entries or other:
            log.info(
                "sessions: %d saved conversations to restore on demand%s",
                len(entries),
                f"; {other} ignored (another model file or other context settings)"
                if other else "",
            )  # fmt: skip
        return entries

    def _loader(self, path: Path, header: dict[str, Any], offset: int, tokens_crc: int) -> Any:
        """Reads the state (after the tokens the index already read) and checks the CRC
        of those tokens and this state."""

        def load() -> tuple[Any, int] | None:
            size = int(header["size"])
            try:
                with os.fdopen(open_own(path), "rb") as f:
                    if os.fstat(f.fileno()).st_size != offset + size:
                        raise UnsafePath("it changed since it was indexed")
                    f.seek(offset)
                    buf = state_buffer(size)
                    got = f.readinto(memoryview(buf).cast("B"))
            except (OSError, MemoryError) as exc:
                log.warning("session file %s unreadable: %s", path.name, exc)
                return None
            crc = zlib.crc32(memoryview(buf).cast("B"), tokens_crc)
            if got != size or crc != header.get("crc32"):
                log.warning("session file %s is corrupt (checksum): skipped and removed", path.name)
                path.unlink(missing_ok=True)
                return None
            why = state_refusal(buf, int(header["n_tokens"]), self.empty_state)
            if why is not None:  # refused here, before llama.cpp reads it
                log.warning("session file %s refused (%s): removed", path.name, why)
                path.unlink(missing_ok=True)
                return None
            return buf, size

        return load

    # ---- writing --------------------------------------------------------------------

    def write(self, items: Iterable[Saved]) -> tuple[int, int]:
        """Keep ``items`` (hottest first) within the budget: new states are written,
        files already there are kept, the other files this worker knew go. Returns
        (files kept, bytes)."""
        private_dir(self.dir, levels=2)  # sessions/ and sessions/<model>/
        keep: set[str] = set()
        used = 0
        for item in items:
            name = _name(item.tokens, item.scope)
            if name in keep:
                continue
            if item.path is not None and item.path.exists():
                size = item.path.stat().st_size
                if used + size > self.budget:
                    continue
                if item.path.name != name:
                    os.replace(item.path, self.dir / name)
            else:
                size = self._size(item)
                if item.data is None or used + size > self.budget:
                    continue
                self._write_one(self.dir / name, item)
            keep.add(name)
            used += size
        for name in self.known - keep:
            (self.dir / name).unlink(missing_ok=True)
        self.known = keep
        return len(keep), used

    def _size(self, item: Saved) -> int:
        return 8 + 512 + 4 * len(item.tokens) + item.size  # about: the header is small

    def _write_one(self, path: Path, item: Saved) -> None:
        tokens = item.tokens.astype("<i4").tobytes()
        state = memoryview(item.data).cast("B")[: item.size]
        fields: dict[str, Any] = {
            "format": FORMAT, "fingerprint": self.fingerprint, "n_tokens": len(item.tokens),
            "size": item.size, "crc32": zlib.crc32(state, zlib.crc32(tokens)),
        }  # fmt: skip
        if item.scope:  # files of the unscoped namespace read as before
            fields["scope"] = item.scope
        header = orjson.dumps(fields)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with os.fdopen(create_private(tmp), "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(tokens)
                f.write(state)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
            raise


def _newest_first(path: Path) -> float:
    try:
        return -path.lstat().st_mtime
    except OSError:
        return 0.0
