"""Model names: aliases, NAME:TAG-QUANT, hf.co/ and hf: forms, and every unsafe name refused
before the file system is touched."""

from __future__ import annotations

import pytest

from mullama.errors import InvalidName, ModelNotFound
from mullama.models.aliases import ALIASES, check_hub_filename, hub_source
from mullama.models.registry import resolve
from mullama.models.store import ModelStore

BAD_NAMES = [
    "../etc/passwd",
    "a/../../b",
    "..",
    "/etc/passwd",
    "C:\\models\\x",
    "a\\b",
    "%2e%2e/x",
    "x%2Fy",
    "nul\x00byte",
    "new\nline",
    "tab\there",
    "esc\x1b[31m",
    "",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_any_file_system_call(name, tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "never-created")

    def boom(*a, **k):
        raise AssertionError("the file system was touched")

    monkeypatch.setattr("pathlib.Path.read_bytes", boom)
    monkeypatch.setattr("pathlib.Path.mkdir", boom)
    with pytest.raises(InvalidName):
        store.get(name)
    with pytest.raises(InvalidName):
        hub_source(name)
    with pytest.raises((InvalidName, ModelNotFound)):
        store.copy("smollm2:135m", name)
    assert not (tmp_path / "never-created").exists()


@pytest.mark.parametrize(
    "name", ["../x.gguf", "/abs/x.gguf", "a\\b.gguf", "%2e%2e/x.gguf", "a\x00.gguf"]
)
def test_bad_hub_filenames(name):
    with pytest.raises(InvalidName):
        check_hub_filename(name)
    with pytest.raises(InvalidName):
        hub_source(f"hf:owner/repo/{name}")


def test_aliases_cover_the_issue_list():
    for name in [
        "smollm2:135m",
        "llama3.2:1b",
        "llama3.2:3b",
        "qwen2.5:0.5b",
        "qwen2.5:1.5b",
        "qwen2.5:7b",
        "mistral:7b",
        "gemma2:2b",
        "phi3.5:3.8b",
        "nomic-embed",
    ]:
        assert name in ALIASES
        assert hub_source(name).quant == "Q4_K_M"


def test_name_forms():
    assert hub_source("llama3.2:1b-q8_0").quant == "Q8_0"
    assert hub_source("llama3.2:1b-q8_0").repo == ALIASES["llama3.2:1b"][0]
    src = hub_source("hf.co/Owner/Repo-GGUF")
    assert (src.repo, src.quant) == ("Owner/Repo-GGUF", "Q4_K_M")
    assert hub_source("hf.co/Owner/Repo-GGUF:iq2_xs").quant == "IQ2_XS"
    src = hub_source("hf:Owner/Repo/sub/model-Q5_K_M.gguf")
    assert (src.repo, src.filename) == ("Owner/Repo", "sub/model-Q5_K_M.gguf")
    assert hub_source("my-custom-model") is None


def test_embedded_model_needs_no_store(tmp_path):
    ref = resolve("smollm2:135m", cache_dir=tmp_path / "empty")
    assert ref.path.is_file()
    assert not (tmp_path / "empty").exists()


def test_unknown_name_lists_close_matches(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        resolve("llama3.2:1", cache_dir=tmp_path)
    assert "did you mean" in err.value.message and "llama3.2:1b" in err.value.message


def test_known_but_not_pulled(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        resolve("qwen2.5:0.5b", cache_dir=tmp_path)
    assert "mullama pull qwen2.5:0.5b" in err.value.message
