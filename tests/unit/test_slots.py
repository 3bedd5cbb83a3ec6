"""Slot placement and the KV cache alone (engine/slots.py), on the fake context: where a
sequence goes and how much of its prompt is already there; what a slot keeps, saves,
moves and frees."""

from __future__ import annotations

from mullama.engine.kvcache import HostCache, as_tokens
from mullama.engine.slots import MIN_SAVE, KVSlots
from tests.unit.fake_engine import FakeCtx, seq


def slots(n=2, host_bytes=0, n_swa=0, streams=True):
    ctx = FakeCtx()
    return KVSlots(ctx, n, HostCache(host_bytes), n_swa=n_swa, streams=streams), ctx


def idle(kv, ctx, index, tokens, last_used=1.0, scope=""):
    """Slot ``index`` holds ``tokens`` in KV, idle."""
    slot = kv.slots[index]
    slot.cached, slot.last_used, slot.scope = list(tokens), last_used, scope
    ctx.kv[index] = set(range(len(tokens)))


def running(kv, ctx, s, index, computed):
    """``s`` runs on slot ``index`` with its first ``computed`` tokens in KV."""
    kv.occupy(kv.slots[index], s)
    s.n_past = computed
    ctx.kv[index] = set(range(computed))


def test_an_idle_slot_s_shared_prefix_is_kept_and_the_rest_cut():
    kv, ctx = slots()
    idle(kv, ctx, 1, range(1, 31))
    s = seq("s", [*range(1, 21), 99])
    slot, reused = kv.place(s, kv.free(set()), set(), [])
    assert (slot.index, reused) == (1, 20) and ctx.kv[1] == set(range(20))
    whole = seq("w", range(1, 21))  # a full hit: the last token is decoded for logits
    idle(kv, ctx, 1, range(1, 21))
    assert kv.place(whole, kv.free(set()), set(), [])[1] == 19


def test_nothing_is_shared_across_cache_scopes_or_with_a_prompt_to_score():
    kv, ctx = slots()
    idle(kv, ctx, 1, range(1, 31), scope="A")
    other = seq("b", range(1, 31), scope="B")
    slot, reused = kv.place(other, kv.free(set()), set(), [])
    assert (slot.index, reused) == (0, 0) and kv.slots[1].cached  # A's history intact
    scoring = seq("p", range(1, 31), scope="A")
    scoring.score_prompt = True
    assert kv.place(scoring, kv.free(set()), set(), [])[1] == 0


def test_a_prefix_is_copied_out_of_a_longer_history_into_an_empty_slot():
    kv, ctx = slots()
    idle(kv, ctx, 0, range(1, 201))  # a conversation of 200 tokens
    s = seq("s", [*range(1, 51), 999])  # shares its 50-token system prompt
    sources: set[int] = set()
    slot, reused = kv.place(s, kv.free(sources), sources, [])
    assert (slot.index, reused) == (1, 50) and ctx.copies == [(0, 1)] and sources == {0}
    assert ctx.kv[0] == set(range(200))  # the conversation is not cut


def test_a_state_in_ram_is_restored_when_it_spares_enough():
    kv, ctx = slots(n=1, host_bytes=10**9)
    history = list(range(1, 101))
    kv.host.put(as_tokens(history), frozenset(range(100)), 100)
    slot, reused = kv.place(seq("s", [*history, 7]), kv.free(set()), set(), [])
    assert (slot.index, reused) == (0, 100) and ctx.restores == [0]
    assert kv.host.stats.hits == 1
    kv.place(seq("miss", range(500, 600)), kv.free(set()), set(), [])
    assert kv.host.stats.misses == 1


def test_a_prefix_a_running_sequence_is_computing_is_followed_not_recomputed():
    kv, ctx = slots(n=3)
    lead = seq("lead", [*range(1, 101), 201])
    running(kv, ctx, lead, 0, 32)  # 32 of its 101 tokens computed so far
    s = seq("s", [*range(1, 101), 301])
    slot, reused = kv.place(s, kv.free(set()), set(), [lead])
    assert reused == 0 and s.follows == (lead, 100) and ctx.copies == []
    kv.occupy(slot, s)
    lead.n_past = 101
    ctx.kv[0] = set(range(101))
    kv.join(s, lead, 100)
    assert s.n_past == 100 and ctx.copies == [(0, slot.index)]
    assert ctx.kv[slot.index] == set(range(100))


