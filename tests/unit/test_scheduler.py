"""The batching loop's logic with a fake engine (the real one is exercised end to end):
the Scheduler with its admission policy, slot placement and step working together."""

from __future__ import annotations

from mullama.engine.kvcache import as_tokens
from tests.unit.fake_engine import EOG, make, seq


def run(sched, steps=100):
    outs = []
    for _ in range(steps):
        if not sched.has_work():
            break
        outs.extend(sched.step())
    return outs


def test_prompt_is_chunked_to_the_batch_budget():
    sched, ctx = make(n_batch=4)
    sched.submit(seq("a", range(1, 11), out=[5, EOG]))
    run(sched)
    sizes = [len(b) for b in ctx.batches]
    assert sizes[:3] == [4, 4, 2]  # 10 prompt tokens in chunks of 4
    assert ctx.batches[2][-1][3] is True  # logits only on the last prompt token
    assert not any(r[3] for r in ctx.batches[0])


def test_new_request_joins_the_running_batch():
    sched, ctx = make(n_slots=2, n_batch=16)
    sched.submit(seq("a", [1, 2, 3], out=[5] * 20))
    sched.step()
    sched.step()
    b = seq("b", [4, 5, 6, 7], out=[6] * 3)
    sched.submit(b)
    sched.step()
    a_slot = next(s.slot for s in sched.running if s.id == "a")
    last = ctx.batches[-1]
    by_slot = {}
    for tok, pos, s, logit in last:
        by_slot.setdefault(s, []).append((tok, pos, logit))
    assert len(by_slot[a_slot]) == 1  # a: one decode token
    assert [t for t, _, _ in by_slot[b.slot]] == [4, 5, 6, 7]  # b: its whole prompt, same batch


def test_more_requests_than_slots_wait_in_fifo_order():
    sched, ctx = make(n_slots=1)
    for sid in "abc":
        sched.submit(seq(sid, [1, 2], out=[3, EOG]))
    assert sched.n_queued == 3
    sched.step()
    assert (sched.n_active, sched.n_queued) == (1, 2)
    outs = run(sched)
    finished = [o.id for o in outs if o.finish]
    assert finished == ["a", "b", "c"]


def test_max_tokens_and_eog_finish():
    sched, _ = make()
    sched.submit(seq("len", [1], out=[5, 5, 5, 5], max_tokens=2))
    sched.submit(seq("eog", [1], out=[5, EOG]))
    outs = {o.id: o for o in run(sched) if o.finish}
    assert (outs["len"].finish, outs["len"].n_generated) == ("length", 2)
    assert (outs["eog"].finish, outs["eog"].n_generated) == ("stop", 1)


def test_stop_string_ends_generation_and_is_not_emitted():
    sched, _ = make()
    sched.submit(seq("s", [1], out=[4, 5, 6, 7], stops=["<5><6>"]))
    outs = run(sched)
    assert "".join(o.text for o in outs) == "<4>"
    assert outs[-1].finish == "stop"


def test_cancel_frees_the_slot_at_the_next_step():
    sched, ctx = make(n_slots=1)
    sched.submit(seq("a", [1, 2], out=[5] * 50))
    sched.submit(seq("b", [1, 3], out=[5, EOG]))
    sched.step()
    sched.cancel("a")
    sched.step()
    assert sched.running[0].id == "b"


def test_kv_full_preempts_the_newest_and_requeues_it():
    sched, ctx = make(n_slots=2, n_batch=16, kv=12)
    sched.submit(seq("old", [1, 2, 3, 4], out=[5] * 6 + [EOG]))
    sched.step()
    sched.submit(seq("new", [1, 9, 9, 9], out=[6] * 6 + [EOG]))
    outs = run(sched, steps=200)
    finished = {o.id: o for o in outs if o.finish}
    assert finished["old"].finish == "stop" and finished["new"].finish == "stop"
    assert finished["new"].n_generated == 6
    # Preempted text is not repeated: each sequence emitted its 6 tokens exactly once.
    assert "".join(o.text for o in outs if o.id == "new") == "<6>" * 6


def test_prefix_is_reused_from_an_idle_slot():
    sched, ctx = make(n_slots=1, n_batch=64)
    sched.submit(seq("a", list(range(1, 21)), out=[5, EOG]))
    run(sched)
    n_before = len(ctx.batches)
    sched.submit(seq("b", list(range(1, 21)) + [30, 31], out=[5, EOG]))
    run(sched)
    first_b = ctx.batches[n_before]
    # Only the new tokens are decoded; the shared 20-token prefix stays in the cache.
    assert [r[0] for r in first_b] == [30, 31]
    assert first_b[0][1] == 20


