"""A model's request defaults: the GGUF's general.sampling.* keys (written here with the
`gguf` package, llama.cpp's own writer, as its converter writes them), a custom model's
parameters and --model-opt, in that order, under a request's own values."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from mullama.api.ollama.schemas import OLLAMA_DEFAULTS, ChatBody
from mullama.api.openai.schemas import ChatCompletionRequest
from mullama.api.profiles import Profile
from mullama.engine.protocol import SamplingParams
from mullama.models.defaults import gguf_sampling
from mullama.models.gguf import read_gguf


def _write(path: Path, extra: dict) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_token_list([f"t{i}" for i in range(16)])
    for key, (kind, value) in extra.items():
        w.add_key_value(key, value, kind)
    w.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _converted(tmp_path: Path) -> Path:
    """The keys as llama.cpp's converter writes them (int32 top_k, float32 others)."""
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_context_length(256)
    w.add_token_list([f"t{i}" for i in range(16)])
    w.add_sampling_temp(0.7)
    w.add_sampling_top_k(20)
    w.add_sampling_top_p(0.8)
    w.add_sampling_min_p(0.0)
    w.add_sampling_penalty_repeat(1.05)
    w.add_sampling_penalty_last_n(128)
    w.add_sampling_mirostat(2)  # not implemented: not read
    w.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "m.gguf"


def test_the_converters_keys_are_read_as_written(tmp_path):
    found = gguf_sampling(read_gguf(_converted(tmp_path)).metadata)
    assert found == {
        "temperature": (0.7, "general.sampling.temp"),  # the float32 0.7, not 0.699999988
        "top_k": (20, "general.sampling.top_k"),
        "top_p": (0.8, "general.sampling.top_p"),
        "min_p": (0.0, "general.sampling.min_p"),
        "repeat_penalty": (1.05, "general.sampling.penalty_repeat"),
        "repeat_last_n": (128, "general.sampling.penalty_last_n"),
    }


V = gguf.GGUFValueType


@pytest.mark.parametrize(
    ("key", "kind", "value", "read"),
    [
        ("temp", V.FLOAT32, float("nan"), None),
        ("temp", V.FLOAT32, float("inf"), None),
        ("temp", V.FLOAT32, 50.0, None),  # over a request's own bound (2)
        ("temp", V.STRING, "0.25", 0.25),  # llama.cpp parses the text of any value
        ("temp", V.STRING, "warm", None),
        ("temp", V.BOOL, True, None),
        ("top_k", V.FLOAT32, 2.5, None),  # not a whole number
        ("top_k", V.INT32, -4, None),
        ("top_k", V.UINT64, 2**40, 2**40),  # at or over the vocabulary: off (limits.bound)
        ("top_k", V.UINT64, 2**63, None),  # not a 64-bit signed integer
        ("top_p", V.FLOAT32, 0.0, None),
        ("penalty_last_n", V.INT32, -1, -1),  # the whole context, as a request's -1
    ],
)  # fmt: skip
def test_a_value_a_request_could_not_send_is_left_out(tmp_path, key, kind, value, read):
    path = _write(tmp_path / "m.gguf", {f"general.sampling.{key}": (kind, value)})
    found = gguf_sampling(read_gguf(path).metadata)
    assert [v for v, _ in found.values()] == ([] if read is None else [read])


def test_layers_lowest_first_and_where_each_comes_from():
    profile = Profile(
        parameters={"temperature": 0.3, "num_predict": 64},
        gguf={"temperature": (0.7, "general.sampling.temp"), "top_k": (20, "general.sampling.top_k")},
        opts={"top_k": 5, "seed": 11},
        max_tokens_cap=(100, "--max-tokens"),
    )  # fmt: skip
    assert profile.defaults == {"temperature": 0.3, "top_k": 5, "max_tokens": 64, "seed": 11}
    shown = profile.request_defaults(vars(SamplingParams()), "llama-server's default")
    assert shown["temperature"] == {"value": 0.3, "source": "the custom model's parameters"}
    assert shown["top_k"] == {"value": 5, "source": "--model-opt"}
    assert shown["top_p"] == {"value": 0.95, "source": "llama-server's default"}
    assert shown["seed"] == {"value": 11, "source": "--model-opt"}
    assert shown["max_tokens"] == {"value": 64, "source": "the custom model's parameters"}
    assert shown["max_tokens_cap"] == {"value": 100, "source": "--max-tokens"}
    bare = Profile(gguf={"min_p": (0.1, "general.sampling.min_p")}).request_defaults(
        {**vars(SamplingParams()), **OLLAMA_DEFAULTS}, "Ollama's default"
    )
    assert bare["min_p"] == {"value": 0.1, "source": "GGUF general.sampling.min_p"}
    assert bare["top_p"] == {"value": 0.9, "source": "Ollama's default"}
    assert bare["seed"]["value"] is None and bare["max_tokens_cap"]["value"] is None


def test_both_apis_take_the_models_defaults_under_the_requests_own():
    profile = Profile(gguf={"temperature": (0.0, "general.sampling.temp"),
                            "top_k": (1, "general.sampling.top_k")})  # fmt: skip
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": 7}
    )
    p = chat.to_sampling_params(profile, None)
    assert (p.temperature, p.top_k, p.top_p) == (0.0, 7, SamplingParams().top_p)
    body = ChatBody.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, strict=False
    )
    p = body.sampling_params(profile)
    assert (p.temperature, p.top_k, p.top_p) == (0.0, 1, OLLAMA_DEFAULTS["top_p"])
