"""API fuzzing with schemathesis against the daemon's own OpenAPI document (/openapi.json).

Every operation of the document (the OpenAI, Anthropic, Ollama and llama-server APIs,
health, metrics, tokenizer, model management, daemon control) is fuzzed against a real
daemon on the real tiny model, in a temporary cache dir with pulls pointed at a stand-in
Hub: once without API keys, once with one (and with schemathesis's ``ignored_auth``
check, which sends requests without it and wants a 401). The properties:

- no 500 anywhere, and no 422 ever (bad input is a 400 in the API's own format);
- every answer's status, content type and body are those the document gives for the
  operation (schemathesis's conformance checks);
- every error is in the shape of the path's API: OpenAI's, Ollama's ``{"error": str}``
  under /api/, Anthropic's under /v1/messages; a stream that ends with an error does so
  in its API's shape;
- a body that breaks the documented schema is refused with a 4xx (negative_data_rejection);
- afterwards the daemon and its worker are up, the worker was never restarted (no crash),
  and the daemon log has no traceback and no ERROR line.

The run is bounded (MULLAMA_FUZZ_EXAMPLES examples per operation, default 25, seed
MULLAMA_FUZZ_SEED, default 1, derandomized); scripts/fuzz.sh runs it long.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
import time
import zlib
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from mullama.config import Settings
from mullama.daemon.app import create_app
from tests.conftest import MODEL, Daemon
from tests.hubstub import HubServer, tiny_gguf

EXAMPLES = int(os.environ.get("MULLAMA_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("MULLAMA_FUZZ_SEED", "1"))
# The coverage phase (boundary values of every field, a fixed set per operation, not
# bounded by EXAMPLES) makes the bounded run ~5x longer: the long run turns it on.
COVERAGE = os.environ.get("MULLAMA_FUZZ_COVERAGE", "0") == "1"
KEY = "sk-fuzz-" + "5" * 24
TINY = "hf.co/test/Tiny-GGUF:Q4_K_M"
JSON = "application/json"

# Left out, because it would end the fixture rather than test it: stopping the daemon
# (tests/e2e/test_lifecycle.py covers it). Deleting a model stays in: the default model
# is built in (never in the store), a fuzzed name is almost never one the store holds.
EXCLUDED = [("POST", "/api/daemon/stop")]

# Generation is bounded so that one example does not run for long: the token limits a
# fuzzed body gives (or leaves out) are capped, and so is the number of choices.
CAP = 6
TOKEN_FIELDS = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
    "/completion": "n_predict",
}
# The operations that write to the model store.
STORE_WRITES = frozenset({"/api/pull", "/api/delete", "/api/copy", "/api/create"})


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def bound(case: Any) -> None:
    """Cap the generation a case asks for, keeping it as valid or as invalid as it was:
    a limit over the cap (the schema has no maximum) comes down to it; a valid case
    without a limit gets one; a valid case's choices and prompts are cut to a few."""
    body = case.body
    if not isinstance(body, dict):
        return
    positive = case.meta is None or case.meta.generation.mode.is_positive
    path = case.operation.path
    # Half the generated bodies that name a model name the served one, so that they get
    # past the lookup to generation, tokenizing, tools and grammars (a random name is a
    # 404); not those that write to the store (a custom model named like the default).
    steer = case.meta is not None and path not in STORE_WRITES
    if steer and isinstance(body.get("model"), str) and zlib.crc32(repr(body).encode()) % 2:
        body["model"] = MODEL
    name = TOKEN_FIELDS.get(path)
    if path == "/v1/chat/completions" and "max_completion_tokens" in body:
        name = "max_completion_tokens"
    if name is not None and (positive or name in body or path != "/v1/messages"):
        # (max_tokens is required on /v1/messages: leaving it out may be what is invalid)
        _cap(body, name, positive, until_end=path == "/completion")
    if path in ("/api/generate", "/api/chat"):
        if "options" not in body or (positive and body["options"] is None):
            body["options"] = {}
        if isinstance(body.get("options"), dict):
            _cap(body["options"], "num_predict", positive, until_end=True)
    if positive and _int(body.get("n")) and body["n"] > 2:
        body["n"] = 2
    prompt = body.get("prompt")
    if positive and path == "/v1/completions" and isinstance(prompt, list) and len(prompt) > 3:
        if all(isinstance(p, (str, list)) for p in prompt):
            body["prompt"] = prompt[:3]