def test_a_sequence_alone_that_cannot_fit_fails_cleanly():
    sched, _ = make(n_slots=1, n_batch=64, kv=3)
    sched.submit(seq("big", [1, 2, 3, 4, 5], out=[5]))
    outs = run(sched)
    assert outs[-1].finish == "error"
    assert not sched.has_work()


def test_batch_is_written_in_slot_order():
    # With one KV stream per sequence, llama.cpp cuts a batch into micro-batches of
    # consecutive sequence ids: tokens must come in slot order, whatever the admission
    # order was.
    sched, ctx = make(n_slots=3, n_batch=32)
    sched.submit(seq("a", [1, 2], out=[5, EOG]))
    sched.submit(seq("b", [3, 4], out=[6] * 30))
    sched.submit(seq("c", [8, 9], out=[7] * 30))
    sched.step()
    assert {s.id: s.slot for s in sched.running} == {"a": 0, "b": 1, "c": 2}
    run(sched, steps=2)  # "a" ends and frees slot 0
    sched.submit(seq("d", [20, 21, 22], out=[9] * 30))
    run(sched, steps=3)
    assert [s.id for s in sched.running] == ["b", "c", "d"]
    assert sched.slots[0].seq.id == "d"
    for batch in ctx.batches:
        ids = [row[2] for row in batch]
        assert ids == sorted(ids), ids
    assert [row[2] for row in ctx.batches[-1]] == [0, 1, 2]


def _gap_in_the_middle(b_prompt, host_bytes=0, c_max=40, streams=True):
    """Three sequences on slots 0, 1 and 2; the one on slot 1 ends first."""
    sched, ctx = make(n_slots=3, n_batch=256, host_bytes=host_bytes, streams=streams)
    a = seq("a", [1, 2], out=[5] * 50, max_tokens=40)
    b = seq("b", b_prompt, out=[6, 6, 6, EOG])
    c = seq("c", [8, 9], out=[7] * 50, max_tokens=c_max)
    for s in (a, b, c):  # one at a time: admitted in this order
        sched.submit(s)
        sched.step()
    assert (a.slot, b.slot, c.slot) == (0, 1, 2)
    while b.finish is None:
        sched.step()
    return sched, ctx, a, b, c


def test_a_gap_in_the_running_slots_is_closed_by_moving_the_highest():
    # Slots 0 and 2 running cost llama.cpp two micro-batches a step; 0 and 1 cost one.
    sched, ctx, a, b, c = _gap_in_the_middle([3, 4])
    before = len(ctx.batches)
    sched.step()
    assert c.slot == 1 and ctx.copies == [(2, 1)] and sched.moves == 1
    assert ctx.kv[2] == set() and sched.slots[2].cached == []  # left empty
    run(sched)
    assert a.finish == c.finish == "length" and c.n_generated == 40
    for batch in ctx.batches[before:]:
        assert {row[2] for row in batch} <= {0, 1}
    assert ctx.kv[1] == set(range(c.n_past))  # its KV moved whole, positions intact


def test_a_move_never_loses_a_history_the_ram_cache_cannot_keep():
    long = list(range(100, 200))  # a history worth keeping (MIN_SAVE tokens or more)
    sched, ctx, a, b, c = _gap_in_the_middle(long)
    sched.step()  # no RAM cache: b's history stays in slot 1, c stays on slot 2
    assert c.slot == 2 and ctx.copies == [] and sched.slots[1].cached[:100] == long
    sched, ctx, a, b, c = _gap_in_the_middle(long, host_bytes=10**9)
    sched.step()  # with one: b's history is saved first, then c moves in
    assert c.slot == 1 and sched.host.stats.saves == 1
    run(sched)
    b2 = _served(sched, seq("b2", [*b.tokens, 11], out=[EOG]))
    assert b2.reused == len(b.tokens) and sched.host.stats.hits == 1


def test_no_move_for_a_sequence_about_to_end_or_a_unified_cache():
    sched, ctx, _, _, c = _gap_in_the_middle([3, 4], c_max=8)
    sched.step()
    assert c.slot == 2 and ctx.copies == []  # too few tokens left to pay for the copy
    sched, ctx, _, _, c = _gap_in_the_middle([3, 4], streams=False)
    sched.step()
    assert c.slot == 2 and ctx.copies == []  # one pool: any ids batch together