def test_a_history_worth_keeping_is_saved_before_it_is_overwritten():
    kv, ctx = slots(n=1, host_bytes=10**9)
    idle(kv, ctx, 0, range(1, MIN_SAVE + 11))
    kv.place(seq("other", range(500, 510)), kv.free(set()), set(), [])
    assert kv.host.holds(as_tokens(list(range(1, MIN_SAVE + 11))))
    kv, ctx = slots(n=1, host_bytes=10**9)
    idle(kv, ctx, 0, range(1, 11))  # too short to be worth a save
    kv.place(seq("other", range(500, 510)), kv.free(set()), set(), [])
    assert kv.host.stats.saves == 0


def test_a_sliding_window_cut_back_past_its_window_keeps_nothing():
    kv, ctx = slots(n=1, n_swa=8)
    ctx.kv[0] = set(range(35, 40))  # a window-sized cache: positions 35..39 only
    assert kv.keep(kv.slots[0], 40) == 0 and ctx.kv[0] == set()
    ctx.kv[0] = set(range(40))
    assert kv.keep(kv.slots[0], 40) == 40


def test_compaction_moves_the_highest_sequence_into_the_lowest_gap():
    kv, ctx = slots(n=3)
    a, c = seq("a", [1, 2], max_tokens=40), seq("c", [3, 4], max_tokens=40)
    running(kv, ctx, a, 0, 2)
    running(kv, ctx, c, 2, 2)
    kv.compact([a, c], {2})  # a copy out of slot 2 is pending: not now
    assert c.slot == 2
    kv.compact([a, c], set())
    assert c.slot == 1 and kv.slots[1].seq is c and kv.slots[2].seq is None
    assert ctx.copies == [(2, 1)] and ctx.kv[2] == set() and kv.moves == 1
    kv, ctx = slots(n=3, streams=False)  # one shared pool: any ids batch together
    running(kv, ctx, a, 0, 2)
    running(kv, ctx, c, 2, 2)
    kv.compact([a, c], set())
    assert c.slot == 2 and kv.moves == 0


def test_a_parked_answer_leaves_its_history_in_the_slot_and_ram():
    kv, ctx = slots(n=1, host_bytes=10**9)
    answer = seq("answer", range(1, 81))
    running(kv, ctx, answer, 0, 80)
    slot = kv.park(answer, seq("turn", range(500, 505)))
    assert slot is kv.slots[0] and slot.seq is None and slot.cached == list(range(1, 81))
    assert (answer.slot, answer.n_past) == (-1, 0)
    assert kv.host.holds(as_tokens(list(range(1, 81))))
    kv, ctx = slots(n=1, host_bytes=10)  # no room in RAM: it goes on
    running(kv, ctx, answer, 0, 80)
    assert kv.park(answer, seq("turn", range(500, 505))) is None and answer.slot == 0


def test_what_a_sequence_leaves_behind():
    kv, ctx = slots(n=3)
    done, failed, requeued = seq("d", [1, 2, 3]), seq("f", [4, 5]), seq("r", [6, 7])
    for index, s in enumerate((done, failed, requeued)):
        running(kv, ctx, s, index, len(s.tokens))
    assert kv.used() == 7
    kv.release(done, keep_cache=True)
    kv.release(failed, keep_cache=False)
    kv.vacate(requeued)
    assert kv.slots[0].cached == [1, 2, 3] and ctx.kv[0] == {0, 1, 2}
    assert kv.slots[1].cached == [] and ctx.kv[1] == set()
    assert (requeued.slot, requeued.n_past, ctx.kv[2]) == (-1, 0, set())
    assert kv.used() == 3 and kv.drop_idle() and kv.used() == 0 and not kv.drop_idle()


def test_the_cost_of_a_waiting_sequence_counts_every_place_that_holds_its_prefix():
    kv, ctx = slots(n=2, host_bytes=10**9)
    idle(kv, ctx, 0, range(1, 21))
    lead = seq("lead", range(100, 160))
    running(kv, ctx, lead, 1, 0)  # still to compute: a follower would copy it
    kv.host.put(as_tokens(list(range(300, 340))), frozenset(range(40)), 40)
    cost = kv.costs(kv.free(set()), [lead])
    assert cost(seq("a", [*range(1, 21), 7])) == 1
    assert cost(seq("b", [*range(100, 160), 7])) == 1
    assert cost(seq("c", [*range(300, 340), 7])) == 1
    assert cost(seq("d", range(1, 21), scope="other")) == 20
