"""The rerank and score routes through the app's whole ASGI stack (parsing, guards,
errors in OpenAI's shape), with a fake chat model behind them (SmolLM2 and the test
reranker answer in tests/e2e/test_rerank.py)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from mullama.config import Settings
from mullama.daemon.app import create_app
from tests.unit.test_rerank import _ChatModel

DOCS = ["a", {"text": "b"}, "c"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(Settings(cache_dir=str(tmp_path_factory.mktemp("models"))))
    fake = _ChatModel({"a": 0.2, "b": 0.9, "c": 0.5})
    fake.default_name = "m"  # type: ignore[attr-defined]
    app.state.models = fake
    return TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:8080")


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank", "/reranking",
                                  "/v1/reranking"])  # fmt: skip
def test_results_sorted_cut_to_top_n_with_their_documents(client, path):
    body = {"model": "m", "query": "q", "documents": DOCS, "top_n": 2, "return_documents": True}
    out = client.post(path, json=body).json()
    assert out["model"] == "m" and out["object"] == "list"
    assert out["results"] == [
        {"index": 1, "relevance_score": pytest.approx(0.9), "document": {"text": "b"}},
        {"index": 2, "relevance_score": pytest.approx(0.5), "document": {"text": "c"}},
    ]
    assert out["usage"] == {"prompt_tokens": 90, "total_tokens": 93}


def test_every_document_without_its_text_by_default_and_the_first_model(client):
    out = client.post("/v1/rerank", json={"query": "q", "documents": DOCS}).json()
    assert [r["index"] for r in out["results"]] == [1, 2, 0]
    assert all("document" not in r for r in out["results"]) and out["model"] == "m"


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_data_in_the_pairs_order(client, path):
    out = client.post(path, json={"model": "m", "text_1": "q", "text_2": ["a", "b"]}).json()
    assert [(d["index"], d["object"]) for d in out["data"]] == [(0, "score"), (1, "score")]
    assert [d["score"] for d in out["data"]] == pytest.approx([0.2, 0.9])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
        ("/rerank", {"documents": ["a"]}, "query"),
        ("/reranking", {"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ("/score", {"text_1": ["q", "r"], "text_2": ["a", "b", "c"]}, "text_2"),
    ],
)
def test_bad_input_is_a_400_in_openais_shape(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
