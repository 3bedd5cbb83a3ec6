"""Agents on small machines (issue 33): answers that stream for longer than the request
timeout, prompts that take long to compute, ``max_tokens: 32000`` on a small context, and
a server-wide cap on answer lengths, through the real clients of each API.

Durations: a test that shows a timeout not firing checks that what it waited for did last
longer than that timeout (else it would show nothing); those are long generations on a
CPU, many times the timeouts they are compared with."""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import ollama
import openai
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import MODEL, Daemon, wait_for

CLAMPED = "mullama-max-tokens-clamped"


class Timed(threading.Thread):
    """A streamed request in a thread: its lines, when its response started (headers),
    and when its first and last lines came."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line came
        self.status: int | None = None
        self.started = self.first = self.last = 0.0
        self.begun = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=600) as r:
                self.status, self.started = r.status_code, time.monotonic()
                for line in r.iter_lines():
                    if not line:
                        continue
                    self.lines.append(line)
                    self.last = time.monotonic()
                    self.times.append(self.last)
                    if not self.first:
                        self.first = self.last
                        self.begun.set()
        finally:
            self.begun.set()

    def first_token(self) -> float:
        """When the first event with generated text (or the end) came: an OpenAI chat
        stream opens with a role-only delta."""
        for line, at in zip(self.lines, self.times, strict=True):
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                if choice["delta"].get("content") or choice["finish_reason"]:
                    return at
        raise AssertionError(self.lines[-3:])

    def events(self) -> list:
        self.join(600)
        assert not self.is_alive()
        return [ln[6:] if ln == "data: [DONE]" else json.loads(ln[6:])
                for ln in self.lines if ln.startswith("data: ")]  # fmt: skip


def _chat(content: str = "Tell me about the sea.", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def test_a_stream_outlasts_the_request_timeout_and_one_queued_behind_it_is_not_idle():
    """--request-timeout 1 cuts non-streamed requests as before; a stream that keeps
    producing tokens is not cut by it, and a stream that waits for the one slot while
    that answer is generated is not idle (every step of the engine is progress)."""
    with Daemon("--request-timeout", "1", "--stream-idle-timeout", "5", "--parallel", "1",
                "--context-size", "2048").wait_healthy() as d:  # fmt: skip
        long = Timed(d.url + "/completion", {"prompt": "Once upon a time", "n_predict": 1500,
                                             "ignore_eos": True, "stream": True})  # fmt: skip
        assert long.begun.wait(120) and long.status == 200
        queued = Timed(d.url + "/v1/chat/completions", _chat(max_tokens=8, stream=True))
        wait_for(lambda: d.model_status()["queued_sequences"] == 1, timeout=60)
        # A non-streamed request waiting for the same slot: --request-timeout still holds.
        r = httpx.post(d.url + "/v1/chat/completions", json=_chat(max_tokens=8), timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"

        events = long.events()
        assert events[-1]["stop"] is True and events[-1]["stop_type"] == "limit", events[-1]
        assert events[-1]["tokens_predicted"] == 1500
        assert not any("error" in e for e in events)
        assert long.last - long.started > 1, "the stream must outlast --request-timeout"

        events = queued.events()
        assert queued.status == 200 and events[-1] == "[DONE]", events[-3:]
        assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length"), events[-2]
        assert queued.first_token() - queued.started > 5, "the wait must outlast the idle timeout"


def test_a_long_prompt_being_computed_is_progress():
    """A prompt of ~1,900 tokens computed 16 at a time sends nothing for longer than the
    idle timeout, but each of its steps is progress."""
    prompt = " ".join(f"line {i}: the quick brown fox." for i in range(180))
    with Daemon("--stream-idle-timeout", "3", "--batch-size", "16", "--parallel", "1",
                "--context-size", "2048").wait_healthy() as d:  # fmt: skip
        s = Timed(d.url + "/v1/completions",
                  {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True})  # fmt: skip
        events = s.events()
        assert s.status == 200 and events[-1] == "[DONE]", events[-3:]
        assert not any("error" in e for e in events[:-1]), events[-3:]
        assert s.first - s.started > 3, "the prompt must take longer than the idle timeout"


def test_max_tokens_beyond_the_context_is_clamped_on_every_api():
    """An agent's max_tokens 32000 on a 512-token context: the answer runs until the
    context is full (finish `length`) and the header says by how much it was lowered."""
    with Daemon("--context-size", "512", "--parallel", "2").wait_healthy() as d:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            **_chat(max_tokens=32000), extra_body={"ignore_eos": True}
        )
        reply = raw.parse()
        used = reply.usage
        assert reply.choices[0].finish_reason == "length"
        assert used.prompt_tokens + used.completion_tokens == 512
        assert raw.headers[CLAMPED] == f"32000->{used.completion_tokens}; by=context"

        with client.chat.completions.with_streaming_response.create(
            **_chat(max_completion_tokens=32000), stream=True
        ) as stream:
            assert stream.headers[CLAMPED].startswith("32000->")
            assert "data: [DONE]" in stream.read().decode()

        # Claude Code streams: the SDK refuses max_tokens 32000 without a stream.
        claude = anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0)
        with claude.messages.stream(
            model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            assert stream.response.headers[CLAMPED].startswith("32000->")
            assert stream.get_final_message().stop_reason in ("end_turn", "max_tokens")

        raw = client.responses.with_raw_response.create(
            model=MODEL, input="Hi", max_output_tokens=32000
        )
        assert raw.headers[CLAMPED].startswith("32000->")

        r = httpx.post(d.url + "/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Hi", "stream": False,
            "options": {"num_predict": 32000, "ignore_eos": True}})  # fmt: skip
        assert r.json()["done_reason"] == "length"
        assert r.headers[CLAMPED] == f"32000->{r.json()['eval_count']}; by=context"

        r = httpx.post(d.url + "/completion", timeout=120,
                       json={"prompt": "Hi", "n_predict": 32000, "ignore_eos": True})  # fmt: skip
        assert r.json()["stop_type"] == "limit" and r.headers[CLAMPED].startswith("32000->")

        # What fits is not touched, and not reported.
        raw = client.chat.completions.with_raw_response.create(**_chat(max_tokens=4))
        assert CLAMPED not in raw.headers


def test_strict_fields_refuses_max_tokens_beyond_the_context():
    with Daemon("--context-size", "512", "--parallel", "1", "--strict-fields").wait_healthy() as d:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**_chat(max_tokens=32000))
        error = info.value.body
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        assert "32000 for the completion" in error["message"]
        assert client.chat.completions.create(**_chat(max_tokens=4)).usage.completion_tokens <= 4


def test_max_tokens_caps_every_apis_answer_and_a_models_own_cap_wins():
    path = str(embedded_model_path())
    with Daemon("--max-tokens", "8", "--model", MODEL, "--model", f"other={path}",
                "--model-opt", "other:max_tokens=5", "--context-size", "1024",
                "--parallel", "2").wait_healthy() as d:  # fmt: skip
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        for model, cap in ((MODEL, 8), ("other", 5)):
            # No max_tokens: the cap is the length.
            reply = client.chat.completions.create(
                **{**_chat(), "model": model}, extra_body={"ignore_eos": True}
            )
            assert reply.usage.completion_tokens == cap
            assert reply.choices[0].finish_reason == "length"
            raw = client.chat.completions.with_raw_response.create(
                **{**_chat(max_tokens=100), "model": model}, extra_body={"ignore_eos": True}
            )
            assert raw.parse().usage.completion_tokens == cap
            assert raw.headers[CLAMPED] == f"100->{cap}; by=cap"

        # Every API's answer on the global cap.
        reply = client.completions.create(model=MODEL, prompt="Once", max_tokens=100,
                                          extra_body={"ignore_eos": True})  # fmt: skip
        assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
        reply = client.responses.create(model=MODEL, input="Tell me a story.",
                                        max_output_tokens=100)  # fmt: skip
        assert reply.usage.output_tokens <= 8
        claude = anthropic.Anthropic(base_url=d.url, api_key="x", max_retries=0)
        raw = claude.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Tell a story."}]
        )
        assert raw.parse().usage.output_tokens <= 8 and raw.headers[CLAMPED] == "100->8; by=cap"
        local = ollama.Client(host=d.url)
        answer = local.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                            options={"ignore_eos": True})  # fmt: skip
        assert answer.eval_count == 8 and answer.done_reason == "length"
        answer = local.generate(model=MODEL, prompt="Once", options={"num_predict": 100,
                                                                     "ignore_eos": True})  # fmt: skip
        assert answer.eval_count == 8
        r = httpx.post(d.url + "/completion", timeout=60,
                       json={"prompt": "Once", "ignore_eos": True})  # fmt: skip
        assert r.json()["tokens_predicted"] == 8 and r.json()["stop_type"] == "limit"
        props = httpx.get(d.url + "/props", params={"model": "other"}).json()
        assert props["default_generation_settings"]["params"]["n_predict"] == 5
        show = httpx.post(d.url + "/api/show", json={"model": MODEL}).json()
        assert show["request_defaults"]["openai"]["max_tokens_cap"] == {
            "value": 8, "source": "--max-tokens"}  # fmt: skip
        show = httpx.post(d.url + "/api/show", json={"model": "other"}).json()
        assert show["request_defaults"]["ollama"]["max_tokens_cap"] == {
            "value": 5, "source": "--model-opt"}  # fmt: skip
