"""Remote engines behind Mullama (--remote): llama.cpp's own llama-server stands in for
vLLM/SGLang as two replicas, and a second Mullama daemon as an engine that enforces
tool calls. Real SDKs through Mullama to them: streaming, cancellation (the upstream
slot is freed), balancing and affinity, a replica killed mid-run and probed back in,
retry before the first byte, queueing, error mapping without leaks, keys, token
budgets from the engine's usage, the response cache, fallbacks both ways, traceparent,
metrics, and a local model beside a remote one in one daemon."""

from __future__ import annotations

import http.server
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL, Daemon, free_port, wait_for
from tests.e2e.test_observability_stack import METRIC, _dashboard_exprs, _scraped_names
from tests.hubstub import tiny_gguf
from tests.llamaserver import LlamaServer
from tests.otlp import OTLPReceiver

CHAT = [{"role": "user", "content": "Say hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
UPSTREAM_KEY = "sk-upstream-" + "7" * 24
FRONT_ADMIN = "sk-front-admin-" + "1" * 24
FRONT_LIMITED = "sk-front-limited-" + "2" * 24


@pytest.fixture(scope="module")
def engines():
    a, b = LlamaServer(), LlamaServer()
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def front(engines):
    """A local model and a remote one (two llama-server replicas, one request in flight
    each, one more may wait) in one daemon, with the response cache."""
    a, b = engines
    d = Daemon(
        "--model", MODEL, "--remote", f"smol={a.url}/v1,{b.url}/v1",
        "--remote-opt", "smol:health_interval=0.3", "--remote-opt", "smol:max_inflight=1",
        "--max-queue", "1", "--parallel", "2", "--context-size", "1024", "--response-cache",
    ).wait_healthy()  # fmt: skip
    yield d
    d.stop()


def _client(d: Daemon, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key=key, max_retries=0, timeout=120)


def _ask(d: Daemon) -> httpx.Response:
    """A chat request without an API key or session: no conversation key, so it goes to
    the replica with the fewest in flight (ties in turn)."""
    body = {"model": "smol", "messages": CHAT, "max_tokens": 2}
    return httpx.post(d.url + "/v1/chat/completions", json=body, timeout=120)


def _replicas(d: Daemon, model: str = "smol") -> list[dict]:
    ps = httpx.get(d.url + "/api/ps", timeout=10).json()["models"]
    return next(m for m in ps if m["name"] == model)["replicas"]


def _metric(d: Daemon, name: str, **labels: str) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            got = set(re.findall(r'\w+="[^"]*"', line[: line.index("}")]))
            if want <= got:
                total += float(line.split()[-1])
    return total


def test_remote_and_local_models_are_listed_side_by_side(front):
    ids = {m.id: m for m in _client(front).models.list().data}
    assert MODEL in ids and "smol" in ids
    assert ids["smol"].model_extra.get("remote") is True
    assert not ids[MODEL].model_extra.get("remote")
    tags = {m["name"]: m for m in httpx.get(front.url + "/api/tags", timeout=10).json()["models"]}
    assert tags["smol"]["details"]["format"] == "remote"
    assert tags[MODEL]["details"]["format"] == "gguf"
    ps = {m["name"]: m for m in httpx.get(front.url + "/api/ps", timeout=10).json()["models"]}
    assert [r["replica"] for r in ps["smol"]["replicas"]] == [0, 1]
    status = front.status()
    assert {m["name"]: m["state"] for m in status["models"]}["smol"] == "remote"
    assert status["remote_models"][0]["name"] == "smol"
    typo = httpx.post(front.url + "/v1/chat/completions", timeout=10,
                      json={"model": "smoll", "messages": CHAT, "max_tokens": 2})  # fmt: skip
    assert typo.status_code == 404 and "did you mean smol" in typo.json()["error"]["message"]


def test_openai_sdk_chat_completions_and_embeddings_through_a_remote_engine(front):
    client = _client(front)
    greedy = {"temperature": 0, "extra_headers": {"Cache-Control": "no-store"}}
    reply = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=8, **greedy)
    assert reply.model == "smol"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8  # the engine's own count
    assert reply.usage.prompt_tokens > 5
    pieces, usage = [], None
    stream = client.chat.completions.create(
        model="smol", messages=CHAT, max_tokens=8, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_headers={"Cache-Control": "no-store"},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(pieces) >= 4 and usage.completion_tokens == 8
    done = client.completions.create(model="smol", prompt="The capital of France is",
                                     max_tokens=4, temperature=0, logprobs=1)  # fmt: skip
    assert done.choices[0].text and len(done.choices[0].logprobs.tokens) == 4
    lp = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=3, temperature=0,
                                        logprobs=True, top_logprobs=2,
                                        extra_headers={"Cache-Control": "no-store"})  # fmt: skip
    entries = lp.choices[0].logprobs.content
    assert len(entries) == 3 and all(len(e.top_logprobs) == 2 for e in entries)
    emb = client.embeddings.create(model="smol", input=["hello", "a longer sentence"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576
    assert abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-3


def test_ollama_sdk_through_a_remote_engine_with_format(front):
    client = ollama.Client(host=front.url, timeout=120)
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    reply = client.chat(model="smol", messages=[{"role": "user", "content": "A JSON with a name"}],
                        format=schema, options={"num_predict": 60, "temperature": 0})  # fmt: skip
    assert "name" in json.loads(reply.message.content)
    assert reply.eval_count > 0 and reply.done_reason == "stop"
    parts = [p.response for p in client.generate(model="smol", prompt="Hi", stream=True,
                                                 options={"num_predict": 6})]  # fmt: skip
    assert len([p for p in parts if p]) >= 3
    emb = client.embed(model="smol", input=["one", "two"])
    assert len(emb.embeddings) == 2


def test_a_token_reaches_the_client_while_the_engine_still_generates(front, engines):
    """No buffering: the first content chunk arrives while the upstream is mid-answer; a
    client that leaves closes the upstream request, and the engine frees its slot."""
    body = {"model": "smol", "messages": CHAT, "max_tokens": 400, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", front.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept open: leaving the loop would close the response
        while '"content":"' not in (line := next(lines)) or '"content":""' in line:
            pass
        assert sum(e.busy_slots() for e in engines) == 1  # still generating upstream
    wait_for(lambda: sum(e.busy_slots() for e in engines) == 0, timeout=30)


def test_a_conversation_key_keeps_a_conversation_on_one_replica(front):
    """X-Session-Id routes by rendezvous hashing: every turn reaches the same replica,
    whose own prompt cache then holds the history (the engine reports cached tokens)."""
    before = [r["requests"] for r in _replicas(front)]
    client = _client(front)
    history = [{"role": "system", "content": "You are a helpful assistant. " * 20}]
    cached = []
    for turn in ("Hello there", "Tell me more", "And then?"):
        history.append({"role": "user", "content": turn})
        reply = client.chat.completions.create(
            model="smol", messages=history, max_tokens=8, temperature=0.7,
            extra_headers={"X-Session-Id": "conversation-42", "Cache-Control": "no-store"},
        )  # fmt: skip
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    after = [r["requests"] for r in _replicas(front)]
    grew = [x - y for x, y in zip(after, before, strict=True)]
    assert sorted(grew) == [0, 3]
    assert cached[1] > 100 and cached[2] > cached[1]


def test_a_full_remote_model_queues_then_refuses_with_retry_after(front, engines):
    body = {"model": "smol", "messages": CHAT, "max_tokens": 1000, "stream": True,
            "ignore_eos": True}  # fmt: skip
    streams = []
    try:
        for _ in range(2):  # one per replica (max_inflight=1)
            cm = httpx.stream("POST", front.url + "/v1/chat/completions", json=body, timeout=120)
            r = cm.__enter__()
            assert r.status_code == 200
            streams.append((cm, r))
        assert sorted(r["in_flight"] for r in _replicas(front)) == [1, 1]
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                _client(front).chat.completions.create, model="smol", messages=CHAT, max_tokens=2
            )
            wait_for(lambda: httpx.get(front.url + "/api/ps", timeout=10).json()["models"][0]
                     ["queued_sequences"] == 1)  # fmt: skip
            with pytest.raises(openai.APIStatusError) as exc:  # the queue (1) is full
                _client(front).chat.completions.create(model="smol", messages=CHAT, max_tokens=2)
            assert exc.value.status_code == 503
            assert exc.value.response.headers["retry-after"]
            assert exc.value.body["code"] == "unavailable"
            cm, _ = streams.pop()
            cm.__exit__(None, None, None)  # a replica frees up: the waiting one goes
            assert waiting.result(timeout=120).choices[0].finish_reason == "length"
    finally:
        for cm, _ in streams:
            cm.__exit__(None, None, None)


def test_upstream_errors_take_each_apis_shape_and_leak_nothing(front, engines):
    long = [{"role": "user", "content": "word " * 3000}]  # past the engine's 2048 per slot
    r = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                   json={"model": "smol", "messages": long, "max_tokens": 4})  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r2 = httpx.post(front.url + "/api/chat", timeout=60,
                    json={"model": "smol", "messages": long, "stream": False})  # fmt: skip
    assert r2.status_code == 400 and isinstance(r2.json()["error"], str)
    r3 = httpx.post(front.url + "/api/chat", timeout=60, json={
        "model": "smol", "messages": CHAT, "options": {"num_ctx": 4096}})  # fmt: skip
    assert r3.status_code == 400 and "num_ctx" in r3.json()["error"]
    for e in engines:
        for text in (r.text, r2.text, r3.text, front.log()):
            assert str(e.port) not in text and e.url not in text


def test_rest_of_the_production_layer_applies(front):
    """The response cache answers a repeated deterministic request without the engine;
    metrics count per replica."""
    client = _client(front)
    ask = {"model": "smol", "messages": [{"role": "user", "content": "Cache me"}],
           "max_tokens": 6, "temperature": 0}  # fmt: skip
    first = client.chat.completions.with_raw_response.create(**ask)
    sent = sum(r["requests"] for r in _replicas(front))
    second = client.chat.completions.with_raw_response.create(**ask)
    assert first.headers["x-mullama-cache"] == "miss"
    assert second.headers["x-mullama-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert sum(r["requests"] for r in _replicas(front)) == sent  # no upstream call
    assert _metric(front, "mullama_remote_requests_total", model="smol", outcome="ok") >= 5
    assert _metric(front, "mullama_remote_time_to_first_token_seconds_count", model="smol") >= 5
    assert _metric(front, "mullama_remote_replica_up", model="smol") == 2
    assert _metric(front, "mullama_generated_tokens_total", model="smol") > 20
    # The Grafana dashboard's remote-replica panels read series this daemon exports.
    exported = _scraped_names(front.url)
    used = {m for e in _dashboard_exprs() for m in METRIC.findall(e) if "remote" in m}
    assert len(used) >= 5 and used <= exported, used - exported


def test_a_replica_killed_mid_answer_fails_its_requests_cleanly_and_is_probed_back(front, engines):
    a, b = engines
    body = {"model": "smol", "messages": CHAT, "max_tokens": 1000, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with ThreadPoolExecutor(2) as pool:

        def run() -> list[str]:
            lines = []
            with httpx.stream("POST", front.url + "/v1/chat/completions", json=body,
                              timeout=120) as r:  # fmt: skip
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
            return lines

        runs = [pool.submit(run), pool.submit(run)]  # one on each replica (max_inflight=1)
        wait_for(lambda: a.busy_slots() == 1 and b.busy_slots() == 1, timeout=60)
        a.kill()
        wait_for(lambda: b.busy_slots() == 0 or any(r.done() for r in runs), timeout=120)
        failed = runs[0].result(timeout=120), runs[1].result(timeout=120)
    errors = [lines for lines in failed if any('"error"' in ln for ln in lines)]
    assert len(errors) == 1  # the one on the killed replica: an error event, then [DONE]
    assert '"upstream_error"' in "".join(errors[0]) and errors[0][-1] == "data: [DONE]"
    wait_for(lambda: [r["healthy"] for r in _replicas(front)] == [False, True], timeout=30)
    for _ in range(3):  # new requests go to the replica that is left
        assert _ask(front).status_code == 200
    a.start()
    wait_for(lambda: all(r["healthy"] for r in _replicas(front)), timeout=30)
    before = _replicas(front)[0]["requests"]
    for _ in range(4):
        assert _ask(front).status_code == 200
    assert _replicas(front)[0]["requests"] > before  # back in the rotation


def test_a_request_that_fails_before_any_byte_is_retried_on_another_replica(engines):
    """Passive health only (no check for an hour): the dead replica is found by a request,
    which is retried on the other one; the client sees a normal answer."""
    a, b = engines
    d = Daemon("--remote", f"smol={a.url}/v1,{b.url}/v1",
               "--remote-opt", "smol:health_interval=3600").wait_healthy()  # fmt: skip
    try:
        assert [m["name"] for m in httpx.get(d.url + "/api/ps", timeout=10).json()["models"]] == [
            "smol"
        ]  # only remote models: no local default model
        a.kill()
        for _ in range(6):  # ties are taken in turn: the killed replica within two
            assert _ask(d).status_code == 200
            if _metric(d, "mullama_remote_requests_total", replica="0", outcome="connect_error"):
                break
        assert (
            _metric(d, "mullama_remote_requests_total", replica="0", outcome="connect_error") == 1
        )
        assert [r["healthy"] for r in _replicas(d)] == [False, True]
    finally:
        d.stop()
        a.start()


class _Recorder(http.server.ThreadingHTTPServer):
    """Forwards every request to a real engine, remembering the headers it carried."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", free_port()), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a health probe that hangs up early


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self, method: str) -> None:
        server: _Recorder = self.server  # type: ignore[assignment]
        headers = {k.lower(): v for k, v in self.headers.items()}
        server.seen.append(headers)
        body = self.rfile.read(int(headers.get("content-length", 0) or 0))
        keep = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
        with httpx.stream(method, server.upstream + self.path, content=body, headers=keep,
                          timeout=120) as r:  # fmt: skip
            self.send_response(r.status_code)
            self.send_header("content-type", r.headers.get("content-type", "text/plain"))
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in r.iter_raw():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:  # noqa: N802
        self._forward("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._forward("POST")


@pytest.fixture(scope="module")
def mullama_upstream(tmp_path_factory):
    """A Mullama daemon as the engine: it holds tool calls to their schema, and wants a key."""
    keys = tmp_path_factory.mktemp("upstream") / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: front, key: {UPSTREAM_KEY}, scope: inference}}\n")
    d = Daemon("--api-key-file", str(keys), "--parallel", "2",
               "--context-size", "2048").wait_healthy()  # fmt: skip
    yield d
    d.stop()


@pytest.fixture(scope="module")
def tools_front(mullama_upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    (tmp / "upstream.key").write_text(UPSTREAM_KEY + "\n")
    (tmp / "keys.yaml").write_text(
        "keys:\n"
        f"  - {{name: ops, key: {FRONT_ADMIN}, scope: admin}}\n"
        f"  - {{name: limited, key: {FRONT_LIMITED}, tokens_per_minute: 10}}\n"
    )
    tiny_gguf(tmp / "broken.gguf")  # passes the GGUF check, fails to load
    recorder = _Recorder(mullama_upstream.url)
    receiver = OTLPReceiver()
    d = Daemon(
        "--remote", f"tooly={recorder.url}/v1", "--remote-opt", "tooly:upstream_model=" + MODEL,
        "--remote-opt", f"tooly:api_key_file={tmp / 'upstream.key'}",
        "--remote", f"dead=http://127.0.0.1:{free_port()}/v1",
        "--model", MODEL, "--model", f"broken={tmp / 'broken.gguf'}",
        "--fallback", "dead=" + MODEL, "--fallback", "broken=tooly",
        "--api-key-file", str(tmp / "keys.yaml"), "--otlp-endpoint", receiver.url,
        "--parallel", "2", "--context-size", "1024",
    ).wait_healthy()  # fmt: skip
    yield d, recorder, receiver
    d.stop()
    receiver.close()


def test_tool_calls_pass_through_in_every_api(tools_front):
    d, _, _ = tools_front
    client = _client(d, FRONT_ADMIN)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat.completions.create(model="tooly", messages=ask, tools=[WEATHER],
                                           tool_choice="required", max_tokens=60)  # fmt: skip
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    stream = client.chat.completions.create(
        model="tooly",
        messages=ask,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        stream=True,
    )
    args, names, finish = "", [], None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.function.name:
                names.append(tc.function.name)
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and "city" in json.loads(args) and finish == "tool_calls"
    # The call and its result go back up as a conversation the engine takes.
    history = [*ask, reply.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]  # fmt: skip
    again = client.chat.completions.create(model="tooly", messages=history, tools=[WEATHER],
                                           tool_choice="none", max_tokens=8,
                                           temperature=0)  # fmt: skip
    assert again.choices[0].message.content and not again.choices[0].message.tool_calls
    o = ollama.Client(host=d.url, headers={"Authorization": f"Bearer {FRONT_ADMIN}"})
    named = {"type": "function", "function": {"name": "get_weather"}}
    oreply = o.chat(model="tooly", messages=ask, tools=[WEATHER], options={"num_predict": 60})
    assert oreply.message.tool_calls or oreply.message.content
    forced = client.chat.completions.create(model="tooly", messages=ask, tools=[WEATHER],
                                            tool_choice=named, max_tokens=60)  # fmt: skip
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    r = httpx.post(d.url + "/v1/messages", timeout=120, headers={"x-api-key": FRONT_ADMIN},
                   json={"model": "tooly", "max_tokens": 60, "messages": ask,
                         "tools": [{"name": "get_weather", "input_schema":
                                    WEATHER["function"]["parameters"]}],
                         "tool_choice": {"type": "any"}})  # fmt: skip
    assert r.status_code == 200
    assert r.json()["content"][-1]["type"] == "tool_use"


def test_keys_budgets_fallbacks_and_traces_apply_to_remote_models(tools_front):
    d, recorder, receiver = tools_front
    assert httpx.post(d.url + "/v1/chat/completions", json={"model": "tooly", "messages": CHAT},
                      timeout=30).status_code == 401  # fmt: skip
    limited = _client(d, FRONT_LIMITED)
    limited.chat.completions.create(model="tooly", messages=CHAT, max_tokens=16,
                                    extra_body={"ignore_eos": True})  # fmt: skip
    with pytest.raises(openai.RateLimitError):  # the 16 tokens the engine reported count
        limited.chat.completions.create(model="tooly", messages=CHAT, max_tokens=2)
    # The upstream got Mullama's key for it (never the client's), and the trace context.
    seen = [h for h in recorder.seen if h.get("content-type") == "application/json"]
    assert seen and all(h["authorization"] == f"Bearer {UPSTREAM_KEY}" for h in seen)
    assert all(
        re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", h.get("traceparent", ""))
        for h in seen
    )
    # ... whose trace is the client request's own span in Mullama's traces.
    parent = seen[-1]["traceparent"].split("-")
    wait_for(
        lambda: any(s["trace_id"] == parent[1] and s["span_id"] == parent[2]
                    for s in receiver.find(**{"gen_ai.request.model": "tooly"})),
        timeout=30,
    )  # fmt: skip
    assert UPSTREAM_KEY not in d.log()
    admin = _client(d, FRONT_ADMIN)
    # A remote model with no reachable replica is answered by its local backup ...
    raw = admin.chat.completions.with_raw_response.create(model="dead", messages=CHAT,
                                                          max_tokens=2)  # fmt: skip
    assert raw.headers["x-mullama-fallback"] == f"dead->{MODEL}"
    # ... and a local model that cannot load by a remote one.
    raw = admin.chat.completions.with_raw_response.create(model="broken", messages=CHAT,
                                                          max_tokens=2)  # fmt: skip
    assert raw.headers["x-mullama-fallback"] == "broken->tooly"
    with pytest.raises(openai.APIStatusError) as exc:
        admin.chat.completions.create(model="dead", messages=CHAT, max_tokens=2,
                                      extra_headers={"X-Mullama-Fallback": "off"})  # fmt: skip
    assert exc.value.status_code == 503 and "127.0.0.1" not in str(exc.value.body)
    r = httpx.post(d.url + "/tokenize", timeout=30, json={"model": "tooly", "prompt": "hi"},
                   headers={"Authorization": f"Bearer {FRONT_ADMIN}"})  # fmt: skip
    assert r.status_code == 400 and "remote engine" in r.json()["error"]["message"]
