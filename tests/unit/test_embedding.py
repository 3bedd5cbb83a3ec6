"""The embedding thread's pure parts: packing inputs into decodes, fitting an input
(refused or truncated, never silently), the pooling a model uses; and the worker frames."""

import pytest

from mullama.engine.embedding import ALIGN, POOLINGS, aligned, fit_input, model_pooling, pack
from mullama.engine.messages import (
    EmbedRequest,
    EmbedResult,
    RankRequest,
    RankResult,
    read_command,
    read_event,
)
from mullama.engine.protocol import embd_normalize, shorten
from mullama.errors import ContextLengthExceeded, InvalidParameter
from mullama.requestctx import TRUNCATED_HEADER, RequestContext


def test_pack_groups_consecutive_inputs_within_the_batch_and_the_sequences():
    assert pack([], 128, 4) == []
    assert pack([16, 32, 48], 128, 4) == [range(0, 3)]
    assert pack([64, 48, 32, 16], 128, 4) == [range(0, 2), range(2, 4)]
    assert pack([1] * 9, 128, 4) == [range(0, 4), range(4, 8), range(8, 9)]
    assert pack([128, 128], 128, 8) == [range(0, 1), range(1, 2)]


def test_each_input_takes_whole_blocks_of_rows():
    assert ALIGN == 16
    assert [aligned(n) for n in (1, 15, 16, 17, 2048)] == [16, 16, 16, 32, 2048]
    # 7 inputs of 17 tokens take 32 rows each: 4 fit in 128
    assert pack([17] * 7, 128, 64) == [range(0, 4), range(4, 7)]


def test_pack_covers_every_input_once_in_order():
    lengths = [(i * 37) % 90 + 1 for i in range(200)]
    groups = pack(lengths, 256, 16)
    assert [i for g in groups for i in g] == list(range(200))
    for g in groups:
        assert sum(aligned(lengths[i]) for i in g) <= 256 and len(g) <= 16


def test_fit_input_refuses_unless_truncation_is_allowed():
    assert fit_input([1, 2, 3], 3, False, "input[0]", "input") == [1, 2, 3]
    with pytest.raises(ContextLengthExceeded) as err:
        fit_input([1, 2, 3, 4], 3, False, "input[2]", "input")
    assert "input[2] has 4 tokens" in str(err.value) and err.value.param == "input"
    assert fit_input([1, 2, 3, 4], 3, True, "input[0]", "input") == [1, 2, 3]
    with pytest.raises(InvalidParameter):
        fit_input([], 3, True, "input[0]", "input")


def test_model_pooling_the_flag_then_the_gguf_then_mean():
    assert model_pooling("cls", "1") == "cls"
    assert model_pooling(None, "4") == "rank"
    assert model_pooling(None, "2") == "cls"
    assert model_pooling(None, None) == "mean"
    assert model_pooling(None, "-1") == "mean"  # unspecified
    assert model_pooling(None, "junk") == "mean"
    assert POOLINGS == {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}  # llama.h


def test_embed_and_rank_frames_round_trip():
    for cmd in (EmbedRequest("e#1", ["a", "b"], True), RankRequest("r#1", "q", ["d1", "d2"])):
        assert read_command(cmd.to_wire()) == cmd
    for ev in (EmbedResult("e#1", [[0.5]], 3, [1]), RankResult("r#1", [0.1, -2.0], 9)):
        assert read_event(ev.to_wire()) == ev
    # a result from a worker that reports no truncation
    assert read_event({"ev": "embed", "id": "e", "vectors": [], "tokens": 0}).truncated == []


def test_shorten_is_matryoshka_and_refuses_more_than_the_model_gives():
    vectors = [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]]
    assert shorten(vectors, None) is vectors
    assert shorten(vectors, 3) == vectors
    assert shorten(vectors, 1) == [[1.0], [0.0]]  # a zero vector stays zero
    two = shorten([[3.0, 4.0, 12.0]], 2)
    assert two == [pytest.approx([0.6, 0.8])]
    with pytest.raises(InvalidParameter) as err:
        shorten(vectors, 4)
    assert err.value.param == "dimensions" and "have 3" in str(err.value)


def test_truncated_inputs_are_named_in_a_response_header():
    ctx = RequestContext()
    assert TRUNCATED_HEADER.encode() not in dict(ctx.response_headers())
    ctx.inputs_truncated += [0, 3]
    assert dict(ctx.response_headers())[TRUNCATED_HEADER.encode()] == b"0,3"


def test_embd_normalize_as_llama_server():
    v = [3.0, -4.0]
    assert embd_normalize(v, -1) == v
    assert embd_normalize(v, 2) == pytest.approx([0.6, -0.8])
    assert embd_normalize(v, 1) == pytest.approx([3 / 7, -4 / 7])  # taxicab
    assert embd_normalize(v, 0) == pytest.approx([3 * 32760 / 4, -32760.0])  # int16 range
    p3 = (27 + 64) ** (1 / 3)
    assert embd_normalize(v, 3) == pytest.approx([3 / p3, -4 / p3])
    assert embd_normalize([1e-3, 2e-3], 1000) == pytest.approx([0.5, 1.0], rel=1e-3)
    assert embd_normalize([0.0, 0.0], 2) == [0.0, 0.0]
