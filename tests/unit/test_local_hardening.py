"""Local hardening (security issue 31, part 6): what another local user, a planted link or
a hostile file can make the daemon do. Files of "another user" are made here with
os.chown (tests run as root); the modes are checked under a permissive umask."""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import stat
import struct
import tarfile
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import orjson
import pytest

from mullama.daemon import control
from mullama.daemon.control import ControlSocket, ControlSocketError, read_pid
from mullama.engine import sessions
from mullama.engine.cpushare import CpuShare
from mullama.engine.sessions import MAGIC, Saved, SessionStore
from mullama.errors import ClientError
from mullama.models import backup as backups
from mullama.models.backup import INDEX, backup, restore
from mullama.models.gguf import read_gguf
from mullama.models.store import ModelStore
from mullama.security.keys import load_key_file

OTHER_UID = 54321


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---- the control socket and its pid file ----------------------------------------------


@pytest.fixture
def fallback(tmp_path, monkeypatch) -> Path:
    """The temp-dir fallback socket folder, in a temp dir of this test."""
    monkeypatch.setattr(control.tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path / f"mullama-{os.getuid()}"


def test_a_planted_pid_file_link_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    (folder / "mullama.pid").symlink_to(victim)
    cs = ControlSocket(folder / "mullama.sock")
    cs.bind().close()
    try:
        assert victim.read_text() == "precious\n"
        assert not (folder / "mullama.pid").is_symlink()
        assert read_pid(folder / "mullama.sock") == os.getpid()
    finally:
        cs.remove()


def test_a_pid_file_that_is_a_link_is_not_read(tmp_path):
    (tmp_path / "elsewhere").write_text("4242\n")
    (tmp_path / "mullama.pid").symlink_to(tmp_path / "elsewhere")
    assert read_pid(tmp_path / "mullama.sock") is None


def test_a_fallback_folder_of_another_user_is_refused(fallback):
    fallback.mkdir(mode=0o700)
    os.chown(fallback, OTHER_UID, OTHER_UID)
    with pytest.raises(ControlSocketError, match=f"belongs to uid {OTHER_UID}"):
        ControlSocket(fallback / "mullama.sock").bind()
    assert list(fallback.iterdir()) == []


def test_a_fallback_folder_that_is_a_link_is_refused(fallback, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o777)
    fallback.symlink_to(elsewhere)
    with pytest.raises(ControlSocketError, match="not a folder"):
        ControlSocket(fallback / "mullama.sock").bind()
    assert list(elsewhere.iterdir()) == [] and _mode(elsewhere) == 0o777


def test_an_open_fallback_folder_of_this_user_is_closed_first(fallback):
    fallback.mkdir()
    os.chmod(fallback, 0o777)
    cs = ControlSocket(fallback / "mullama.sock")
    cs.bind().close()
    try:
        assert _mode(fallback) == 0o700
        assert _mode(fallback / "mullama.sock") == 0o600
    finally:
        cs.remove()


def test_a_new_fallback_folder_is_private_whatever_the_umask(fallback, open_umask):
    cs = ControlSocket(fallback / "mullama.sock")
    cs.bind().close()
    try:
        assert _mode(fallback) == 0o700
    finally:
        cs.remove()


# ---- saved sessions -----------------------------------------------------------------------

FINGERPRINT = {"model": "sha256:abc", "engine": "0.3", "n_seq_max": 1, "kv_unified": False,
               "n_ctx_seq": 64, "flash_attn": "on"}  # fmt: skip
LLAMA_MAGIC = struct.pack("<I", 0xAF143CD8)
EMPTY = LLAMA_MAGIC + struct.pack("<iII", 0, 1, 0)  # one KV stream, no cells


def _state(cells: int, magic: bytes = LLAMA_MAGIC) -> bytes:
    return magic + struct.pack("<iII", 0, 1, cells) + bytes(range(200))


def _store(tmp_path: Path, empty: bytes | None = None) -> SessionStore:
    folder, fingerprint = tmp_path / "sessions" / "m", dict(FINGERPRINT)
    if empty is None:
        return SessionStore(folder, 1 << 20, fingerprint)
    return SessionStore(folder, 1 << 20, fingerprint, empty_state=empty)


def _saved(n: int, state: bytes) -> Saved:
    return Saved(np.arange(n, dtype=np.int32), state, len(state))


def _session_file(path: Path, header: dict, tokens: bytes, state_size: int) -> None:
    """A session file with any header; the state is a hole (sparse) of ``state_size``."""
    raw = orjson.dumps(header)
    with path.open("wb") as f:
        f.write(MAGIC + struct.pack("<I", len(raw)) + raw + tokens)
        f.truncate(f.tell() + state_size)


def test_sessions_are_0600_in_0700_folders_whatever_the_umask(tmp_path, open_umask):
    store = _store(tmp_path)
    assert store.write([_saved(3, _state(3))]) == (1, store._size(_saved(3, _state(3))))
    (path,) = store.dir.glob("*.kvs")
    assert _mode(path) == 0o600
    assert _mode(store.dir) == 0o700 and _mode(store.dir.parent) == 0o700
    (entry,) = _store(tmp_path).index()
    assert entry.loader() is not None  # and it reads back


def test_a_session_count_that_would_allocate_terabytes_is_refused(tmp_path, caplog):
    store = _store(tmp_path)
    store.dir.mkdir(parents=True)
    header = {"format": 1, "fingerprint": FINGERPRINT, "n_tokens": 1 << 40, "size": 8,
              "crc32": 0}  # fmt: skip
    _session_file(store.dir / "huge.kvs", header, b"", 8)
    assert store.index() == []
    assert "n_tokens" in caplog.text and not (store.dir / "huge.kvs").exists()


def test_a_sparse_10_gb_session_state_is_refused_unread(tmp_path, caplog):
    """A state larger than the disk budget was never written by a worker: a file that
    declares one (10 GB of holes, no disk used) is refused from its header."""
    store = _store(tmp_path)
    store.dir.mkdir(parents=True)
    size = 10 << 30
    header = {"format": 1, "fingerprint": FINGERPRINT, "n_tokens": 4, "size": size,
              "crc32": 0}  # fmt: skip
    _session_file(store.dir / "sparse.kvs", header, np.arange(4, dtype="<i4").tobytes(), size)
    assert store.index() == []
    assert "size" in caplog.text


@pytest.mark.parametrize(
    "header",
    [[1, 2], {"format": 1, "fingerprint": FINGERPRINT, "n_tokens": "3", "size": 10, "crc32": 0}],
)
def test_a_session_header_of_the_wrong_shape_is_skipped(tmp_path, header):
    store = _store(tmp_path)
    store.dir.mkdir(parents=True)
    _session_file(store.dir / "odd.kvs", header, np.arange(3, dtype="<i4").tobytes(), 10)
    assert store.index() == []


def test_a_forged_state_is_refused_before_llama_cpp_reads_it(tmp_path, caplog):
    """Checksums are not signatures: a state with a valid CRC that is not what this engine
    wrote (another magic, more KV cells than tokens) never reaches llama.cpp."""
    for forged in (_state(3, magic=b"EVIL"), _state(1000)):
        store = _store(tmp_path, EMPTY)
        store.write([_saved(3, forged)])
        (entry,) = _store(tmp_path, EMPTY).index()
        assert entry.loader() is None
        assert list(store.dir.glob("*.kvs")) == []
    assert "not a KV state of this engine" in caplog.text
    assert "1000 KV cells for 3 tokens" in caplog.text


def test_a_session_file_that_is_a_link_or_of_another_user_is_not_read(tmp_path):
    outside = _store(tmp_path / "outside")
    outside.write([_saved(3, _state(3))])
    (real,) = outside.dir.glob("*.kvs")
    store = _store(tmp_path)
    store.write([])
    (store.dir / "link.kvs").symlink_to(real)
    theirs = store.dir / "theirs.kvs"
    theirs.write_bytes(real.read_bytes())
    os.chown(theirs, OTHER_UID, OTHER_UID)
    assert store.index() == []
    assert real.exists() and theirs.exists()  # skipped, not removed


@pytest.mark.timeout(30)  # the hang guard: opening a FIFO for reading blocks
def test_a_fifo_in_the_sessions_folder_does_not_block_the_worker(tmp_path):
    store = _store(tmp_path)
    store.write([])
    os.mkfifo(store.dir / "fifo.kvs")
    assert store.index() == []


def test_session_limits_come_from_the_context():
    assert _store(Path("/nonexistent"), EMPTY).max_tokens == 64
    no_ctx = SessionStore(Path("/nonexistent"), 1, {"model": "x"})
    assert no_ctx.max_tokens == sessions.MAX_TOKENS


# ---- backups and restore ------------------------------------------------------------------


def test_a_backup_is_written_0600_and_restores_sessions_0600(tmp_path, open_umask):
    store = ModelStore(tmp_path / "store")
    saved = store.root / "sessions" / "m"
    saved.mkdir(parents=True)
    (saved / "a.kvs").write_bytes(b"MLKV" + bytes(100))
    target = tmp_path / "b.tar.gz"
    backup(store, target, sessions=True)
    assert _mode(target) == 0o600
    fresh = ModelStore(tmp_path / "fresh")
    assert restore(fresh, target)["sessions"] == 1
    restored = fresh.root / "sessions" / "m" / "a.kvs"
    assert _mode(restored) == 0o600
    assert _mode(restored.parent) == 0o700 and _mode(restored.parent.parent) == 0o700


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return _header(info) + data + bytes(-len(data) % 512)


def _sparse_member(name: str, declared: int) -> bytes:
    """An old-GNU sparse member that says it unpacks to ``declared`` bytes (all holes):
    a few hundred bytes of archive. tarfile cannot write one, so its header is patched."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(_header(info))
    buf[483:495] = tarfile.itn(declared, 12, tarfile.GNU_FORMAT)  # the real size
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf[:512])
    return bytes(buf)


def _raw_archive(path: Path, *members: bytes) -> Path:
    path.write_bytes(gzip.compress(b"".join(members) + bytes(1024)))
    return path


INDEX_BYTES = orjson.dumps({"format": 1, "manifests": {}, "blobs": [], "sessions": {}})


def test_a_sparse_member_declaring_10_gb_is_refused_before_anything_is_written(tmp_path):
    bad = _raw_archive(tmp_path / "sparse.tar.gz", _member(INDEX, INDEX_BYTES),
                       _sparse_member("sessions/m/x.kvs", 10 << 30))  # fmt: skip
    with tarfile.open(bad) as tar:  # what tarfile makes of it
        member = tar.getmember("sessions/m/x.kvs")
        assert member.issparse() and member.size == 10 << 30
    store = ModelStore(tmp_path / "fresh")
    with pytest.raises(ClientError, match="unexpected entry 'sessions/m/x.kvs'"):
        restore(store, bad, max_bytes=1 << 30)
    assert not (store.root / "sessions").exists()


def test_a_member_larger_than_its_kind_allows_is_refused_unread(tmp_path):
    """A manifest that says it is 10 GB (the archive ends right after its header, as a
    gzip bomb's would not): refused from the header, not read until the data runs out."""
    info = tarfile.TarInfo("manifests/x.json")
    info.size = 10 << 30
    bad = _raw_archive(tmp_path / "big.tar.gz", _header(info))
    with pytest.raises(ClientError, match=r"10737418240 bytes, at most 1048576"):
        restore(ModelStore(tmp_path / "fresh"), bad)


def test_a_backup_larger_than_the_free_space_is_refused(tmp_path):
    manifest = orjson.dumps({"name": "m", "files": []})
    bad = _raw_archive(tmp_path / "b.tar.gz", _member("manifests/m.json", manifest),
                       _member(INDEX, INDEX_BYTES))  # fmt: skip
    with pytest.raises(ClientError, match="more than the 10 bytes free"):
        restore(ModelStore(tmp_path / "fresh"), bad, max_bytes=10)


def test_the_member_count_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(backups, "MAX_MEMBERS", 3)
    members = [_member(f"sessions/m/{i}.kvs", b"x") for i in range(4)]
    bad = _raw_archive(tmp_path / "many.tar.gz", *members)
    with pytest.raises(ClientError, match="more than 3 entries"):
        restore(ModelStore(tmp_path / "fresh"), bad)


def test_a_blob_no_manifest_names_or_of_another_size_is_refused(tmp_path):
    digest = "0" * 64
    manifest = orjson.dumps({"name": "m", "files": [
        {"digest": f"sha256:{digest}", "size": 5, "filename": "m.gguf"}]})  # fmt: skip
    stray = _raw_archive(tmp_path / "stray.tar.gz", _member(f"blobs/sha256-{'1' * 64}", b"x"))
    with pytest.raises(ClientError, match="no manifest before it names this blob"):
        restore(ModelStore(tmp_path / "fresh"), stray)
    sized = _raw_archive(tmp_path / "sized.tar.gz", _member("manifests/m.json", manifest),
                         _member(f"blobs/sha256-{digest}", b"123456"))  # fmt: skip
    with pytest.raises(ClientError, match="its manifest says 5 bytes"):
        restore(ModelStore(tmp_path / "fresh"), sized)


@pytest.mark.parametrize("index", [b"[]", b'{"manifests": {"m": "x"}}', b'{"blobs": [1]}'])
def test_a_malformed_index_is_a_client_error(tmp_path, index):
    bad = _raw_archive(tmp_path / "idx.tar.gz", _member(INDEX, index))
    with pytest.raises(ClientError):
        restore(ModelStore(tmp_path / "fresh"), bad)


# ---- key files ----------------------------------------------------------------------------


def test_a_key_file_others_can_read_is_warned_about(tmp_path, caplog):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-" + "1" * 30 + "\n")
    os.chmod(keys, 0o644)
    with caplog.at_level(logging.WARNING):
        load_key_file(keys)
    assert "can be read by everyone (mode 0644)" in caplog.text and str(keys) in caplog.text
    caplog.clear()
    os.chmod(keys, 0o600)
    load_key_file(keys)
    assert caplog.text == ""


def test_a_key_file_readable_by_the_daemons_own_group_is_not_warned_about(tmp_path):
    """A Kubernetes secret with fsGroup: 0440, its group the process's own."""
    from mullama.files import warn_if_readable_by_others

    keys = tmp_path / "keys.txt"
    keys.write_text("k\n")
    os.chmod(keys, 0o440)
    os.chown(keys, os.geteuid(), os.getegid())
    assert not warn_if_readable_by_others(keys, "key file")
    os.chown(keys, os.geteuid(), OTHER_UID)
    assert warn_if_readable_by_others(keys, "key file")


# ---- GGUF metadata ------------------------------------------------------------------------


def test_a_million_string_array_is_skipped_not_materialised(tmp_path):
    path = tmp_path / "strings.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("general.tags", [""] * 1_000_000)
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_array("tokenizer.ggml.merges", ["a b"] * 1000)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tracemalloc.start()
    try:
        info = read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.get("general.tags") == "<array of 1000000>"
    assert info.get("tokenizer.ggml.merges") == "<array of 1000>"
    assert info.get("tokenizer.ggml.tokens") == [f"t{i}" for i in range(8)]  # the vocabulary
    # A list of a million strings is tens of MB; nothing of that size was built.
    assert peak < 4 << 20, peak


# ---- the CPU-share folder -----------------------------------------------------------------


def test_a_claim_file_of_another_user_is_not_counted(tmp_path):
    d = tmp_path / "share"
    me = CpuShare(d, 4)
    try:
        theirs = d / "1.deadbeef"
        fd = os.open(theirs, os.O_RDWR | os.O_CREAT, 0o644)
        os.fchown(fd, OTHER_UID, OTHER_UID)
        fcntl.flock(fd, fcntl.LOCK_EX)  # "busy", as another user's worker would be
        me.set_busy(True)
        assert me.busy_workers() == 1 and me.threads(now=0.0) == 4
        os.close(fd)
        CpuShare(d, 4).close()  # a worker starting cleans stale files: never another's
        assert theirs.exists()
        assert _mode(d) == 0o700  # this user's folder: nobody else can put files there
    finally:
        me.close()


def test_a_share_folder_of_another_user_turns_sharing_off(tmp_path):
    d = tmp_path / "share"
    d.mkdir(mode=0o1777)
    os.chown(d, OTHER_UID, OTHER_UID)
    share = CpuShare(d, 4)
    assert not share.active and share.threads() == 4
    assert list(d.iterdir()) == []  # no claim left in it


def test_the_share_folder_is_per_user(tmp_path):
    from mullama.engine.cpushare import share_dir

    assert f"-u{os.geteuid()}-" in share_dir("0-1", "host", 1, str(tmp_path)).name
