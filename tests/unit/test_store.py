"""The store and pulls against a stand-in Hub on 127.0.0.1 (tiny GGUF files; the e2e tests
pull and serve the real model)."""

from __future__ import annotations

import re
import tarfile

import pytest

from mullama.errors import (
    AlreadyExists,
    ClientError,
    DownloadFailed,
    InvalidParameter,
    ModelNotFound,
)
from mullama.models.backup import INDEX, backup, restore
from mullama.models.custom import create_model, parse_definition
from mullama.models.gguf import InvalidGGUF
from mullama.models.pull import Puller
from mullama.models.registry import check_model_file, resolve
from mullama.models.store import ModelStore, sha256_file
from tests.hubstub import HubServer, tiny_gguf

REPO = "owner/Tiny-GGUF"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = HubServer(with_cdn=True)
    files = tmp_path / "hubfiles"
    files.mkdir(exist_ok=True)
    server.hub.add(REPO, "tiny-Q4_K_M.gguf", tiny_gguf(files / "a.gguf", 300_000))
    server.hub.add(REPO, "tiny-Q8_0.gguf", tiny_gguf(files / "b.gguf", 2000))
    server.hub.add(REPO, "README.md", files.joinpath("README.md"))
    for i in (1, 2):
        server.hub.add(
            REPO, f"big-F16-0000{i}-of-00002.gguf", tiny_gguf(files / f"s{i}.gguf", 500 * i)
        )
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _readme(tmp_path):
    (tmp_path / "hubfiles").mkdir(exist_ok=True)
    (tmp_path / "hubfiles" / "README.md").write_text("hello")


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def test_pull_by_quant_verifies_and_lists(hub, store):
    events = []
    m = Puller(store).pull(f"hf.co/{REPO}", events.append)
    assert [f.filename for f in m.files] == ["tiny-Q4_K_M.gguf"]
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    sized = [e for e in events if "total" in e]
    assert sized[-1]["completed"] == sized[-1]["total"] == m.files[0].size
    assert store.names() == [f"hf.co/{REPO}"]
    assert resolve(f"hf.co/{REPO}", cache_dir=store.root).path == store.blob_path(m.files[0].digest)
    # the token went to the Hub only, never to the CDN
    file_requests = [r for r in hub.hub.requests if "/resolve/" in r["path"]]
    assert {r["cdn"] for r in file_requests} == {True, False}
    for r in file_requests:
        assert ("authorization" in r["headers"]) == (not r["cdn"]), r


def test_split_gguf_is_pulled_whole(hub, store):
    m = Puller(store).pull(f"hf.co/{REPO}:f16")
    assert [f.filename for f in m.files] == [
        "big-F16-00001-of-00002.gguf",
        "big-F16-00002-of-00002.gguf",
    ]
    path = resolve(f"hf.co/{REPO}:f16", cache_dir=store.root).path
    assert path.name == "big-F16-00001-of-00002.gguf"
    assert (path.parent / "big-F16-00002-of-00002.gguf").resolve().is_file()
    m2 = Puller(store).pull(f"hf:{REPO}/big-F16-00001-of-00002.gguf")
    assert [f.digest for f in m2.files] == [f.digest for f in m.files]


def test_missing_quant_lists_available(hub, store):
    with pytest.raises(Exception) as err:
        Puller(store).pull(f"hf.co/{REPO}:Q2_K")
    assert "available: F16, Q4_K_M, Q8_0" in str(err.value)


