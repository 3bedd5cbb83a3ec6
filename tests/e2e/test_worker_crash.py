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


def test_a_model_that_keeps_crashing_opens_its_circuit_then_a_probe_closes_it():
    """Two crashes (--breaker-failures 2) open the circuit: requests fail at once with
    503, Retry-After and code circuit_open, /health is degraded and the gauge says open.
    After the cool-down one probe is let through; its success closes the circuit."""
    import httpx

    with Daemon("--parallel", "1", "--context-size", "1024", "--breaker-failures", "2",
                "--breaker-cooldown", "3").wait_healthy() as d:  # fmt: skip
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)

        def crash_once() -> None:
            failed: list[BaseException] = []

            def long_request() -> None:
                try:
                    client.completions.create(model=MODEL, prompt="Once", max_tokens=900,
                                              extra_body={"ignore_eos": True})  # fmt: skip
                except openai.APIStatusError as exc:
                    failed.append(exc)

            t = threading.Thread(target=long_request)
            t.start()
            wait_for(lambda: d.model_status()["active_sequences"] == 1)
            os.kill(d.model_status()["pid"], signal.SIGKILL)
            t.join(60)
            assert failed and failed[0].status_code >= 500

        crash_once()
        assert d.model_status()["circuit"]["state"] == "closed"  # one crash is not enough
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)  # restarted
        crash_once()
        status = d.model_status()["circuit"]
        assert status["state"] == "open" and status["recent_failures"] == 2
        with pytest.raises(openai.APIStatusError) as info:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert info.value.status_code == 503 and info.value.body["code"] == "circuit_open"
        assert int(info.value.response.headers["retry-after"]) >= 1
        health = httpx.get(d.url + "/health").json()
        assert health["status"] == "degraded" and health["open_circuits"] == [MODEL]
        assert f'mullama_circuit_state{{model="{MODEL}"}} 2.0' in httpx.get(d.url + "/metrics").text
        wait_for(lambda: d.model_status()["circuit"]["retry_in_s"] == 0)  # the cool-down
        probe = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert probe.choices[0].text is not None
        assert d.model_status()["circuit"]["state"] == "closed"
        assert httpx.get(d.url + "/health").json()["status"] == "ok"
        metrics = httpx.get(d.url + "/metrics").text
        for state in ("open", "half_open", "closed"):
            assert (
                f'mullama_circuit_transitions_total{{model="{MODEL}",state="{state}"}} 1.0'
                in metrics
            )