def test_a_long_prompt_takes_big_steps_unless_a_short_one_ends_in_the_step():
    # Long prefills go in few big steps (each step is a pause for every generating
    # sequence); a step that ends a short prompt stays small, for its first token.
    sched, ctx = make(n_slots=3, n_batch=64, n_quick=16)
    talker = seq("t", [1, 2], out=[5] * 40, max_tokens=40)
    sched.submit(talker)
    sched.step()
    sched.submit(seq("doc", range(100, 300), out=[EOG]))
    sched.step()
    assert len(ctx.batches[-1]) == 64  # the talker's token and 63 of the document
    turn = seq("turn", range(500, 510), out=[6, EOG])
    sched.submit(turn)
    sched.step()
    rows = ctx.batches[-1]
    assert len(rows) == 16, rows  # 1 + the turn's 10 + 5 of the document
    assert [r[2] for r in rows].count(turn.slot) == 10 and turn.n_generated == 1
    sched.step()
    assert len(ctx.batches[-1]) == 64  # the turn generates; the document takes the rest


def _served(sched, s):
    sched.submit(s)
    run(sched, steps=200)
    return s


def test_an_overwritten_history_is_saved_to_ram_and_restored_into_another_slot():
    sched, ctx = make(n_slots=1, n_batch=64, host_bytes=10**9)
    a = _served(sched, seq("a", range(1, 101), out=[5, 6, EOG]))
    _served(sched, seq("b", range(1001, 1101), out=[5, EOG]))  # a's history is saved first
    assert sched.host.stats.saves == 1 and sched.host.stats.entries == 1
    # a's next turn: its whole history comes back from RAM (b's is saved in turn).
    a2 = _served(sched, seq("a2", [*a.tokens, 7, 8, 9], out=[EOG]))
    assert ctx.restores == [0] and sched.host.stats.hits == 1
    assert a2.reused == len(a.tokens)  # a's prompt and answer, all in KV when it ended
    assert sched.host.stats.entries == 2


def test_a_shared_prefix_is_copied_into_a_free_slot_not_cut_from_its_conversation():
    sched, ctx = make(n_slots=2, n_batch=64)
    system = list(range(1, 51))
    a = _served(sched, seq("a", [*system, *range(100, 200)], out=[EOG]))
    b = _served(sched, seq("b", [*system, *range(300, 400)], out=[EOG]))
    assert ctx.copies == [(a.slot if a.slot >= 0 else 0, 1)] and b.reused == 50
    assert sched.slots[0].cached == a.tokens  # a's conversation is still whole in slot 0


def test_the_ram_cache_stays_within_its_budget():
    budget = 25_000  # the fake's states take 100 bytes a token: one 150-token history
    sched, _ = make(n_slots=1, n_batch=64, host_bytes=budget)
    for k in range(5):
        _served(sched, seq(f"s{k}", range(1000 * k + 1, 1000 * k + 151), out=[EOG]))
        assert sched.host.stats.bytes <= budget
    assert sched.host.stats.saves == 4 and sched.host.stats.evictions == 3
    assert sched.host.stats.entries == 1


def test_a_restore_that_does_not_hold_its_positions_is_dropped_and_recomputed():
    sched, ctx = make(n_slots=1, n_batch=64, host_bytes=10**9)
    a = _served(sched, seq("a", range(1, 101), out=[EOG]))
    _served(sched, seq("b", range(1001, 1101), out=[EOG]))
    ctx.state_restore = lambda slot, data, size: ctx.kv.__setitem__(slot, {5, 6}) or True
    a2 = _served(sched, seq("a2", [*a.tokens, 7], out=[EOG]))
    assert a2.reused == 0 and sched.host.stats.failed_restores == 1
    assert sched.host.stats.hits == 0


def test_a_sliding_window_cache_that_lost_the_window_is_not_reused():
    sched, ctx = make(n_slots=1, n_batch=64, n_swa=8)
    a = _served(sched, seq("a", range(1, 41), out=[EOG]))
    # What a window-sized cache keeps: the next token (position 40) attends to 33..39,
    # and 33 and 34 are gone.
    ctx.kv[0] = {p for p in ctx.kv[0] if p >= 35}
    a2 = _served(sched, seq("a2", [*a.tokens, 7], out=[EOG]))
    assert a2.reused == 0  # recomputed, never wrong
    a3 = _served(sched, seq("a3", [*a2.tokens, 8], out=[EOG]))
    assert a3.reused == len(a2.tokens)  # a full cache (the window is there): reused


