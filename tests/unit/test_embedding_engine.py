"""The embedding thread on SmolLM2's real weights (no worker process): inputs decoded
together give the vectors each gets alone; a long input is refused or, when allowed,
truncated and named; a chat model is no reranker."""

from __future__ import annotations

import math

import pytest

from mullama.engine.embedding import MAX_SEQS, Embedder, pack
from mullama.engine.llama import Model, init_backend
from mullama.engine.messages import EmbedRequest, EmbedResult, Failed, RankRequest
from mullama.engine.protocol import WorkerSpec
from mullama.errors import MullamaError
from mullama.models.registry import embedded_model_path

TEXTS = [
    "The cat sat on the mat.",
    "Quarterly revenue grew by 4%.",
    "hello",
    "A much longer input, so that the inputs of one decode have different lengths: " * 3,
]


@pytest.fixture(scope="module")
def model():
    init_backend()
    m = Model(str(embedded_model_path()))
    yield m
    m.close()


def _embedder(model: Model, sent: list, **spec) -> Embedder:
    """An embedding thread of 256 tokens a decode (not started: ``_answer`` runs it)."""
    return Embedder(model, WorkerSpec(name="smol", path="", threads=2, **spec), 256, sent.append)


def _answer(embedder: Embedder, sent: list, request) -> EmbedResult | Failed:
    """What the thread sends for ``request`` (its loop, once, on this thread)."""
    embedder.put(request)
    req = embedder._queue.get_nowait()
    try:
        sent.append(embedder._answer(req))
    except MullamaError as exc:
        sent.append(Failed(req.id, exc))
    return sent[-1]


def test_inputs_decoded_together_equal_each_alone(model):
    sent: list = []
    embedder = _embedder(model, sent)
    together = _answer(embedder, sent, EmbedRequest("all", TEXTS))
    assert isinstance(together, EmbedResult) and len(together.vectors) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = _answer(embedder, sent, EmbedRequest(f"one{i}", [text]))
        assert together.vectors[i] == pytest.approx(alone.vectors[0], abs=1e-6)
        assert math.isclose(sum(x * x for x in alone.vectors[0]), 1.0, rel_tol=1e-4)
    assert together.tokens == sum(
        len(model.tokenize(t, add_special=True, parse_special=False)) for t in TEXTS
    )
    assert together.vectors[0] != pytest.approx(together.vectors[1], abs=1e-3)


def test_more_inputs_than_one_decode_holds(model):
    sent: list = []
    embedder = _embedder(model, sent)
    texts = [f"item number {i}" for i in range(20)]  # 16 rows each, 16 in a decode of 256
    assert len(pack([len(model.tokenize(t, True, False)) for t in texts], 256, MAX_SEQS)) == 2
    result = _answer(embedder, sent, EmbedRequest("many", texts))
    assert len(result.vectors) == len(texts)
    for i in (0, 15, 16, 19):
        alone = _answer(embedder, sent, EmbedRequest("one", texts[i : i + 1]))
        assert result.vectors[i] == pytest.approx(alone.vectors[0], abs=1e-6)


def test_a_long_input_is_refused_or_truncated_and_named(model):
    sent: list = []
    embedder = _embedder(model, sent)
    long = "word " * 300
    refused = _answer(embedder, sent, EmbedRequest("r", ["short", long]))
    assert isinstance(refused, Failed) and refused.error.param == "input"
    assert "input[1]" in str(refused.error)
    cut = _answer(embedder, sent, EmbedRequest("t", ["short", long], truncate=True))
    assert isinstance(cut, EmbedResult) and cut.truncated == [1]
    assert cut.tokens == len(model.tokenize("short", True, False)) + embedder.n_ctx


def test_a_chat_model_is_no_reranker_and_pooling_none_gives_no_embeddings(model):
    sent: list = []
    assert _embedder(model, sent).pooling == "mean"  # SmolLM2's GGUF says nothing
    refused = _answer(_embedder(model, sent), sent, RankRequest("k", "q", ["d"]))
    assert isinstance(refused, Failed) and "pools 'mean'" in str(refused.error)
    none = _embedder(model, sent, pooling="none")
    refused = _answer(none, sent, EmbedRequest("n", ["hello"]))
    assert isinstance(refused, Failed) and refused.error.param == "model"
    assert "--pooling" in str(refused.error)


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_the_pooling_asked_is_the_pooling_used(model, pooling):
    sent: list = []
    mean = _answer(_embedder(model, sent), sent, EmbedRequest("m", TEXTS[:2]))
    other = _embedder(model, sent, pooling=pooling)
    assert other.pooling == pooling
    together = _answer(other, sent, EmbedRequest("o", TEXTS[:2]))
    assert together.vectors[0] != pytest.approx(mean.vectors[0], abs=1e-3)
    alone = _answer(other, sent, EmbedRequest("a", TEXTS[1:2]))
    assert together.vectors[1] == pytest.approx(alone.vectors[0], abs=1e-6)


def test_pooling_none_gives_a_vector_per_token_when_asked(model):
    sent: list = []
    none = _embedder(model, sent, pooling="none")
    result = _answer(none, sent, EmbedRequest("t", TEXTS[:3], per_token=True))
    assert isinstance(result, EmbedResult) and result.vectors == []
    lengths = [len(model.tokenize(t, True, False)) for t in TEXTS[:3]]
    assert [len(rows) for rows in result.token_vectors] == lengths
    assert all(len(row) == 576 for rows in result.token_vectors for row in rows)
    alone = _answer(none, sent, EmbedRequest("a", TEXTS[1:2], per_token=True))
    for row, alone_row in zip(result.token_vectors[1], alone.token_vectors[0], strict=True):
        assert row == pytest.approx(alone_row, abs=1e-5)


def test_embd_normalize_minus_one_is_the_raw_pooled_vector(model):
    sent: list = []
    embedder = _embedder(model, sent)
    raw = _answer(embedder, sent, EmbedRequest("r", TEXTS[:1], norm=-1)).vectors[0]
    unit = _answer(embedder, sent, EmbedRequest("u", TEXTS[:1])).vectors[0]
    norm = math.sqrt(sum(x * x for x in raw))
    assert norm > 1.5 and [x / norm for x in raw] == pytest.approx(unit, abs=1e-7)
