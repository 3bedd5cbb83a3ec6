"""The pooling a model's embeddings use: --pooling (llama-server's flag, passed through),
llama-server's --rerank, --model-opt NAME:pooling=, each checked by the flag's own rule."""

from __future__ import annotations

import pytest

from mullama.cli.llamaserver import translate
from mullama.config import load_settings
from mullama.errors import ClientError
from mullama.models.options import ModelOptions, parse_model_opts


def test_pooling_flag_and_its_default():
    assert load_settings({}).pooling is None  # the GGUF's, else mean
    assert load_settings({"pooling": "cls"}).pooling == "cls"
    with pytest.raises(ValueError):
        load_settings({"pooling": "max"})


def test_model_opt_pooling_over_the_flag():
    settings = load_settings({"pooling": "last"})
    own = parse_model_opts(["m:pooling=rank"])["m"]
    assert own.with_defaults(settings).pooling == "rank"
    assert ModelOptions().with_defaults(settings).pooling == "last"
    assert ModelOptions().with_defaults(load_settings({})).pooling is None
    with pytest.raises(ClientError, match="pooling"):
        parse_model_opts(["m:pooling=max"])


def test_llama_server_pooling_and_rerank_flags():
    assert translate(["--pooling", "cls"], env={})[0] == ["--pooling", "cls"]
    for flag in ("--rerank", "--reranking"):
        out = translate(["-m", "r.gguf", flag], env={})[0]
        assert out[out.index("--pooling") + 1] == "rank"