def test_a_short_prompt_is_not_held_behind_a_long_one():
    """A warm turn (few new tokens) admitted after a long new prompt gets its first token
    in the first step; the long prompt takes the rest of the budget and goes on."""
    sched, ctx = make(n_slots=2, n_batch=16)
    sched.submit(seq("long", range(100, 140), out=[5, EOG]))
    sched.submit(seq("short", range(200, 204), out=[6, EOG]))
    first = sched.step()
    assert [o.id for o in first] == ["short"]
    rows = ctx.batches[0]
    assert sum(1 for r in rows if r[0] >= 200) == 4 and sum(1 for r in rows if r[0] < 200) == 12


def test_a_warm_turn_is_admitted_before_a_long_new_prompt_but_none_starves():
    sched, ctx = make(n_slots=1, n_batch=64, host_bytes=10**9)
    a = _served(sched, seq("a", range(1, 101), out=[EOG]))
    sched.submit(seq("cold", range(500, 700), out=[EOG]))
    sched.submit(seq("warm", [*a.tokens, 7, 8], out=[EOG]))  # 2 tokens to compute
    assert [o.id for o in sched.step()] == ["warm"]  # admitted, computed and done
    assert [s.id for s in sched.waiting] == ["cold"]
    run(sched)
    # A long prompt that has waited past the limit goes first, whatever its size.
    sched.submit(old := seq("old", range(800, 1000), out=[EOG]))
    old.submitted_at -= 10
    sched.submit(seq("warm2", [*a.tokens, 7, 8, 9], out=[EOG]))
    sched.step()
    assert sched.running[0].id == "old"


def test_a_burst_sharing_a_long_prefix_computes_it_once():
    """Three conversations arrive together with the same 100-token system prompt: the
    first computes it, the others wait a step and copy it (no idle slot held it yet)."""
    sched, ctx = make(n_slots=3, n_batch=256)
    system = list(range(1, 101))
    a, b, c = (seq(k, [*system, *range(base, base + 10)], out=[5, EOG])
               for k, base in (("a", 201), ("b", 301), ("c", 401)))  # fmt: skip
    for s in (a, b, c):
        sched.submit(s)
    sched.step()
    slots = {s.id: s.slot for s in (a, b, c)}
    assert {r[2] for r in ctx.batches[0]} == {slots["a"]} and len(ctx.batches[0]) == 110
    sched.step()
    assert sorted(ctx.copies) == [(slots["a"], slots["b"]), (slots["a"], slots["c"])]
    followers = [r for r in ctx.batches[1] if r[2] != slots["a"]]
    assert len(followers) == 20 and min(r[1] for r in followers) == 100
    run(sched)
    assert (a.reused, b.reused, c.reused) == (0, 100, 100)
    for k in "bc":  # each holds the system prompt, its own 10 tokens and its answer
        assert ctx.kv[slots[k]] == set(range(111))


def test_a_follower_whose_leader_leaves_computes_the_prefix_itself():
    sched, ctx = make(n_slots=2, n_batch=32)
    system = list(range(1, 101))
    a = seq("a", [*system, 201], out=[EOG])
    b = seq("b", [*system, 301], out=[6, EOG])
    sched.submit(a)
    sched.submit(b)
    sched.step()  # a computes its first 32 tokens; b waits for the prefix
    b_slot = b.slot
    assert {r[2] for r in ctx.batches[0]} == {a.slot}
    sched.cancel("a")
    run(sched)
    assert ctx.copies == [] and b.reused == 0 and b.finish == "stop"
    rows = [r for batch in ctx.batches[1:] for r in batch if r[2] == b_slot]
    assert [r[1] for r in rows] == list(range(102))  # its whole prompt, then its answer


def test_admission_weighs_time_waited_against_the_work_left():
    """Highest response ratio next: a short turn that has waited a little goes before a
    long prompt that has waited longer, until the long one has waited far longer."""
    sched, ctx = make(n_slots=1, n_batch=64, host_bytes=10**9)
    a = _served(sched, seq("a", range(1, 101), out=[EOG]))
    for waited in (5.0, 30.0):
        # 100 tokens/s: the long prompt's service is ~2 s, the turn's ~0.1
        sched.admission.prompt_rate = 100.0
        cold = seq("cold", range(500, 700), out=[EOG])
        warm = seq("warm", [*a.tokens, 7, 8], out=[EOG])
        sched.submit(cold)
        sched.submit(warm)
        cold.submitted_at -= waited
        warm.submitted_at -= 0.5
        sched.step()
        assert [s.id for s in sched.admitted] == ["warm" if waited == 5.0 else "cold"], waited
        run(sched)


