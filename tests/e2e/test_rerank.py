"""Rerank and score on the real daemon with plain HTTP clients in the shapes people send:
Cohere's and Jina's ``/v1/rerank`` and ``/rerank``, llama-server's ``/reranking``, vLLM's
``/score``. SmolLM2 (a chat model) scores as a yes/no judge: an obviously relevant
document ranks first; the test reranker (benchmarks/synthetic/make_reranker.py, a
random-weight BERT cross-encoder) orders documents as llama-server --rerank does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon
from tests.llamaserver import LlamaServer

MAKE_RERANKER = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic" / "make_reranker.py"
)

QUERY = "What is the capital of France?"
DOCS = [
    "Cats sleep for most of the day.",
    "Paris is the capital and largest city of France.",
    "The stock market fell today.",
    "Bananas are rich in potassium.",
]
RELEVANT = 1
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def daemon():
    args = ("--model", f"smol={embedded_model_path()}", "--context-size", "4096",
            "--parallel", "4")  # fmt: skip
    with Daemon(*args).wait_healthy() as d:
        yield d


def _post(d: Daemon, path: str, body: dict) -> httpx.Response:
    return httpx.post(d.url + path, json=body, timeout=TIMEOUT)


def test_cohere_shape_ranks_the_relevant_document_first(daemon):
    body = {"model": "smol", "query": QUERY, "documents": DOCS, "top_n": 2,
            "return_documents": True}  # fmt: skip
    r = _post(daemon, "/v1/rerank", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "smol" and out["id"].startswith("rerank-")
    results = out["results"]
    assert len(results) == 2  # top_n
    assert results[0]["index"] == RELEVANT
    assert results[0]["document"] == {"text": DOCS[RELEVANT]}
    assert results[1]["document"] == {"text": DOCS[results[1]["index"]]}
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(0.0 <= x["relevance_score"] <= 1.0 for x in results)
    assert out["usage"]["prompt_tokens"] > 0
    assert out["usage"]["total_tokens"] >= out["usage"]["prompt_tokens"]


def test_jina_shape_with_text_objects_scores_every_document(daemon):
    body = {"model": "smol", "query": QUERY, "documents": [{"text": t} for t in DOCS]}
    out = _post(daemon, "/rerank", body).json()
    results = out["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    assert results[0]["index"] == RELEVANT
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all("document" not in x for x in results)  # return_documents is off by default


def test_the_same_request_gets_the_same_scores_on_every_path(daemon):
    body = {"query": QUERY, "documents": DOCS}  # llama-server's: no model, the first one
    answers = [_post(daemon, p, body).json()["results"] for p in ("/reranking", "/v1/rerank")]
    first, second = ({x["index"]: x["relevance_score"] for x in a} for a in answers)
    # Other sequences in a step may change the last digits (llama.cpp's batched kernels).
    assert second == pytest.approx(first, abs=1e-2)


def test_vllm_score_pairs_in_their_order(daemon):
    out = _post(daemon, "/score", {"model": "smol", "text_1": QUERY, "text_2": DOCS}).json()
    data = out["data"]
    assert [x["index"] for x in data] == list(range(len(DOCS)))
    assert all(x["object"] == "score" for x in data)
    scores = [x["score"] for x in data]
    assert max(range(len(DOCS)), key=scores.__getitem__) == RELEVANT
    ranked = _post(daemon, "/v1/rerank", {"model": "smol", "query": QUERY, "documents": DOCS})
    by_index = {x["index"]: x["relevance_score"] for x in ranked.json()["results"]}
    assert scores == pytest.approx([by_index[i] for i in range(len(DOCS))], abs=1e-2)
    pairs = {"model": "smol", "text_1": [QUERY, "How many legs does a spider have?"],
             "text_2": [DOCS[RELEVANT], "Spiders have eight legs."]}  # fmt: skip
    data = _post(daemon, "/v1/score", pairs).json()["data"]
    assert [x["index"] for x in data] == [0, 1]
    assert data[0]["score"] == pytest.approx(scores[RELEVANT], abs=1e-2)  # the same pair


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"model": "smol", "documents": DOCS}, "query"),
        ("/v1/rerank", {"model": "smol", "query": QUERY, "documents": []}, "documents"),
        ("/rerank", {"model": "smol", "query": QUERY, "documents": ["a", 3]}, "documents[1]"),
        ("/v1/rerank", {"model": "smol", "query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ("/score", {"model": "smol", "text_1": ["a", "b"], "text_2": ["c"]}, "text_2"),
        ("/score", {"model": "smol", "text_1": "a"}, "text_2"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(daemon, path, body, param):
    r = _post(daemon, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]  # OpenAI's shape
    assert error["param"] == param and param.split("[")[0] in error["message"]


def test_an_unknown_model_is_a_404(daemon):
    r = _post(daemon, "/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and "error" in r.json()


def test_rerank_requests_are_counted_by_route(daemon):
    _post(daemon, "/v1/rerank", {"model": "smol", "query": QUERY, "documents": DOCS[:1]})
    metrics = httpx.get(daemon.url + "/metrics", timeout=TIMEOUT).text
    assert 'endpoint="/v1/rerank"' in metrics and 'endpoint="/score"' in metrics


# ---- a cross-encoder: the test reranker, against llama-server --rerank on the same file ----

PASSAGES = [
    "paris is the capital of france",
    "the dog ate my homework",
    "coffee and tea in the morning",
    "berlin is a city in germany",
    "a tree in the garden",
]


def _make_reranker():
    spec = importlib.util.spec_from_file_location("make_reranker", MAKE_RERANKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_reranker


@pytest.fixture(scope="module")
def reranker(tmp_path_factory) -> Path:
    return _make_reranker()(tmp_path_factory.mktemp("reranker") / "reranker.gguf")


def test_a_reranker_orders_by_its_scores_as_llama_server_does(reranker):
    body = {"query": "what is the capital of france", "documents": PASSAGES}
    theirs = LlamaServer("-m", str(reranker), "--rerank", "--pooling", "rank").start()
    try:
        expected = httpx.post(theirs.url + "/v1/rerank", json=body, timeout=TIMEOUT).json()
    finally:
        theirs.stop()
    with Daemon("--model", f"rr={reranker}", "--context-size", "512").wait_healthy() as d:
        ours = _post(d, "/v1/rerank", {**body, "model": "rr", "return_documents": True}).json()
        scored = _post(d, "/score", {"model": "rr", "text_1": body["query"],
                                     "text_2": PASSAGES}).json()  # fmt: skip
    order = [x["index"] for x in expected["results"]]
    assert [x["index"] for x in ours["results"]] == order
    assert [x["relevance_score"] for x in ours["results"]] == pytest.approx(
        [x["relevance_score"] for x in expected["results"]], abs=5e-3
    )
    assert [x["document"]["text"] for x in ours["results"]] == [PASSAGES[i] for i in order]
    assert ours["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    by_index = {x["index"]: x["relevance_score"] for x in ours["results"]}
    assert [x["score"] for x in scored["data"]] == pytest.approx(
        [by_index[i] for i in range(len(PASSAGES))], abs=5e-3
    )
