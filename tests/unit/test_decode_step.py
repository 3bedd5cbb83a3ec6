"""The step alone (engine/decode_step.py): what goes into one batch, and what a decoded
batch turns into (tokens sampled, text, stops, finishes, logprobs), on the fake engine."""

from __future__ import annotations

import math

import numpy as np

from mullama.engine.decode_step import SCORE_CHUNK, Emitter, build_batch, prompt_tokens
from tests.unit.fake_engine import EOG, FakeBatch, FakeCtx, FakeModel, seq


def placed(s, slot, n_past=0, order=0):
    s.slot, s.n_past, s.order = slot, n_past, order
    return s


def generating(sid, slot, out=(), **kw):
    """A sequence whose prompt is computed but its newest token: one to decode."""
    s = seq(sid, [1, 2, 3], out=out, **kw)
    return placed(s, slot, n_past=2)


def test_decode_tokens_first_then_the_shortest_prompts_in_slot_order():
    batch = FakeBatch(16)
    long, short = placed(seq("long", range(100, 140)), 0), placed(seq("short", [7, 8]), 2)
    gen = generating("gen", 1)
    plan = build_batch(batch, [long, short, gen], n_batch=16, n_quick=16)
    assert [(s.id, taken, row) for s, taken, row in plan] == [
        ("long", 13, -1),  # what the token and the short prompt left, no logits yet
        ("gen", 1, 13),
        ("short", 2, 15),
    ]
    assert [r[2] for r in batch.rows] == [0] * 13 + [1, 2, 2]
    assert batch.rows[13] == (3, 2, 1, True) and prompt_tokens(plan) == 15


def test_a_step_that_ends_a_short_prompt_stays_small():
    batch = FakeBatch(64)
    doc, turn = placed(seq("doc", range(100, 300)), 0), placed(seq("turn", range(1, 11)), 1)
    plan = build_batch(batch, [doc, turn], n_batch=64, n_quick=16)
    assert [(s.id, taken) for s, taken, _ in plan] == [("doc", 6), ("turn", 10)]


def test_a_follower_waits_and_a_scored_prompt_goes_in_chunks_with_every_logit():
    batch = FakeBatch(256)
    lead = placed(seq("lead", range(1, 201)), 0)
    follower = placed(seq("f", range(1, 201)), 1)
    follower.follows = (lead, 200)
    scored = placed(seq("scored", range(300, 400)), 2)  # the shorter: first
    scored.score_prompt = True
    plan = build_batch(batch, [lead, follower, scored], n_batch=256, n_quick=256)
    assert [(s.id, taken) for s, taken, _ in plan] == [
        ("lead", 256 - SCORE_CHUNK),
        ("scored", SCORE_CHUNK),
    ]
    assert all(r[3] for r in batch.rows if r[2] == 2) and plan[1][2] == batch.n - 1


def emitted(plan, ctx=None):
    emitter = Emitter(FakeModel(), ctx or FakeCtx())
    out = []
    emitter.emit(plan, out)
    return emitter, out


def test_a_prompt_chunk_advances_without_a_token_and_the_last_one_samples():
    s = placed(seq("s", range(1, 11), out=[5]), 0)
    emitter, out = emitted([(s, 6, -1)])
    assert (s.n_past, out, emitter.generated_total) == (6, [], 0)
    emitter.emit([(s, 4, 3)], out)
    assert s.n_past == 10 and s.tokens[-1] == 5 and emitter.generated_total == 1
    assert [(o.text, o.n_generated, o.finish) for o in out] == [("<5>", 1, None)]


def test_finishes_end_of_generation_length_and_stop_strings():
    eog = generating("eog", 0, out=[EOG])
    length = generating("len", 1, out=[6], max_tokens=1)
    stop = generating("stop", 2, out=[7], stops=["<7>"])
    emitter, out = emitted([(eog, 1, 0), (length, 1, 1), (stop, 1, 2)])
    assert [(o.id, o.text, o.finish, o.stop) for o in out] == [
        ("eog", "", "stop", None),
        ("len", "<6>", "length", None),
        ("stop", "", "stop", "<7>"),
    ]
    assert eog.tokens == [1, 2, 3] and emitter.generated_total == 3
    cancelled = generating("c", 3, out=[8])
    cancelled.cancelled = True
    assert emitted([(cancelled, 1, 3)])[1] == [] and cancelled.tokens == [1, 2, 3]


def test_a_token_s_logprob_and_alternatives_are_read_before_sampling():
    ctx = FakeCtx()
    ctx.vocab = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    s = generating("s", 0, out=[2])
    s.top_logprobs = 2
    _, out = emitted([(s, 1, 0)], ctx)
    [[piece, lp, top]] = out[0].logprobs
    assert piece == "<2>" and math.isclose(lp, math.log(0.3), rel_tol=1e-5)
    assert [t for t, _ in top] == ["<3>", "<2>"]


def test_scoring_only_reports_the_prompt_s_logprobs_and_ends():
    s = placed(seq("s", [1, 2, 3], max_tokens=0), 0)
    s.score_prompt, s.top_logprobs = True, 0
    emitter, out = emitted([(s, 3, 2)])
    [o] = out
    assert (o.finish, o.n_generated, emitter.generated_total) == ("length", 0, 0)
    assert [e[0] for e in o.logprobs] == ["<1>", "<2>", "<3>"] and o.logprobs[0][1] is None
