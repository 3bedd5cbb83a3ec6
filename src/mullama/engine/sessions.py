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

from .kvcache import Entry, state_buffer

log = logging.getLogger(__name__)

MAGIC = b"MLKV"
FORMAT = 1
SUFFIX = ".kvs"


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
    def __init__(self, directory: Path, budget: int, fingerprint: dict[str, Any]) -> None:
        self.dir = directory
        self.budget = budget
        self.fingerprint = fingerprint
        # The files this worker found or wrote: the only ones it removes (several
        # daemons on one cache dir each keep their own).
        self.known: set[str] = set()

    # ---- reading --------------------------------------------------------------------

    def _header(self, path: Path) -> tuple[dict[str, Any], np.ndarray, int] | None:
        """The header, the tokens and the state's offset; None (logged) when unusable."""
        try:
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8 or head[:4] != MAGIC:
                    raise ValueError("not a session file")
                (n,) = struct.unpack("<I", head[4:])
                if n > 1 << 20:
                    raise ValueError("header too long")
                header = orjson.loads(f.read(n))
                count = int(header["n_tokens"])
                raw = f.read(4 * count)
                if len(raw) != 4 * count:
                    raise ValueError("truncated tokens")
                tokens = np.frombuffer(raw, dtype="<i4").astype(np.int32)
                offset = 8 + n + 4 * count
                if path.stat().st_size != offset + int(header["size"]):
                    raise ValueError("truncated state")
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("session file %s skipped and removed: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        return header, tokens, offset

    def index(self) -> list[Entry]:
        """The saved conversations this worker can restore (states read on demand)."""
        if not self.dir.is_dir():
            return []
        for tmp in self.dir.glob(f".*{SUFFIX}.tmp"):  # a write cut by a crash, long ago
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
        entries, other = [], 0
        for path in sorted(self.dir.glob(f"*{SUFFIX}"), key=lambda p: -p.stat().st_mtime):
            found = self._header(path)
            if found is None:
                continue
            header, tokens, offset = found
            if header.get("format") != FORMAT or header.get("fingerprint") != self.fingerprint:
                other += 1
                continue
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
                with path.open("rb") as f:
                    f.seek(offset)
                    buf = state_buffer(size)
                    got = f.readinto(memoryview(buf).cast("B"))
            except OSError as exc:
                log.warning("session file %s unreadable: %s", path.name, exc)
                return None
            crc = zlib.crc32(memoryview(buf).cast("B"), tokens_crc)
            if got != size or crc != header.get("crc32"):
                log.warning("session file %s is corrupt (checksum): skipped and removed", path.name)
                path.unlink(missing_ok=True)
                return None
            return buf, size

        return load

    # ---- writing --------------------------------------------------------------------

    def write(self, items: Iterable[Saved]) -> tuple[int, int]:
        """Keep ``items`` (hottest first) within the budget: new states are written,
        files already there are kept, the other files this worker knew go. Returns
        (files kept, bytes)."""
        self.dir.mkdir(parents=True, exist_ok=True)
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
            with tmp.open("wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(tokens)
                f.write(state)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
            raise
