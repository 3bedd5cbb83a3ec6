"""api/rerank.py without a model: the request shapes (Cohere/Jina rerank, vLLM score),
their 400s naming the field, and the yes/no score read from a first token's entry."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from mullama.api.body import validate
from mullama.api.rerank import (
    MAX_PAIRS,
    RerankRequest,
    ScoreRequest,
    judge_chat,
    score_pairs,
    yes_probability,
)
from mullama.engine.protocol import Chunk, SamplingParams
from mullama.errors import InvalidParameter


def _lp(p: float) -> float:
    return math.log(p)


def test_yes_against_no_summed_over_their_spellings():
    top = [[" Yes", _lp(0.4)], ["no", _lp(0.2)], ["yes", _lp(0.2)], ["maybe", _lp(0.1)],
           [" No", _lp(0.05)]]  # fmt: skip
    assert yes_probability([["Yes", _lp(0.4), top]]) == pytest.approx(0.6 / 0.85)


def test_a_side_missing_from_the_top_counts_as_the_least_of_them():
    top = [["yes", _lp(0.5)], ["the", _lp(0.3)], ["a", _lp(0.01)]]
    assert yes_probability([["yes", _lp(0.5), top]]) == pytest.approx(0.5 / 0.51)
    neither = [["the", _lp(0.5)], ["a", _lp(0.2)]]
    assert yes_probability([["the", _lp(0.5), neither]]) == pytest.approx(0.5)


def test_no_entry_scores_zero():
    assert yes_probability([]) == 0.0


def test_bytes_tokens_are_read_as_text():
    top = [[list(b" yes"), _lp(0.75)], [list(b"No"), _lp(0.25)]]
    assert yes_probability([[list(b" yes"), _lp(0.75), top]]) == pytest.approx(0.75)


def test_documents_as_strings_or_text_objects():
    req = validate(RerankRequest, {"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1})
    assert req.texts() == ["a", "b"] and req.top_n == 1 and req.model is None
    assert req.return_documents is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": [1]}, "documents[0]"),
        ({"query": "q", "documents": [{"title": "t"}]}, "documents[0].text"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ({"query": "q", "documents": ["a"] * (MAX_PAIRS + 1)}, "documents"),
    ],
)
def test_bad_rerank_requests_name_the_field(body, param):
    with pytest.raises(InvalidParameter) as info:
        validate(RerankRequest, body)
    assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize(
    ("text_1", "text_2", "pairs"),
    [
        ("q", "d", [("q", "d")]),
        ("q", ["a", "b"], [("q", "a"), ("q", "b")]),
        (["q"], ["a", "b"], [("q", "a"), ("q", "b")]),
        (["q", "r"], ["a", "b"], [("q", "a"), ("r", "b")]),
    ],
)
def test_score_pairs_as_vllm_makes_them(text_1, text_2, pairs):
    assert validate(ScoreRequest, {"text_1": text_1, "text_2": text_2}).pairs() == pairs


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text_1": ["q", "r"], "text_2": ["a"]}, "text_2"),
        ({"text_1": ["q", "r"], "text_2": "a"}, "text_2"),
        ({"text_1": [], "text_2": "a"}, "text_1"),
        ({"text_1": "q"}, "text_2"),
        ({"text_1": 3, "text_2": "a"}, "text_1"),
    ],
)
def test_bad_score_requests_name_the_field(body, param):
    with pytest.raises(InvalidParameter) as info:
        validate(ScoreRequest, body)
    assert info.value.param == param


def test_the_judge_asks_one_greedy_token_with_its_alternatives():
    chat = judge_chat("m", "capital of {France}", "Paris {query}")
    [turn] = chat.turns(False)
    assert turn["role"] == "user"
    assert "Query: capital of {France}" in turn["content"]
    assert "Document: Paris {query}" in turn["content"]
    params = chat.sampling(None)
    assert isinstance(params, SamplingParams)
    assert params.max_tokens == 1 and params.temperature == 0.0 and params.ignore_eos
    assert params.logprobs == 20
    assert chat.think.on is False and chat.default_system is False


class _Reranker:
    """A model manager whose model is a reranker: each document's score is its length
    (a fake of ModelManager.rerank; the engine's rank pooling runs in the e2e tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def rerank(self, name, query, documents, keep_alive=None):
        self.calls.append((query, documents))
        return SimpleNamespace(scores=[float(len(d)) for d in documents], prompt_tokens=10)


def test_a_reranker_scores_the_documents_of_each_query_together():
    models = _Reranker()
    pairs = [("q", "a"), ("r", "bbb"), ("q", "cc"), ("r", "dddd")]
    scored = asyncio.run(score_pairs(models, "m", pairs, "rid"))  # type: ignore[arg-type]
    assert models.calls == [("q", ["a", "cc"]), ("r", ["bbb", "dddd"])]
    assert scored.scores == [1.0, 3.0, 2.0, 4.0]  # in the pairs' order
    assert scored.usage() == {"prompt_tokens": 20, "total_tokens": 20}


class _ChatModel:
    """A model manager whose model is a chat model (no reranker): each relevance question
    is answered with the odds of "yes" the test gives for its document, as the top
    alternatives of the first token (a fake of the engine; SmolLM2 judges in the e2e
    tests)."""

    def __init__(self, odds: dict[str, float]) -> None:
        self.odds = odds
        self.requests: list = []

    def route(self, name):
        return name

    def remote(self, name):
        return None

    def find(self, name):
        raise LookupError(name)  # profile_of: the empty profile

    async def rerank(self, name, query, documents, keep_alive=None):
        return None

    def generate(self, target, request, keep_alive=None):
        self.requests.append(request)
        return self._answer(request)

    async def _answer(self, request):
        [turn] = request.messages
        p = next(p for doc, p in self.odds.items() if f"Document: {doc}" in turn["content"])
        top = [["Yes", math.log(p * 0.9)], [" no", math.log((1 - p) * 0.9)], ["I", math.log(0.1)]]
        yield Chunk(prompt_tokens=30)
        yield Chunk("Yes", 1, 30, "length", logprobs=[["Yes", top[0][1], top]])


def test_a_chat_model_judges_every_pair_in_one_burst():
    models = _ChatModel({"a": 0.2, "b": 0.9, "c": 0.5})
    pairs = [("q", "a"), ("q", "b"), ("q", "c")]
    scored = asyncio.run(score_pairs(models, "m", pairs, "rid"))  # type: ignore[arg-type]
    assert scored.scores == pytest.approx([0.2, 0.9, 0.5])
    assert scored.usage() == {"prompt_tokens": 90, "total_tokens": 93}
    assert len({r.request_id for r in models.requests}) == 3
    for r in models.requests:
        assert r.params.max_tokens == 1 and r.params.logprobs == 20 and r.params.ignore_eos
