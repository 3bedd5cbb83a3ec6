"""Forged saved sessions against the real daemon: a session file is read by the worker at
start and its state handed to llama.cpp on demand; one forged to make the worker
allocate terabytes, or whose state is not this engine's (with a valid checksum, which is
no signature), is refused with a log line, and the worker goes on serving: the
conversation is recomputed, the worker never restarts."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import httpx
import orjson

from mullama.models.manager import sessions_dir
from tests.conftest import MODEL, Daemon

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 10}


def _turn(d: Daemon, messages: list[dict]) -> dict:
    r = httpx.post(d.url + "/v1/chat/completions", timeout=300, json={
        "model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def _read(path: Path) -> tuple[dict, bytes, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<I", raw[4:8])
    header = orjson.loads(raw[8 : 8 + n])
    tokens = raw[8 + n : 8 + n + 4 * header["n_tokens"]]
    return header, tokens, raw[8 + n + 4 * header["n_tokens"] :]


def _write(path: Path, header: dict, tokens: bytes, state: bytes) -> None:
    raw = orjson.dumps(header)
    path.write_bytes(b"MLKV" + struct.pack("<I", len(raw)) + raw + tokens + state)
    os.chmod(path, 0o600)


def _conversation(k: int) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": f"Story {k}: " + "the fox runs and jumps. " * 30}]


def test_forged_session_files_are_refused_and_the_worker_keeps_serving(tmp_path):
    """Two conversations saved; one's file is forged (its state scrambled, its checksum
    made to match) and a file asking for 4 TB of tokens is added. The next start restores
    the genuine one (its state passes the same checks), recomputes the forged one, and
    its worker never restarts."""
    args = ("--cache-dir", str(tmp_path), "--parallel", "1", "--context-size", "1024")
    chats = {k: _conversation(k) for k in (0, 1)}
    with Daemon(*args).wait_healthy() as d:
        for messages in chats.values():
            reply = _turn(d, messages)
            messages += [reply["choices"][0]["message"], {"role": "user", "content": "More?"}]
    folder = sessions_dir(str(tmp_path), MODEL)
    files = sorted(folder.glob("*.kvs"))
    assert len(files) == 2, files
    victim = files[0]  # one conversation's, whichever
    header, tokens, state = _read(victim)
    forged = bytes(b ^ 0x5A for b in state)
    header["crc32"] = zlib.crc32(forged, zlib.crc32(tokens))
    _write(victim, header, tokens, forged)
    _write(folder / "huge.kvs", {**header, "n_tokens": 1 << 40}, b"", b"")
    with Daemon(*args).wait_healthy() as d:
        answers = {k: _turn(d, messages) for k, messages in chats.items()}
        status = d.model_status()
        log = d.log()
    cached = {k: a["usage"]["prompt_tokens_details"]["cached_tokens"] for k, a in answers.items()}
    assert sorted(cached.values())[0] == 0 and sorted(cached.values())[1] > 100, cached
    assert status["restarts"] == 0 and status["load_error"] is None
    assert "huge.kvs skipped and removed: n_tokens" in log
    assert "refused (not a KV state of this engine and context): removed" in log
    assert not (folder / "huge.kvs").exists() and not victim.exists()