def _cap(body: dict[str, Any], name: str, positive: bool, until_end: bool = False) -> None:
    """A limit left out is added (to an invalid body too: one more valid field leaves it
    invalid), a null one set in a valid body, one over the cap lowered."""
    value = body.get(name)
    if name not in body or (value is None and positive):
        body[name] = CAP
    elif _int(value) and (value > CAP or (until_end and value in (-1, -2) and positive)):
        body[name] = CAP


# ---- the error shape of a path's API ---------------------------------------------------


# What pydantic names the members of a union it tried (str, list[str], literal[...],
# NamedToolChoice): an error's param names a place in the request, never one of those.
UNION_MEMBER = re.compile(r"(^|[.\[])((literal|list|dict|tagged-union|function-\w+|union)\[|"
                          r"(str|int|float|bool|none|[A-Z][a-z]+[A-Z]\w*)([.\[]|$))")  # fmt: skip


# 5xx that a request may legitimately get here: none is a crash or an internal error.
ALLOWED_5XX = {503, 504, 507}


def _api(path: str) -> str:
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


def check_error(api: str, body: Any, where: str) -> None:
    """One error body in ``api``'s shape."""
    if api == "ollama":
        assert isinstance(body, dict) and set(body) == {"error"}, where
        assert isinstance(body["error"], str) and body["error"], where
    elif api == "anthropic":
        assert isinstance(body, dict) and body.get("type") == "error", where
        err = body.get("error")
        assert isinstance(err, dict) and isinstance(err.get("type"), str), where
        assert isinstance(err.get("message"), str) and err["message"], where
    else:
        err = body.get("error") if isinstance(body, dict) else None
        assert isinstance(err, dict), where
        assert isinstance(err.get("message"), str) and err["message"], where
        assert isinstance(err.get("type"), str), where
        assert "param" in err and "code" in err, where
        assert err["param"] is None or isinstance(err["param"], str), where
        assert not UNION_MEMBER.search(err["param"] or ""), where
        assert err["code"] is None or isinstance(err["code"], str), where


def api_errors(ctx: Any, response: Any, case: Any) -> None:
    """Every error in the right API's shape; never 422, never 500; streams end well."""
    status = response.status_code
    where = f"{case.method} {case.path} -> {status}: {response.text[:300]}"
    assert status != 422, where
    assert status < 500 or status in ALLOWED_5XX, where
    kind = (response.headers.get("content-type") or [""])[0].split(";")[0]
    api = _api(case.operation.path)
    if case.method == "HEAD":
        assert not response.content, where  # the headers of a GET, no body
    elif status >= 400:
        assert kind == "application/json", where
        check_error(api, response.json(), where)
    elif kind == "text/event-stream":
        check_sse(api, case.operation.path, response.text, where)
    elif kind == "application/x-ndjson":
        for line in response.text.splitlines():
            item = orjson.loads(line)
            assert "error" not in item, f"{where}: the stream ended with an error: {line}"


def check_sse(api: str, path: str, text: str, where: str) -> None:
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events, where
    for event in events:
        lines = dict(line.split(": ", 1) for line in event.splitlines())
        data = lines["data"]
        if data == "[DONE]":
            continue
        item = orjson.loads(data)
        failed = lines.get("event") in ("error", "response.failed") or "error" in item
        assert not failed, f"{where}: the stream ended with an error: {data}"
    if api == "openai" and path != "/v1/responses" and path != "/completion":
        assert events[-1] == "data: [DONE]", where


# ---- the daemon under test -------------------------------------------------------------

LISTINGS = ("/api/ps", "/api/models", "/api/tags", "/v1/models", "/api/system/status",
            "/completion-metrics", "/metrics", "/health/ready")  # fmt: skip

# Lines llama.cpp logs at its error level that are no error: the embedding context asks
# for mean pooling of a model that declares none (every daemon that embeds logs it).
EXPECTED_ERRORS = ("model default pooling_type is [-1], but [1] was specified",)

DAEMON_ARGS = ("--parallel", "2", "--context-size", "512")


def served_document(keyed: bool) -> dict[str, Any]:
    """The document a daemon started with DAEMON_ARGS (and the key) serves, made here
    without starting one: pytest needs the operations when it collects the tests.
    test_*_serves_the_fuzzed_document checks that the daemon serves exactly this."""
    with tempfile.TemporaryDirectory() as cache:
        settings = Settings(
            cache_dir=cache, parallel=2, context_size=512, api_key=KEY if keyed else None
        )
        return create_app(settings).openapi()


def schema_for(keyed: bool) -> Any:
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            "max-stream-events": 10_000,  # read every stream whole (they are capped above)
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": COVERAGE},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "positive_data_acceptance": {"enabled": False},
                "ignored_auth": {"enabled": keyed},
            },
            "suppress-health-check": ["all"],
        }
    )
    schema = schemathesis.openapi.from_dict(served_document(keyed), config=config)
    for method, path in EXCLUDED:
        schema = schema.exclude(method=method, path=path)
    return schema