def test_interrupted_download_resumes_with_range(hub, store):
    hub.hub.faults.cut_gets = 5
    hub.hub.faults.cut_bytes = 200_000
    puller = Puller(store, attempts=2, retry_delay=0)
    with pytest.raises(DownloadFailed, match="pull again to resume"):
        puller.pull(f"hf.co/{REPO}")
    assert store.names() == []
    partials = list((store.root / "partial").glob("*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size == 400_000
    hub.hub.faults.cut_gets = 0
    m = Puller(store).pull(f"hf.co/{REPO}")
    gets = hub.hub.gets("tiny-Q4_K_M.gguf")
    assert gets[-1]["headers"]["range"] == "bytes=400000-"
    assert [g["headers"].get("range") for g in gets[:2]] == [None, "bytes=200000-"]
    assert store.names() == [f"hf.co/{REPO}"] and not list((store.root / "partial").iterdir())
    assert sha256_file(store.blob_path(m.files[0].digest)) == m.files[0].digest


def test_wrong_checksum_leaves_nothing(hub, store):
    hub.hub.faults.wrong_sha = True
    with pytest.raises(DownloadFailed, match="sha256 mismatch"):
        Puller(store).pull(f"hf.co/{REPO}")
    assert store.names() == [] and list(store.blobs()) == []
    assert not list((store.root / "partial").iterdir())


def test_rm_keeps_a_blob_another_name_uses(hub, store):
    m = Puller(store).pull(f"hf.co/{REPO}")
    store.copy(f"hf.co/{REPO}", "mine")
    store.remove(f"hf.co/{REPO}")
    assert store.blob_path(m.files[0].digest).is_file()
    assert store.remove("mine") == [m.files[0].digest]
    assert list(store.blobs()) == []


def test_a_copy_onto_itself_writes_nothing(hub, store):
    m = Puller(store).pull(f"hf.co/{REPO}")
    modified = store.get(f"hf.co/{REPO}").modified
    assert store.copy(f"hf.co/{REPO}", f"hf.co/{REPO}").files == m.files
    assert store.get(f"hf.co/{REPO}").modified == modified
    store.copy("smollm2:135m", "smollm2:135m")  # the built-in model gets no store copy
    assert store.names() == [f"hf.co/{REPO}"]
    with pytest.raises(ModelNotFound):
        store.copy("nothing-here", "nothing-here")


def test_custom_model_manifest(hub, store, tmp_path):
    Puller(store).pull(f"hf.co/{REPO}")
    d = parse_definition(
        {
            "from": f"hf.co/{REPO}",
            "system": "Be brief.",
            "template": "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:",
            "parameters": {"temperature": 0.1, "stop": "END", "num_ctx": 512},
        }
    )
    m = create_model(store, "brief", d)
    ref = resolve("brief", cache_dir=store.root)
    assert ref.system == "Be brief." and dict(ref.parameters) == {
        "temperature": 0.1,
        "stop": ["END"],
        "num_ctx": 512,
    }
    assert "{%+ if System +%}" in ref.template
    assert m.id != store.get(f"hf.co/{REPO}").id
    with pytest.raises(InvalidParameter):
        parse_definition({"from": "x", "parameters": {"temperature": "hot"}})
    with pytest.raises(InvalidParameter):
        create_model(store, "bad", parse_definition({"from": "brief", "template": "{{ .Tools }}"}))
    with pytest.raises(InvalidParameter, match="files cannot be given"):
        create_model(store, "x", parse_definition({"from": "/etc/x.gguf"}), allow_paths=False)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    good = tiny_gguf(tmp_path / "good.gguf", 4096)
    data = good.read_bytes()
    (tmp_path / "short.gguf").write_bytes(data[: len(data) - 100])
    flipped = bytearray(data)
    flipped[30] ^= 0xFF  # inside the first key's length
    (tmp_path / "flipped.gguf").write_bytes(bytes(flipped))
    for name in ("short.gguf", "flipped.gguf"):
        with pytest.raises(InvalidGGUF) as err:
            check_model_file(tmp_path / name)
        assert name in err.value.message


def test_backup_and_restore(hub, store, tmp_path):
    m = Puller(store).pull(f"hf.co/{REPO}")
    store.copy("smollm2:135m", "builtin-copy")
    target = tmp_path / "b.tar.gz"
    backup(store, target, models=True)
    fresh = ModelStore(tmp_path / "fresh")
    result = restore(fresh, target)
    assert sorted(result["models"]) == ["builtin-copy", f"hf.co/{REPO}"]
    assert fresh.blob_path(m.files[0].digest).is_file()
    assert resolve("builtin-copy", cache_dir=fresh.root).path.is_file()
    # a different model under the same name is not overwritten without force
    fresh.copy("smollm2:135m", f"hf.co/{REPO}")
    with pytest.raises(AlreadyExists):
        restore(fresh, target)
    restore(fresh, target, force=True)
    assert fresh.get(f"hf.co/{REPO}").files
    # a tampered archive is refused
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(target) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name.startswith("blobs/"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            import io

            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(ClientError, match="checksum mismatch"):
        restore(ModelStore(tmp_path / "other"), bad)


def test_backup_with_sessions_restores_the_saved_conversations(store, tmp_path):
    sessions = store.root / "sessions" / "smollm2_135m"
    sessions.mkdir(parents=True)
    (sessions / "a.kvs").write_bytes(b"MLKV" + bytes(range(256)) * 10)
    target = tmp_path / "s.tar.gz"
    assert backup(store, target)["sessions"] == {}  # only when asked
    index = backup(store, target, sessions=True)
    assert list(index["sessions"]) == ["sessions/smollm2_135m/a.kvs"]
    fresh = ModelStore(tmp_path / "fresh")
    assert restore(fresh, target)["sessions"] == 1
    restored = fresh.root / "sessions" / "smollm2_135m" / "a.kvs"
    assert restored.read_bytes() == (sessions / "a.kvs").read_bytes()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(target) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name.endswith(".kvs"):
                data = data[:-1] + b"\x00"
            import io

            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(ClientError, match="checksum mismatch in saved session"):
        restore(ModelStore(tmp_path / "other"), bad)


def _archive(path, entries) -> None:
    import io

    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "entry",
    [
        _file("../evil"),
        _file("/tmp/evil"),
        _file("manifests/../../evil"),
        _file("blobs/../../evil"),
        _file("blobs\\..\\evil"),
        _file("sessions/../../../evil.kvs"),
        _link("blobs/sha256-" + "0" * 64, "/etc/passwd"),
        _link("manifests/x", "/etc/shadow", tarfile.LNKTYPE),
        _file("elsewhere/file"),
    ],
    ids=lambda e: e[0].name + ("->" + e[0].linkname if e[0].linkname else ""),
)
def test_a_hostile_backup_archive_is_refused_and_writes_nothing(tmp_path, entry):
    """Path traversal, absolute paths, symlinks and hard links in a backup archive."""
    bad = tmp_path / "bad.tar.gz"
    _archive(bad, [_file(INDEX, b'{"manifests": {}, "blobs": []}'), entry])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ClientError, match="unexpected entry " + re.escape(repr(entry[0].name))):
        restore(ModelStore(tmp_path / "fresh"), bad)
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert [n for n in after if n not in before and n != "fresh"] == []
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_hostile_names_in_a_backup_index_and_in_manifests_are_refused(tmp_path):
    import orjson

    evil_index = {"manifests": {"../../etc/x": {"path": "manifests/x", "sha256": "0"}},
                  "blobs": []}  # fmt: skip
    bad = tmp_path / "names.tar.gz"
    _archive(bad, [_file(INDEX, orjson.dumps(evil_index)), _file("manifests/x", b"{}")])
    with pytest.raises(ClientError, match="invalid model name|model name"):
        restore(ModelStore(tmp_path / "fresh"), bad)
    bad_digest = {"manifests": {}, "blobs": ["sha256:../../../etc/passwd"]}
    _archive(bad, [_file(INDEX, orjson.dumps(bad_digest))])
    with pytest.raises(ClientError):
        restore(ModelStore(tmp_path / "fresh"), bad)
    # A manifest on disk whose blob digest or name walks out of the store is corrupt.
    from mullama.errors import ServerError
    from mullama.models.store import Manifest

    for obj in (
        {"name": "x", "files": [{"digest": "sha256:../../etc/passwd", "size": 1, "filename": "a"}]},
        {"name": "../../x", "files": []},
    ):
        with pytest.raises(ServerError, match="corrupt"):
            Manifest.from_json(orjson.dumps(obj))


def test_a_name_the_hub_does_not_have_fails_before_any_progress(hub, store):
    """Found by fuzzing: ``pulling manifest`` came before the listing, so /api/pull of an
    unknown repo answered 200 and a stream ending in an error, where a 404 belongs."""
    import asyncio

    from mullama.api.ollama.manage import ModelAdmin
    from mullama.api.ollama.schemas import PullBody
    from mullama.errors import ModelNotFound

    events = []
    with pytest.raises(ModelNotFound):
        Puller(store).pull("hf.co/owner/Missing-GGUF", events.append)
    assert events == []
    body = PullBody.model_validate({"model": "hf.co/owner/Missing-GGUF", "stream": True})
    with pytest.raises(ModelNotFound):  # an HTTP error, before the stream starts
        asyncio.run(ModelAdmin(store).pull(body))
