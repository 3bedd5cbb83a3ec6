"""How adapters are given (--lora, --model-opt NAME:lora=, llama-server's flags) and what a
model with adapters is: another identity, its adapters' size in the estimate, its card."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from mullama.api.health import _model_state
from mullama.cli.llamaserver import translate
from mullama.config import Settings
from mullama.engine.protocol import GenerateRequest, SamplingParams, WorkerSpec
from mullama.errors import ClientError
from mullama.models.adapters import Adapter, card, identity, parse_adapter, parse_adapters
from mullama.models.manager import ModelManager
from mullama.models.options import parse_model_opts
from mullama.models.registry import EMBEDDED_NAME


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(b"x" * 10)
    two.write_bytes(b"y" * 20)
    return one, two


def test_path_and_scale(files: tuple[Path, Path]) -> None:
    one, _ = files
    assert parse_adapter(str(one), "--lora") == Adapter(str(one), 1.0)
    assert parse_adapter(f"{one}:0.25", "--lora") == Adapter(str(one), 0.25)
    assert parse_adapter(f" {one}:0 ", "--lora") == Adapter(str(one), 0.0)


@pytest.mark.parametrize(
    ("value", "error"),
    [("{one}:nan", "finite"), ("{one}:inf", "finite"), ("{one}.missing", "no adapter file"),
     ("{one}:x", "no adapter file")],
)  # fmt: skip
def test_refused(files: tuple[Path, Path], value: str, error: str) -> None:
    with pytest.raises(ClientError, match=error):
        parse_adapter(value.format(one=files[0]), "--lora")


def test_model_opt_lora_is_repeatable(files: tuple[Path, Path]) -> None:
    one, two = files
    opts = parse_model_opts(
        [f"smollm2:135m:lora={one}:0.5", f"smollm2:135m:lora={two}", "smollm2:135m:parallel=2"]
    )
    assert opts["smollm2:135m"].lora == (Adapter(str(one), 0.5), Adapter(str(two), 1.0))
    assert opts["smollm2:135m"].parallel == 2
    with pytest.raises(ClientError, match="NAME:lora"):
        parse_model_opts([f":lora={one}"])


def test_identity_folds_in_the_adapters(files: tuple[Path, Path]) -> None:
    one, two = files
    assert identity("sha256:base", ()) == "sha256:base"
    with_one = identity("sha256:base", parse_adapters([str(one)]))
    assert with_one != "sha256:base"
    assert with_one == identity("sha256:base", parse_adapters([str(one)]))
    assert with_one != identity("sha256:base", parse_adapters([f"{one}:0.5"]))
    assert with_one != identity("sha256:base", parse_adapters([str(two)]))
    assert with_one != identity("sha256:other", parse_adapters([str(one)]))


def test_card(files: tuple[Path, Path]) -> None:
    one, _ = files
    assert card(None) == {} and card(()) == {}
    assert card(parse_adapters([f"{one}:0.5"])) == {"adapters": [{"name": "one", "scale": 0.5}]}


def test_lora_is_the_default_models(files: tuple[Path, Path], tmp_path: Path) -> None:
    one, two = files
    manager = ModelManager(Settings(cache_dir=str(tmp_path), lora=[f"{one}:0.5"]))
    served = manager._served[EMBEDDED_NAME]
    assert served.opts.lora == (Adapter(str(one), 0.5),)
    assert served.client.spec.lora == [(str(one), 0.5)]
    assert served.client.spec.model_id.startswith("lora:")
    assert _model_state(served, {})["adapters"] == [{"name": "one", "scale": 0.5}]  # dashboard
    # --model-opt names the model's own adapters: --lora does not add to them.
    own = ModelManager(
        Settings(cache_dir=str(tmp_path), lora=[str(one)],
                 model_opt=[f"{EMBEDDED_NAME}:lora={two}"])
    )  # fmt: skip
    assert own._served[EMBEDDED_NAME].opts.lora == (Adapter(str(two), 1.0),)


def test_no_adapters_no_change(tmp_path: Path) -> None:
    served = ModelManager(Settings(cache_dir=str(tmp_path)))._served[EMBEDDED_NAME]
    assert served.opts.lora is None
    assert served.client.spec.lora == []
    assert "adapters" not in _model_state(served, {})
    assert not served.client.spec.model_id.startswith("lora:")


@pytest.mark.parametrize(
    ("argv", "out"),
    [
        (["--lora", "a.gguf"], ["--lora", "a.gguf"]),
        (["--lora", "a.gguf,b.gguf"], ["--lora", "a.gguf", "--lora", "b.gguf"]),
        (["--lora-scaled", "a.gguf:0.5,b.gguf:2"], ["--lora", "a.gguf:0.5", "--lora", "b.gguf:2"]),
        (["--lora-scaled=a.gguf:0.5"], ["--lora", "a.gguf:0.5"]),
        (["--lora-scaled", "a.gguf", "0.5", "--port", "1"],
         ["--lora", "a.gguf:0.5", "--http-port", "1"]),
    ],
)  # fmt: skip
def test_llama_server_flags(argv: list[str], out: list[str]) -> None:
    assert translate(argv, {})[0] == out


@pytest.mark.parametrize(
    "argv",
    [["--lora-scaled", "a.gguf"], ["--lora-scaled", "a.gguf:x"], ["--lora"],
     ["--lora-init-without-apply"]],
)  # fmt: skip
def test_llama_server_flags_refused(argv: list[str]) -> None:
    with pytest.raises(ClientError):
        translate(argv, {})


def test_response_cache_key_differs_from_the_bases(files: tuple[Path, Path], tmp_path):
    one, _ = files
    request = GenerateRequest("r", SamplingParams(temperature=0.0), prompt="hi")
    keys = []
    for lora in ([], [str(one)], [f"{one}:0.5"]):
        manager = ModelManager(Settings(cache_dir=str(tmp_path), response_cache=True, lora=lora))
        keys.append(asyncio.run(manager._cache_key(manager.route(EMBEDDED_NAME), request)))
    assert None not in keys and len(set(keys)) == 3


def test_worker_spec_carries_the_adapters() -> None:
    spec = WorkerSpec(name="m", path="p", lora=[("/a.gguf", 0.5), ("/b.gguf", 1.0)])
    back = WorkerSpec.from_wire(orjson.loads(orjson.dumps(spec.to_wire())))
    assert [(path, scale) for path, scale in back.lora] == spec.lora  # as the worker reads it