def _until(sched, done, steps=200):
    for _ in range(steps):
        if done():
            return
        sched.step()
    raise AssertionError("never happened")


def test_a_short_request_that_waited_preempts_the_longest_answer_which_resumes_from_ram():
    """Every slot generates; a short request that has waited --preempt-after takes the
    slot of the answer with most tokens left. That answer's KV goes to RAM and it resumes
    from it at the next free slot, where it stopped: nothing recomputed, nothing lost."""
    sched, ctx = make(n_slots=2, n_batch=128, host_bytes=10**9, preempt_after=0.5, n_quick=16)
    long = seq("long", range(1, 101), max_tokens=60)
    near = seq("near", range(201, 231), max_tokens=30)
    for s in (long, near):
        sched.submit(s)
    _until(sched, lambda: long.n_generated >= 3)
    fresh = seq("fresh", range(500, 510), out=[5, EOG])
    sched.submit(fresh)  # short, but it has not waited long enough: it waits for near
    _until(sched, lambda: fresh.slot >= 0)
    assert near.finish == "length" and long.slot >= 0 and sched.preemptions == 0
    run(sched)
    sched.submit(long2 := seq("long2", range(1, 101), max_tokens=60))
    sched.submit(near2 := seq("near2", range(201, 231), max_tokens=30))
    _until(sched, lambda: long2.n_generated >= 3 and near2.n_generated >= 3)
    early = seq("early", range(800, 810), out=[EOG])
    sched.submit(early)
    early.submitted_at -= 1.0
    sched.step()  # neither answer has streamed 16 tokens: not paused right after starting
    assert sched.preemptions == 0 and sched.waiting[0] is early
    sched.cancel("early")
    _until(sched, lambda: long2.n_generated >= 16)
    cold = seq("cold", range(600, 660), out=[EOG])  # 60 tokens to compute: not short
    short = seq("short", range(700, 710), out=[5, EOG])
    long_slot, at = long2.slot, len(long2.tokens)
    for s in (cold, short):
        sched.submit(s)
        s.submitted_at -= 1.0
    sched.step()
    assert sched.preemptions == 1 and short.slot == long_slot and short.n_generated == 1
    assert sched.waiting[0] is long2 and long2.parked and cold in sched.waiting
    assert sched.host.holds(as_tokens(long2.tokens[: at - 1]))  # all but its newest token
    seen = len(ctx.batches)
    _until(sched, lambda: long2.slot >= 0)  # the next free slot (short's: 2 tokens)
    back = long2.slot
    assert ctx.restores == [back]  # its state, from RAM (short's history was there)
    run(sched)
    assert long2.n_generated == 60 and near2.n_generated == 30 and short.finish == "stop"
    # It went on from its newest token (position at - 1): each position once, none of
    # its history computed again.
    positions = [r[1] for b in ctx.batches[seen:] for r in b if r[2] == back and r[1] >= 100]
    assert positions == list(range(at - 1, 159))  # its last token is sampled, not decoded
    assert sched.preemptions == 1 and cold.finish == "stop"  # cold never preempted


def test_an_answer_is_paused_at_most_once_and_one_at_a_time():
    sched, _ = make(n_slots=1, n_batch=128, preempt_after=0.5)  # no RAM cache: never
    sched.submit(long := seq("long", range(1, 101), max_tokens=30))
    _until(sched, lambda: long.n_generated >= 16)
    sched.submit(short := seq("short", range(500, 505), out=[EOG]))
    short.submitted_at -= 1.0
    sched.step()
    assert sched.preemptions == 0 and sched.waiting[0] is short
    sched, _ = make(n_slots=1, n_batch=128, host_bytes=10**9, preempt_after=0.5)
    sched.submit(long := seq("long", range(1, 101), max_tokens=40))
    _until(sched, lambda: long.n_generated >= 16)
    shorts = [seq(f"s{k}", range(500 + 10 * k, 505 + 10 * k), max_tokens=20) for k in range(2)]
    for s in shorts:
        sched.submit(s)
        s.submitted_at -= 1.0
    sched.step()
    assert sched.preemptions == 1 and sched.running == [shorts[0]]
    _until(sched, lambda: long.slot >= 0)
    # s1 waited: long was parked (one at a time); long resumes first, and runs to its end.
    assert shorts[0].finish == "length" and [s.id for s in sched.waiting] == ["s1"]
    assert sched.running == [long]
    sched.step()
    assert sched.preemptions == 1 and sched.running == [long]
    run(sched)
    assert long.n_generated == 40 and shorts[1].n_generated == 20


