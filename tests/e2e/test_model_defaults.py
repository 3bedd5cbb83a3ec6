"""A model's own request defaults through the real daemon: the GGUF's general.sampling.*
keys (a copy of SmolLM2 with the keys llama.cpp's converter writes from a model's
generation_config.json), applied where a request sets nothing and shown by /api/show and
/props with where each comes from."""

from __future__ import annotations

from pathlib import Path

import gguf
import httpx
import openai
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon


def with_sampling_keys(dst: Path, temp: float, top_k: int) -> Path:
    """SmolLM2 as it is, plus general.sampling.temp and .top_k (llama.cpp's writer)."""
    reader = gguf.GGUFReader(str(embedded_model_path()))
    writer = gguf.GGUFWriter(str(dst), arch=str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_sampling_temp(temp)
    writer.add_sampling_top_k(top_k)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return dst


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    return with_sampling_keys(tmp_path_factory.mktemp("gguf") / "tuned.gguf", 0.0, 1)


def test_the_ggufs_sampling_keys_are_the_models_defaults(tuned):
    with Daemon("--model", f"tuned={tuned}", "--model-opt", "tuned:top_p=0.5",
                "--context-size", "1024", "--parallel", "2").wait_healthy() as d:  # fmt: skip
        shown = httpx.post(d.url + "/api/show", json={"model": "tuned"}).json()
        defaults = shown["request_defaults"]
        for side in ("openai", "ollama"):
            assert defaults[side]["temperature"] == {
                "value": 0.0, "source": "GGUF general.sampling.temp"}  # fmt: skip
            assert defaults[side]["top_k"] == {"value": 1, "source": "GGUF general.sampling.top_k"}
            assert defaults[side]["top_p"] == {"value": 0.5, "source": "--model-opt"}
        assert defaults["openai"]["min_p"] == {"value": 0.05, "source": "llama-server's default"}
        assert defaults["ollama"]["min_p"] == {"value": 0.0, "source": "Ollama's default"}
        assert shown["model_info"]["general.sampling.temp"] == 0.0

        # Greedy where the request sets nothing: the same answer each time, the one a
        # request asking for temperature 0 gets.
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        chat = {"model": "tuned", "max_tokens": 12,
                "messages": [{"role": "user", "content": "Write a poem about rain."}]}  # fmt: skip
        texts = {client.chat.completions.create(**chat).choices[0].message.content
                 for _ in range(3)}  # fmt: skip
        texts.add(client.chat.completions.create(**chat, temperature=0).choices[0].message.content)
        assert len(texts) == 1, texts
        params = httpx.get(d.url + "/props", params={"model": "tuned"}).json()[
            "default_generation_settings"]["params"]  # fmt: skip
        assert (params["temperature"], params["top_k"], params["top_p"]) == (0.0, 1, 0.5)
