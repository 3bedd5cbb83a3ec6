"""Embedding options on the real daemon through the real clients: OpenAI's ``dimensions``
(Matryoshka: cut, then unit length again; more than the model gives is a 400) and
``encoding_format: base64`` (little-endian float32s, the same floats) through the
``openai`` SDK; Ollama's ``dimensions`` and ``truncate`` through the ``ollama`` client (a
long input refused unless truncation is allowed, and then named in a header); the inputs
of one request decoded together give the vectors each gets alone; a model whose pooling
gives no single vector (--model-opt NAME:pooling=none) is refused by name on both APIs."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import ollama
import openai
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon

TEXTS = [
    "The cat sat on the mat.",
    "Quarterly revenue grew by 4%.",
    "hello",
    "Retrieval stacks need an embedder next to the reranker, and a long enough input "
    "to cross a block of rows: " * 3,
    "Paris is the capital of France.",
]
LONG = "word " * 700  # more tokens than the embedding context (512) holds


@pytest.fixture(scope="module")
def daemon():
    path = embedded_model_path()
    args = ("--model", f"smol={path}", "--model", f"pertoken={path}",
            "--model-opt", "pertoken:pooling=none", "--context-size", "512",
            "--parallel", "2")  # fmt: skip
    with Daemon(*args).wait_healthy() as d:
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0,
                       timeout=120) as client:  # fmt: skip
        yield client


@pytest.fixture(scope="module")
def oll(daemon):
    return ollama.Client(host=daemon.url, timeout=120)


def _floats(daemon, **body) -> list[list[float]]:
    r = httpx.post(daemon.url + "/v1/embeddings", json={"model": "smol", **body}, timeout=120)
    r.raise_for_status()
    return [d["embedding"] for d in r.json()["data"]]


def test_dimensions_cut_and_normalise_again(oai, daemon):
    full = _floats(daemon, input=TEXTS[0])[0]
    short = oai.embeddings.create(model="smol", input=TEXTS[0], dimensions=64).data[0].embedding
    assert len(full) == 576 and len(short) == 64
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert short == pytest.approx([x / norm for x in full[:64]], abs=1e-6)
    assert math.isclose(sum(x * x for x in short), 1.0, rel_tol=1e-5)
    assert oai.embeddings.create(model="smol", input=TEXTS[0], dimensions=576).data[
        0
    ].embedding == pytest.approx(full, abs=1e-7)


def test_more_dimensions_than_the_model_gives_is_a_400(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model="smol", input="hello", dimensions=577)
    assert err.value.body["param"] == "dimensions" and "576" in err.value.body["message"]


def test_base64_is_the_same_floats(oai, daemon):
    floats = _floats(daemon, input=TEXTS[:2])
    raw = oai.embeddings.create(model="smol", input=TEXTS[:2], encoding_format="base64")
    for item, expected in zip(raw.data, floats, strict=True):
        assert isinstance(item.embedding, str)
        decoded = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        assert decoded.tolist() == np.asarray(expected, dtype=np.float32).tolist()
    # The SDK's default: it asks for base64 and decodes it to the same floats.
    sdk = oai.embeddings.create(model="smol", input=TEXTS[:2])
    for item, expected in zip(sdk.data, floats, strict=True):
        assert item.embedding == pytest.approx(expected, abs=1e-7)


def test_inputs_of_one_request_equal_each_alone(oai):
    together = oai.embeddings.create(model="smol", input=TEXTS)
    for i, text in enumerate(TEXTS):
        alone = oai.embeddings.create(model="smol", input=text).data[0].embedding
        assert together.data[i].embedding == pytest.approx(alone, abs=1e-6)
    assert together.usage.prompt_tokens == sum(
        oai.embeddings.create(model="smol", input=t).usage.prompt_tokens for t in TEXTS
    )


def test_ollama_dimensions(oll):
    full = oll.embed(model="smol", input=TEXTS[1]).embeddings[0]
    short = oll.embed(model="smol", input=TEXTS[1], dimensions=32).embeddings[0]
    norm = math.sqrt(sum(x * x for x in full[:32]))
    assert list(short) == pytest.approx([x / norm for x in full[:32]], abs=1e-6)
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model="smol", input="hello", dimensions=1000)
    assert err.value.status_code == 400 and "dimensions" in err.value.error


def test_ollama_truncate_is_the_clients_choice_and_never_silent(oll, daemon):
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model="smol", input=["short", LONG], truncate=False)
    assert err.value.status_code == 400 and "input[1]" in err.value.error
    cut = oll.embed(model="smol", input=["short", LONG])  # Ollama's default: truncate
    assert len(cut.embeddings) == 2
    r = httpx.post(daemon.url + "/api/embed", json={"model": "smol", "input": ["short", LONG]},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.headers["mullama-inputs-truncated"] == "1"
    whole = httpx.post(daemon.url + "/api/embed", json={"model": "smol", "input": "short"},
                       timeout=120)  # fmt: skip
    assert "mullama-inputs-truncated" not in whole.headers
    # OpenAI's API never truncates: a long input is refused.
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0).embeddings.create(
            model="smol", input=LONG
        )


def test_a_per_token_model_is_refused_by_name(oai, oll):
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model="pertoken", input="hello")
    assert err.value.body["param"] == "model" and "pooling" in err.value.body["message"]
    with pytest.raises(ollama.ResponseError) as oerr:
        oll.embed(model="pertoken", input="hello")
    assert oerr.value.status_code == 400 and "pooling" in oerr.value.error


def test_llama_servers_embedding_route(daemon, oai):
    url = daemon.url + "/embedding"
    unit = httpx.post(url, json={"model": "smol", "content": TEXTS[:2]}, timeout=120).json()
    assert [item["index"] for item in unit] == [0, 1]
    expected = [d.embedding for d in oai.embeddings.create(model="smol", input=TEXTS[:2]).data]
    for item, vector in zip(unit, expected, strict=True):
        assert item["embedding"][0] == pytest.approx(vector, abs=1e-6)
    raw = httpx.post(url, json={"model": "smol", "content": TEXTS[0], "embd_normalize": -1},
                     timeout=120).json()[0]["embedding"][0]  # fmt: skip
    norm = math.sqrt(sum(x * x for x in raw))
    assert norm > 1.0 and [x / norm for x in raw] == pytest.approx(expected[0], abs=1e-6)
    # pooling none: each input's vector per token, the only API that carries them
    tokens = httpx.post(daemon.url + "/tokenize", json={"model": "smol", "prompt": "hello world"},
                        timeout=120).json()["tokens"]  # fmt: skip
    per = httpx.post(daemon.url + "/embeddings", json={"model": "pertoken", "input": "hello world"},
                     timeout=120).json()  # fmt: skip
    assert len(per) == 1 and len(per[0]["embedding"]) == len(tokens)
    assert all(len(row) == 576 for row in per[0]["embedding"])
