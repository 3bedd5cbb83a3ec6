"""Pure parts of observability: rate meter, summaries, log formatters, metrics registry,
and the hub's spans through the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mullama import requestctx
from mullama.config import Settings, add_settings_arguments
from mullama.daemon.middleware import CallerContextMiddleware, RequestStateMiddleware
from mullama.engine.protocol import ModelStats
from mullama.errors import ClientError, ServerError
from mullama.logsetup import JsonFormatter, TextFormatter, resolve_format
from mullama.observability.access import AccessLogMiddleware
from mullama.observability.hub import Observability
from mullama.observability.metrics import Metrics, ModelSnapshot, Snapshot
from mullama.observability.requests import ModelSummary, RateMeter, percentile
from mullama.observability.tracing import Tracing, traces_url
from mullama.requestctx import RequestContext


def test_rate_meter_window():
    meter = RateMeter(window=10, resolution=0.5)
    assert meter.rate(now=0) == 0
    for i in range(20):  # 10 tokens/s from t=100 to t=109.5
        meter.add(5, now=100 + i * 0.5)
    assert meter.rate(now=109.75) == pytest.approx(100 / 9.75)  # younger than the window
    assert meter.rate(now=110) == pytest.approx(95 / 10)  # the t=100 sample left it
    assert meter.rate(now=200) == 0  # nothing in the last window
    assert meter.total == 100


def test_percentile_nearest_rank():
    assert percentile([], 95) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile(values, 50) == 50.0


def test_model_summary():
    s = ModelSummary()
    rec = RequestContext("r", "POST", "/v1/completions", "c")
    rec.started, rec.first_token, rec.prompt_tokens, rec.completion_tokens = 0.0, 0.5, 7, 11
    s.add(rec, True, ended=1.5)
    s.add(RequestContext("r2", "POST", "/v1/completions", "c"), False, ended=2.0)
    out = s.to_json()
    assert out["total_requests"] == 2 and out["successful_requests"] == 1
    assert out["success_rate"] == 0.5
    assert out["ttft_avg_ms"] == 500.0 and out["ttft_p95_ms"] == 500.0
    assert out["tokens_per_second_avg"] == 11.0
    assert (out["prompt_tokens"], out["completion_tokens"]) == (7, 11)


def _record(msg: str, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("mullama.access", logging.INFO, __file__, 1, msg, (), None)
    rec.fields = fields
    return rec


def test_json_formatter_puts_fields_at_top_level():
    line = JsonFormatter({"model": "m"}).format(_record("GET / 200", status=200, path="/"))
    obj = orjson.loads(line)
    assert obj["msg"] == "GET / 200" and obj["status"] == 200 and obj["model"] == "m"
    assert obj["level"] == "info" and obj["logger"] == "mullama.access"
    assert obj["ts"].endswith("Z")


def test_text_formatter():
    line = TextFormatter("worker 1").format(_record("hi", a=1, b=None, c="x y"))
    assert 'mullama.access[worker 1]: hi a=1 b=- c="x y"' in line


def test_resolve_format(tmp_path):
    with (tmp_path / "f").open("w") as f:
        assert resolve_format("auto", f) == "json"
    assert resolve_format("text") == "text"


def test_log_settings_are_flags_and_env(monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--log-format", "json", "--log-file", "/tmp/x.log"])
    assert args.log_format == "json" and args.log_file == "/tmp/x.log"
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-format", "xml"])
    monkeypatch.setenv("MULLAMA_LOG_FORMAT", "text")
    monkeypatch.setenv("MULLAMA_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    s = Settings()
    assert s.log_format == "text" and s.otlp_endpoint == "http://127.0.0.1:4318"


def test_traces_url():
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/custom/path") == "https://c/custom/path"
    with pytest.raises(ClientError):
        traces_url("c:4318")


def _families(metrics: Metrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_registry_is_per_instance_and_reads_live_gauges():
    snap = Snapshot(
        uptime=5.0,
        active_requests=2,
        daemon_memory_bytes=100,
        version="9",
        models=[ModelSnapshot("m", True, active=3, queued=1, kv_used=50, kv_size=200, threads=2)],
    )
    a, b = Metrics(lambda: snap, ["m"]), Metrics(lambda: snap, ["m"])
    a.requests.labels("/x", "m", "200").inc()
    fa, fb = _families(a), _families(b)
    key = ("mullama_requests_total", (("endpoint", "/x"), ("model", "m"), ("status", "200")))
    assert fa[key] == 1 and key not in fb
    assert fa[("mullama_kv_cache_usage_ratio", (("model", "m"),))] == 0.25
    assert fa[("mullama_engine_threads", (("model", "m"),))] == 2
    assert fa[("mullama_queue_depth", (("model", "m"),))] == 1
    assert fa[("mullama_requests_active", ())] == 2
    assert fa[("mullama_models_loaded", ())] == 1
    assert fa[("mullama_memory_used_bytes", (("component", "daemon"), ("model", "")))] == 100
    assert fa[("mullama_generated_tokens_total", (("model", "m"),))] == 0  # pre-created


class _FakeClient:
    name = "m"
    alive = True
    pid = None

    def stats(self) -> ModelStats:
        return ModelStats()


class _FakeModels:
    names = ["m"]
    cache = None  # the response cache is off
    remotes: dict = {}  # no remote engines

    def clients(self):
        return [_FakeClient()]

    def circuits(self):
        return {}


def _hub_with_memory_exporter():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, "test")
    return Observability(_FakeModels(), tracing), exporter, tracing


def test_hub_records_a_generation_with_spans():
    hub, exporter, tracing = _hub_with_memory_exporter()
    rec = RequestContext("rid-1", "POST", "/v1/chat/completions", "127.0.0.1:1")
    hub.start_request(rec)
    token = requestctx.current.set(rec)
    try:
        gen = hub.generation("m", "rid-1/0")
        gen.accepted(12)
        gen.admitted(0.01)
        for n in (1, 2, 5):  # 5 tokens: TTFT once, then 4 inter-token gaps
            gen.output(n, None)
        gen.output(5, "length")
        gen.closed(None)
    finally:
        requestctx.current.reset(token)
    hub.finish_request(rec, 200, "/v1/chat/completions")
    tracing.shutdown()
    fam = _families(hub.metrics)
    assert fam[("mullama_inter_token_latency_seconds_count", (("model", "m"),))] == 4
    assert fam[("mullama_time_to_first_token_seconds_count", (("model", "m"),))] == 1
    assert fam[("mullama_generated_tokens_total", (("model", "m"),))] == 5
    assert fam[("mullama_prompt_tokens_total", (("model", "m"),))] == 12
    assert hub.stats()["total_requests"] == 1 and hub.stats()["failed_requests"] == 0
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat m", "queue", "prefill", "decode"}
    root = spans["chat m"]
    assert root.attributes["gen_ai.request.model"] == "m"
    assert root.attributes["gen_ai.usage.input_tokens"] == 12
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["gen_ai.response.finish_reasons"] == ("length",)
    for child in ("queue", "prefill", "decode"):
        assert spans[child].parent.span_id == root.context.span_id


def test_hub_counts_a_failed_stream_as_failed():
    hub, _, tracing = _hub_with_memory_exporter()
    rec = RequestContext("rid-2", "POST", "/v1/completions", "c")
    hub.start_request(rec)
    token = requestctx.current.set(rec)
    try:
        gen = hub.generation("m", "rid-2")
        gen.accepted(3)
        gen.output(1, None)
        gen.closed(ServerError("engine died"))
    finally:
        requestctx.current.reset(token)
    hub.finish_request(rec, 200, "/v1/completions")
    tracing.shutdown()
    assert hub.stats()["failed_requests"] == 1
    assert rec.finish_reasons == ["error"]
    assert hub.summaries["m"].succeeded == 0


def test_one_request_context_from_the_outermost_middleware_to_the_route():
    """RequestStateMiddleware makes the request's context once; the access log, the
    caller's middleware, the route and the engine observer all read and fill that one
    object, and the hub closes it (metrics, span)."""
    hub, exporter, tracing = _hub_with_memory_exporter()
    seen: list[RequestContext | None] = []

    async def route(scope, receive, send):
        seen.append(requestctx.current.get())
        gen = hub.generation("m", "rid-9/0")
        gen.accepted(3)
        gen.output(2, "stop")
        gen.closed(None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    inner = CallerContextMiddleware(route, strict_fields=True)
    app = RequestStateMiddleware(AccessLogMiddleware(inner, hub))
    headers = [(b"x-request-id", b"rid-9"), (b"cache-control", b"no-store")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": headers, "client": ("127.0.0.1", 5)}  # fmt: skip
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    tracing.shutdown()
    (ctx,) = seen
    assert ctx is not None and requestctx.current.get() is None
    assert (ctx.request_id, ctx.client, ctx.strict_fields) == ("rid-9", "127.0.0.1:5", True)
    assert not ctx.cache_read and not ctx.cache_store
    assert (ctx.model, ctx.prompt_tokens, ctx.completion_tokens) == ("m", 3, 2)
    assert ctx.finish_reasons == ["stop"]
    assert (b"x-request-id", b"rid-9") in sent[0]["headers"]
    assert hub.stats()["total_requests"] == 1 and hub.active_requests == 0
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes["mullama.request_id"] == "rid-9"
    assert root.attributes["gen_ai.usage.output_tokens"] == 2