# ---- cache scopes: one tenant's prompts are never reused for another's -----------------


def test_an_idle_slot_is_reused_only_by_a_request_of_its_cache_scope():
    sched, ctx = make(n_slots=2, n_batch=64)
    prompt = list(range(1, 41))
    a = _served(sched, seq("a", prompt, out=[EOG], scope="A"))
    b = _served(sched, seq("b", prompt, out=[EOG], scope="B"))
    # b computed the whole prompt in the other slot: a's history is neither reused nor cut.
    assert b.reused == 0 and ctx.copies == []
    assert sorted(r[1] for batch in ctx.batches[-1:] for r in batch) == list(range(40))
    assert sched.slots[0].cached == a.tokens and sched.slots[1].cached == b.tokens
    a2 = _served(sched, seq("a2", [*prompt, 50], out=[EOG], scope="A"))
    b2 = _served(sched, seq("b2", [*prompt, 60], out=[EOG], scope="B"))
    assert (a2.reused, b2.reused) == (40, 40)
    # The unscoped namespace ("") is a scope like any other.
    c = _served(sched, seq("c", [*prompt, 70], out=[EOG]))
    assert c.reused == 0


def test_the_ram_cache_restores_a_history_only_for_its_cache_scope():
    sched, ctx = make(n_slots=1, n_batch=64, host_bytes=10**9)
    a = _served(sched, seq("a", range(1, 101), out=[EOG], scope="A"))
    _served(sched, seq("other", range(1001, 1101), out=[EOG], scope="A"))  # a's to RAM
    b = _served(sched, seq("b", [*a.tokens, 7], out=[EOG], scope="B"))
    assert b.reused == 0 and ctx.restores == [] and sched.host.stats.hits == 0
    # b's history (a's tokens and one more) is saved in its own scope: a's entry, a
    # prefix of it in another scope, is kept, and a's next turn restores it (the slot,
    # which holds b's identical tokens, is not used).
    a2 = _served(sched, seq("a2", [*a.tokens, 7], out=[EOG], scope="A"))
    assert a2.reused == len(a.tokens) and ctx.restores == [0]
    assert sched.host.holds(as_tokens(b.tokens), "B")
    assert not sched.host.holds(as_tokens(b.tokens), "A")


def test_a_running_sequence_s_prefix_is_not_copied_across_cache_scopes():
    sched, ctx = make(n_slots=2, n_batch=256)
    system = list(range(1, 101))
    a = seq("a", [*system, 201], out=[5, EOG], scope="A")
    b = seq("b", [*system, 301], out=[5, EOG], scope="B")
    sched.submit(a)
    sched.submit(b)
    sched.step()
    assert b.follows is None  # not waiting on a's prefix
    run(sched)
    assert ctx.copies == [] and (a.reused, b.reused) == (0, 0)
    # The same burst within one scope copies it (the control).
    sched, ctx = make(n_slots=2, n_batch=256)
    a, b = (seq(k, [*system, t], out=[5, EOG], scope="A") for k, t in (("a", 201), ("b", 301)))
    sched.submit(a)
    sched.submit(b)
    run(sched)
    assert ctx.copies and b.reused == 100


def test_admission_counts_only_a_history_of_the_request_s_scope_as_warm():
    """A turn whose tokens an idle slot holds goes before a short new prompt (it has
    one token to compute); the same tokens sent in another scope are a cold prompt."""
    for scope, first in (("A", "probe"), ("B", "short")):
        sched, ctx = make(n_slots=1, n_batch=64)
        a = _served(sched, seq("a", range(1, 101), out=[EOG], scope="A"))
        sched.admission.prompt_rate = 100.0  # tokens/s: 101 tokens take ~1 s, 30 tokens ~0.3 s
        probe = seq("probe", [*a.tokens, 7], out=[EOG], scope=scope)
        short = seq("short", range(500, 530), out=[EOG], scope="B")
        sched.submit(probe)
        sched.submit(short)
        probe.submitted_at -= 1.0
        short.submitted_at -= 0.5
        sched.step()
        assert [s.id for s in sched.admitted] == [first], scope
