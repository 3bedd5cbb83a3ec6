"""Agents on small machines (issue 33): answers that stream for longer than the request
timeout, and prompts that take long to compute.

Durations: a test that shows a timeout not firing checks that what it waited for did last
longer than that timeout (else it would show nothing); those are long generations on a
CPU, many times the timeouts they are compared with."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.conftest import MODEL, Daemon, wait_for


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
