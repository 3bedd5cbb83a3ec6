"""A custom model's adapters (YAML ``adapters:``, /api/create's ``adapters``): copied into
the store as blobs, kept by garbage collection, part of the model's digest, served with
the model."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import orjson
import pytest

from mullama.config import Settings
from mullama.errors import InvalidName, InvalidParameter, ModelNotFound
from mullama.models.adapters import Adapter
from mullama.models.custom import create_model, parse_definition
from mullama.models.manager import ModelManager
from mullama.models.registry import EMBEDDED_NAME, resolve
from mullama.models.store import Manifest, ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def adapter_file(tmp_path: Path) -> Path:
    path = tmp_path / "pirate.gguf"
    path.write_bytes(b"GGUF-adapter-bytes")
    return path


def _create(
    store: ModelStore, name: str, adapters: list[str], base: str = EMBEDDED_NAME, **kw
) -> Manifest:
    definition = parse_definition({"from": base, "adapters": adapters})
    return create_model(store, name, definition, **kw)


def test_adapter_file_becomes_a_blob(store: ModelStore, adapter_file: Path) -> None:
    m = _create(store, "pirate", [f"{adapter_file}:0.5"])
    [ref] = m.adapters
    assert ref.scale == 0.5 and ref.filename == "pirate.gguf"
    assert store.blob_path(ref.digest).read_bytes() == adapter_file.read_bytes()
    ref_model = resolve("pirate", cache_dir=store.root)
    assert ref_model.lora == (Adapter(str(store.blob_path(ref.digest)), 0.5),)
    # A model built on it keeps its adapters and adds its own.
    child = _create(store, "pirate2", [ref.digest], base="pirate")
    assert [(a.digest, a.scale) for a in child.adapters] == [(ref.digest, 0.5), (ref.digest, 1.0)]
    store.remove("pirate")
    assert store.blob_path(ref.digest).is_file()  # pirate2 still uses it
    store.remove("pirate2")
    assert not store.blob_path(ref.digest).is_file()


def test_adapters_change_the_digest_only_when_present(store: ModelStore, adapter_file: Path):
    plain = _create(store, "plain", [])
    content = asdict(plain)
    for key in ("name", "modified", "source", "parent", "adapters"):
        content.pop(key)
    before = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert plain.digest == before  # as before adapters existed
    assert _create(store, "with", [str(adapter_file)]).digest != plain.digest
    assert Manifest.from_json(store.manifest_path("with").read_bytes()).adapters


def test_over_the_api_only_blobs(store: ModelStore, adapter_file: Path) -> None:
    with pytest.raises(InvalidParameter, match="files cannot be given"):
        _create(store, "x", [str(adapter_file)], allow_paths=False)
    with pytest.raises(ModelNotFound, match="not in the store"):
        _create(store, "x", ["sha256:" + "0" * 64], allow_paths=False)
    with pytest.raises(InvalidName):
        _create(store, "x", ["sha256:nothex"], allow_paths=False)
    digest = store.import_file(adapter_file).digest
    m = _create(store, "x", [f"{digest}:2"], allow_paths=False)
    assert [(a.digest, a.scale) for a in m.adapters] == [(digest, 2.0)]


def test_served_with_its_adapters(store: ModelStore, adapter_file: Path, tmp_path: Path):
    _create(store, "pirate", [f"{adapter_file}:0.5"])
    other = tmp_path / "other.gguf"
    other.write_bytes(b"other")
    manager = ModelManager(
        Settings(cache_dir=str(store.root), model=["pirate"],
                 model_opt=[f"pirate:lora={other}"])
    )  # fmt: skip
    spec = manager._served["pirate"].client.spec
    blob = store.blob_path(store.get("pirate").adapters[0].digest)
    assert spec.lora == [(str(blob), 0.5), (str(other), 1.0)]


def test_a_missing_adapter_blob_is_named(store: ModelStore, adapter_file: Path) -> None:
    m = _create(store, "pirate", [str(adapter_file)])
    store.blob_path(m.adapters[0].digest).unlink()
    with pytest.raises(ModelNotFound, match="missing from the store"):
        resolve("pirate", cache_dir=store.root)
