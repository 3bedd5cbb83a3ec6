"""A killed engine worker fails its in-flight requests with a 5xx; the daemon stays up and
starts a new worker on the next request."""

from __future__ import annotations

import os
import signal
import threading

import openai
import pytest

from tests.conftest import MODEL, Daemon, wait_for


@pytest.fixture(scope="module")
def crash_daemon():
    d = Daemon("--parallel", "2", "--context-size", "1024").wait_healthy()
    yield d
    d.stop()


def test_killed_worker_is_replaced(crash_daemon):
    client = openai.OpenAI(base_url=crash_daemon.url + "/v1", api_key="x", max_retries=0)
    old_pid = crash_daemon.model_status()["pid"]
    errors: list[BaseException] = []
    got_tokens = threading.Event()

    def stream_until_error():
        try:
            for chunk in client.completions.create(
                model=MODEL,
                prompt="Once upon a time",
                max_tokens=800,
                stream=True,
                extra_body={"ignore_eos": True},
            ):
                if chunk.choices and chunk.choices[0].text:
                    got_tokens.set()
        except openai.APIError as exc:
            errors.append(exc)

    def non_stream():
        try:
            client.completions.create(
                model=MODEL,
                prompt="Twice upon a time",
                max_tokens=800,
                extra_body={"ignore_eos": True},
            )
        except openai.APIStatusError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream_until_error), threading.Thread(target=non_stream)]
    for t in threads:
        t.start()
    assert got_tokens.wait(60)
    # Both requests are in the worker (each holds one of its two slots) before it dies.
    wait_for(lambda: crash_daemon.model_status()["active_sequences"] == 2)
    os.kill(old_pid, signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert len(errors) == 2
    statuses = sorted(getattr(e, "status_code", None) or 0 for e in errors)
    # The stream had started (200) and ends with an error event; the other gets a 5xx.
    assert any(s >= 500 for s in statuses), statuses
    assert all("stopped unexpectedly" in str(e) for e in errors), errors

    health = client.with_options(max_retries=0).models.list()
    assert [m.id for m in health] == [MODEL]
    resp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    assert resp.choices[0].text
    new_pid = wait_for(lambda: crash_daemon.model_status()["pid"])
    assert new_pid != old_pid
    assert crash_daemon.model_status()["restarts"] == 1
