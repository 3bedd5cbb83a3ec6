"""Rank pooling on the test reranker (benchmarks/synthetic/make_reranker.py: BERT with a
classification head, bert.pooling_type = rank): the pooling read from the GGUF, each pair
tokenized as llama-server's format_prompt_rerank, the pairs of one request scored together
as each is alone, and no embeddings from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mullama.engine.embedding import Embedder
from mullama.engine.llama import Model, init_backend
from mullama.engine.messages import EmbedRequest, RankRequest, RankResult
from mullama.engine.protocol import WorkerSpec
from mullama.errors import InvalidParameter

MAKE = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic" / "make_reranker.py"
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "the dog ate my homework", "a tree", "berlin " * 30]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_reranker", MAKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.make_reranker(tmp_path_factory.mktemp("reranker") / "reranker.gguf")
    init_backend()
    model = Model(str(path))
    yield Embedder(model, WorkerSpec(name="rr", path=str(path), threads=2), 512, print)
    model.close()


def test_the_pooling_comes_from_the_gguf(reranker):
    assert reranker.pooling == "rank"
    with pytest.raises(InvalidParameter, match="pools 'rank'"):
        reranker._answer(EmbedRequest("e", ["hello"]))


def test_a_pair_is_tokenized_as_llama_server_does(reranker):
    model = reranker.model
    v = model.rank_vocab()
    assert (v.bos, v.sep) == (101, 102)  # [CLS], [SEP]
    q = model.tokenize(QUERY, add_special=False, parse_special=False)
    d = model.tokenize(DOCS[0], add_special=False, parse_special=False)
    expected = [v.bos] if v.add_bos else []
    expected += q + ([v.eos] if v.add_eos else []) + ([v.sep] if v.add_sep else [])
    expected += d + ([v.eos] if v.add_eos else [])
    assert reranker._pair(QUERY, DOCS[0], 0) == expected
    assert expected[0] == 101 and 102 in expected


def test_pairs_scored_together_equal_each_alone(reranker):
    together = reranker._answer(RankRequest("all", QUERY, DOCS))
    assert isinstance(together, RankResult) and len(together.scores) == len(DOCS)
    for i, doc in enumerate(DOCS):
        alone = reranker._answer(RankRequest(f"one{i}", QUERY, [doc]))
        # Flash attention is on for rank pooling (llama-server's speed; engine/embedding.py):
        # its CPU kernel for 64 rows or more makes a score depend on its batch by up to
        # ~5e-4 (measured), as llama-server's do; the documents' scores differ by more.
        assert together.scores[i] == pytest.approx(alone.scores[0], abs=1e-3)
    assert together.tokens == sum(len(reranker._pair(QUERY, d, 0)) for d in DOCS)
    assert len(set(together.scores)) == len(DOCS)  # a score of its own each
