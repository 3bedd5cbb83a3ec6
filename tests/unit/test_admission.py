"""The queue policy alone (engine/admission.py): who is admitted next, who preempts whom,
the measured prompt rate and the burst size. The KV side is a fake that says how many
tokens each waiting sequence has to compute."""

from __future__ import annotations

import time
from collections import deque

from mullama.engine.admission import ADMIT_WINDOW, Admission, BurstTracker
from mullama.engine.kvcache import HostCache
from tests.unit.fake_engine import seq


class FakeKV:
    """What engine/slots.py tells the policy: tokens left to compute per sequence id."""

    def __init__(self, host_bytes=10**9, to_compute=None, recurrent=False):
        self.host = HostCache(host_bytes)
        self.recurrent = recurrent
        self.to_compute = to_compute or {}
        self.asked = 0

    def costs(self, free, running):
        self.asked += 1
        return lambda s: self.to_compute.get(s.id, len(s.tokens))


def waited(s, seconds):
    s.submitted_at = time.monotonic() - seconds
    return s


def generating(sid, n_generated, max_tokens=100, order=0, slot=0):
    """A running answer that has streamed ``n_generated`` tokens."""
    s = seq(sid, range(1, 11), max_tokens=max_tokens)
    s.tokens += [5] * n_generated
    s.n_past = len(s.tokens) - 1
    s.n_generated, s.order, s.slot = n_generated, order, slot
    return s


def test_a_lone_request_or_a_paused_answer_is_taken_without_weighing():
    kv = FakeKV()
    policy = Admission(kv, n_quick=16)
    lone = deque([seq("a", range(1, 500))])
    assert policy.next(lone, [], []).id == "a" and not lone
    paused = seq("p", range(1, 500))
    paused.parked = True
    queue = deque([paused, waited(seq("short", [1, 2]), 5.0)])
    assert policy.next(queue, [], []) is paused
    assert kv.asked == 0 and [s.id for s in queue] == ["short"]


def test_the_highest_response_ratio_goes_first():
    kv = FakeKV(to_compute={"warm": 2})
    policy = Admission(kv, n_quick=16)
    policy.prompt_rate = 100.0  # the cold prompt's service: ~2 s; the warm turn's: ~0.07 s
    cold = waited(seq("cold", range(1, 201)), 5.0)
    warm = waited(seq("warm", range(1, 201)), 0.5)
    queue = deque([cold, warm])
    assert policy.next(queue, [], []) is warm and list(queue) == [cold]
    cold.submitted_at -= 25.0  # now it has waited 30 s: its ratio passes the turn's
    queue.append(warm)
    assert policy.next(queue, [], []) is cold


def test_only_the_admission_window_is_weighed():
    kv = FakeKV(to_compute={"late": 1})
    policy = Admission(kv, n_quick=16)
    queue = deque(waited(seq(f"s{k}", range(1, 301)), 1.0) for k in range(ADMIT_WINDOW))
    queue.append(waited(seq("late", range(1, 301)), 1.0))  # cheapest, but past the window
    assert policy.next(queue, [], []).id != "late"


def test_a_short_request_that_waited_preempts_the_answer_with_most_tokens_left():
    kv = FakeKV(to_compute={"turn": 5, "doc": 300})
    policy = Admission(kv, n_quick=16, preempt_after=0.5)
    near = generating("near", 20, max_tokens=40, order=0, slot=0)
    far = generating("far", 20, max_tokens=400, order=1, slot=1)
    doc = waited(seq("doc", range(1, 301)), 9.0)  # long: never preempts
    turn = waited(seq("turn", range(1, 301)), 1.0)
    assert policy.preemption(deque([doc, turn]), [near, far], set()) == (turn, far)
    fresh = seq("fresh", range(1, 6))
    fresh.submitted_at = time.monotonic()  # it has not waited preempt_after yet
    assert policy.preemption(deque([fresh]), [near, far], set()) is None


def test_no_preemption_of_an_answer_that_just_began_leads_or_is_being_copied():
    kv = FakeKV()
    policy = Admission(kv, n_quick=16, preempt_after=0.5)
    turn = waited(seq("turn", range(1, 6)), 1.0)
    young = generating("young", 3)  # its user just saw a first token
    assert policy.preemption(deque([turn]), [young], set()) is None
    lead = generating("lead", 20, slot=0)
    follower = seq("f", range(1, 50))
    follower.follows = (lead, 40)
    assert policy.preemption(deque([turn]), [lead, follower], set()) is None
    assert policy.preemption(deque([turn]), [generating("src", 20, slot=3)], {3}) is None
    once = generating("once", 20)
    once.preempted = True  # each answer is paused at most once
    assert policy.preemption(deque([turn]), [once], set()) is None


def test_no_preemption_without_the_ram_cache_or_while_an_answer_is_paused():
    running = [generating("long", 20)]
    turn = waited(seq("turn", range(1, 6)), 1.0)
    for kv, after in ((FakeKV(host_bytes=0), 0.5), (FakeKV(recurrent=True), 0.5), (FakeKV(), 0)):
        assert (
            Admission(kv, n_quick=16, preempt_after=after).preemption(deque([turn]), running, set())
            is None
        )
    paused = seq("paused", range(1, 6))
    paused.parked = True
    policy = Admission(FakeKV(), n_quick=16, preempt_after=0.5)
    assert policy.preemption(deque([paused, turn]), running, set()) is None
    assert policy.preemption(deque([turn]), running, set()) == (turn, running[0])


def test_the_prompt_rate_follows_the_steps_that_computed_a_prompt():
    policy = Admission(FakeKV(), n_quick=16)
    policy.time_prompt(10, 0.01)  # a few tokens: too noisy to count
    assert policy.prompt_rate == 1000.0
    policy.time_prompt(200, 1.0)
    assert policy.prompt_rate == 1000.0 + 0.2 * (200 - 1000.0)


def test_burst_tracker_learns_how_many_requests_start_together():
    bursts = BurstTracker()
    assert bursts.expected == 1  # nothing seen: never wait
    bursts.observe(True, 1)  # a lone client starts the idle engine...
    bursts.observe(False, 0)  # ...and nobody joins during the first step
    assert bursts.expected == 1
    bursts.observe(True, 1)  # one request starts it, seven more arrive during that step
    bursts.observe(False, 7)
    bursts.observe(False, 0)  # later turns do not count
    assert bursts.expected == 8
    bursts.observe(True, 8)  # the next burst arrived whole
    bursts.observe(False, 0)
    assert bursts.expected == 8
    bursts.observe(True, 1)  # back to a single client
    bursts.observe(False, 0)
    assert bursts.expected == 1