OPEN = schema_for(keyed=False)
KEYED = schema_for(keyed=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A stand-in Hub with one small valid GGUF (pulled, never loaded)."""
    server = HubServer()
    tiny = tiny_gguf(tmp_path_factory.mktemp("hub") / "tiny.gguf", 20_000)
    server.hub.add("test/Tiny-GGUF", "tiny-Q4_K_M.gguf", tiny)
    yield server
    server.close()


class Fuzzed:
    """A daemon being fuzzed, and what the run saw."""

    def __init__(self, daemon: Daemon, headers: dict[str, str]) -> None:
        self.daemon = daemon
        self.headers = headers
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.unloaded = False  # the fuzzer unloaded or unpinned the model (a new pid is fine)
        self.started = time.monotonic()
        self.pid = self.worker()["pid"]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.daemon.url + path, headers=self.headers, timeout=30)

    def worker(self) -> dict[str, Any]:
        status = self.get("/api/system/status").json()
        return next(m for m in status["models_loaded"] if m["name"] == MODEL)

    def run(self, case: Any) -> Any:
        bound(case)
        response = case.call(base_url=self.daemon.url, headers=self.headers, timeout=120)
        self.statuses[(case.operation.label, response.status_code)] += 1
        path = case.operation.path
        if response.status_code == 200 and path.endswith(("/unload", "/unpin")):
            self.unloaded = True
        case.validate_response(response, headers=self.headers, additional_checks=[api_errors])
        return response

    def check_afterwards(self) -> None:
        d = self.daemon
        assert d.proc.poll() is None, d.log()
        assert httpx.get(d.url + "/health", timeout=10).status_code == 200
        worker = self.worker()
        assert worker["restarts"] == 0, worker  # the worker never crashed
        for path in LISTINGS:  # what the fuzzer left behind still reads
            r = self.get(path)
            assert r.status_code == 200, (path, r.text[:500])
        if not self.unloaded:
            assert worker["pid"] == self.pid, worker
        bad = [_readable(line) for line in d.log().splitlines() if _unexpected(line)]
        assert not bad, "\n\n".join(bad[:10])
        ops = {op for op, _ in self.statuses}
        cases = sum(self.statuses.values())
        took = time.monotonic() - self.started
        print(f"\nfuzzed {len(ops)} operations, {cases} cases in {took:.0f} s")
        for (op, status), n in sorted(self.statuses.items()):
            print(f"  {op:45} {status} x{n}")


def _unexpected(line: str) -> bool:
    """A daemon log line that is an error, or carries a traceback, and is not known."""
    if "Traceback" not in line and '"level":"error"' not in line and " ERROR " not in line:
        return False
    return not any(known in line for known in EXPECTED_ERRORS)


def _readable(line: str) -> str:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    return f"{record.get('msg')}\n{str(record.get('exc_info', ''))[-1500:]}"


def _start(hub: HubServer, cache: Any, env: dict[str, str] | None = None) -> Daemon:
    env = {"HF_ENDPOINT": hub.url, **(env or {})}
    return Daemon("--cache-dir", str(cache), *DAEMON_ARGS, env=env).wait_healthy()


@pytest.fixture(scope="module")
def open_daemon(hub, tmp_path_factory):
    d = _start(hub, tmp_path_factory.mktemp("cache"))
    yield Fuzzed(d, {})
    d.stop()


@pytest.fixture(scope="module")
def keyed_daemon(hub, tmp_path_factory):
    d = _start(hub, tmp_path_factory.mktemp("cache"), env={"MULLAMA_API_KEY": KEY})
    yield Fuzzed(d, {"Authorization": f"Bearer {KEY}"})
    d.stop()


# Valid requests the fuzzer is unlikely to write, for the success bodies of the model
# store's operations (a pull from the stand-in Hub, show, copy, create) and a stream.
EXPLICIT = [
    ("POST", "/api/pull", {"model": TINY, "stream": False}),
    ("POST", "/api/pull", {"model": TINY}),
    ("POST", "/api/show", {"model": TINY}),
    ("POST", "/api/copy", {"source": TINY, "destination": "tiny-copy"}),
    ("DELETE", "/api/delete", {"model": "tiny-copy"}),
    ("POST", "/api/create", {"model": "pirate", "from": MODEL, "system": "Arr.", "stream": False}),
    ("POST", "/api/create", {"model": "pirate2", "from": MODEL}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                      "stream": True, "stream_options": {"include_usage": True}}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "stream": True}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "Hi", "stream": True}),
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 4, "stream": True,
                              "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi"}),
    ("POST", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/completion", {"prompt": "Hi", "stream": True}),
]  # fmt: skip


def run_explicit(fuzzed: Fuzzed, schema: Any) -> None:
    for method, path, body in EXPLICIT:
        fuzzed.run(schema[path][method].Case(body=body, media_type=JSON))
    # A stored response, read back and deleted.
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4}
    created = fuzzed.run(schema["/v1/responses"]["POST"].Case(body=body, media_type=JSON))
    stored = {"response_id": created.json()["id"]}
    for method in ("GET", "DELETE", "GET"):  # the last one: 404, it is gone
        fuzzed.run(schema["/v1/responses/{response_id}"][method].Case(path_parameters=stored))


def _same_document(fuzzed: Fuzzed, keyed: bool) -> None:
    served = orjson.dumps(fuzzed.get("/openapi.json").json(), option=orjson.OPT_INDENT_2)
    ours = orjson.dumps(served_document(keyed), option=orjson.OPT_INDENT_2)
    diff = difflib.unified_diff(
        ours.decode().splitlines(), served.decode().splitlines(), lineterm=""
    )
    assert served == ours, "\n".join(list(diff)[:80])


def test_open_daemon_serves_the_fuzzed_document(open_daemon):
    _same_document(open_daemon, keyed=False)


def test_open_explicit(open_daemon):
    run_explicit(open_daemon, OPEN)


@OPEN.parametrize()
def test_fuzz_without_keys(case, open_daemon):
    open_daemon.run(case)


def test_open_daemon_and_worker_stay_up(open_daemon):
    open_daemon.check_afterwards()


def test_keyed_daemon_serves_the_fuzzed_document(keyed_daemon):
    _same_document(keyed_daemon, keyed=True)


def test_keyed_explicit(keyed_daemon):
    run_explicit(keyed_daemon, KEYED)


@KEYED.parametrize()
def test_fuzz_with_a_key(case, keyed_daemon):
    keyed_daemon.run(case)


def test_keyed_daemon_and_worker_stay_up(keyed_daemon):
    keyed_daemon.check_afterwards()


PATH_MUTATIONS = int(os.environ.get("MULLAMA_FUZZ_PATHS", "600"))


def test_fuzzed_admin_paths_with_an_inference_key_do_nothing(hub, tmp_path_factory):
    """Random disguises of every admin route's path (encoded control characters, slashes,
    dots, case, suffixes, stacked), sent with an inference key and bodies that would pull
    from the stand-in Hub, copy, create, delete, unpin or stop: none succeeds, and the
    store, the served models and the daemon are as before."""
    import random

    from tests.disguises import ADMIN_OPERATIONS, mutate, send

    admin_key, infer_key = "sk-fz-admin-" + "7" * 24, "sk-fz-infer-" + "8" * 24
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(f"- {{name: ops, key: {admin_key}, scope: admin}}\n"
                    f"- {{name: app, key: {infer_key}}}\n")  # fmt: skip
    cache = tmp_path_factory.mktemp("cache")
    d = _start(hub, cache, env={"MULLAMA_API_KEY_FILE": str(keys)})
    try:
        admin = {"Authorization": f"Bearer {admin_key}"}
        ops = [(m, p.replace("hf.co/attacker/Evil-GGUF", TINY), b) for m, p, b in ADMIN_OPERATIONS]
        ops = [(m, p, {**b, "model": TINY} if p == "/api/pull" else b) for m, p, b in ops]
        files = sorted(str(p) for p in cache.rglob("*"))
        tags = httpx.get(d.url + "/api/tags", headers=admin, timeout=30).json()
        rng = random.Random(SEED)
        seen: Counter[int] = Counter()
        for _ in range(PATH_MUTATIONS):
            method, path, body = rng.choice(ops)
            spelling = mutate(path, rng)
            status, raw = send(d.port, method, spelling, {"X-API-Key": infer_key}, body)
            seen[status] += 1
            assert not 200 <= status < 300, (method, spelling, raw[:300])
        assert seen[400] and seen[403], seen  # both refusals happened
        assert d.proc.poll() is None
        assert sorted(str(p) for p in cache.rglob("*")) == files
        assert httpx.get(d.url + "/api/tags", headers=admin, timeout=30).json() == tags
        # The admin key pulls the same model (so a leak above would have shown).
        r = httpx.post(d.url + "/api/pull", json={"model": TINY, "stream": False},
                       headers=admin, timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        d.stop()
