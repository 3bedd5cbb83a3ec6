"""benchmarks/synthetic/make_reranker.py writes the BERT rank layout llama.cpp loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "make_reranker", ROOT / "benchmarks" / "synthetic" / "make_reranker.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_keys_vocabulary_and_rank_head(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(_module().make_reranker(tmp_path / "r.gguf"))
    assert _value(reader, "general.architecture") == "bert"
    assert _value(reader, "bert.pooling_type") == int(gguf.PoolingType.RANK)
    assert _value(reader, "bert.attention.causal") is False
    assert _value(reader, "tokenizer.ggml.model") == "bert"
    tokens = _value(reader, "tokenizer.ggml.tokens")
    assert 1000 < len(tokens) < 10000
    assert tokens[101] == "[CLS]" and tokens[102] == "[SEP]" and tokens[100] == "[UNK]"
    assert "\u2581capital" in tokens and "ab" in tokens  # word start, continuation
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    assert shapes["cls.output.weight"] == [128, 1]  # ne: [n_embd, n_cls_out]
    assert shapes["cls.weight"] == [128, 128]
    assert shapes["token_types.weight"] == [128, 2]
    assert shapes["token_embd.weight"] == [128, len(tokens)]
    assert shapes["blk.1.ffn_up.weight"] == [128, 256]


def test_same_seed_same_file_other_seed_other_weights(tmp_path: Path) -> None:
    make = _module().make_reranker
    a = make(tmp_path / "a.gguf").read_bytes()
    assert make(tmp_path / "b.gguf").read_bytes() == a
    assert make(tmp_path / "c.gguf", seed=1).read_bytes() != a
