"""Tenants do not see each other through the caches (security issue 31): with several API
keys, a prompt's KV is reused, and reported as cached, only for the key (or the key-file
tenant) that sent it, and a response-cache hit only answers the same tenant; vLLM's
cache_salt scopes them further; --share-cache-across-keys shares them again.

Each check uses keys that sent nothing before it, so "nothing reused" is exactly 0 (a
key's earlier requests would share the chat template's first tokens)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL, Daemon

NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
         "kappa", "lambda")  # fmt: skip
TEAM = ("gamma", "delta")  # one tenant, two keys
KEY = {name: f"sk-{name}-" + "7" * 24 for name in NAMES}


def _document(tag: str) -> str:
    return f"Report {tag}: " + " ".join(f"entry {i} of {tag} lists the item {i}" for i in range(30))


def _key_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    lines = [f"  - {{name: {n}, key: {KEY[n]}{', tenant: team' if n in TEAM else ''}}}"
             for n in NAMES]  # fmt: skip
    path.write_text("keys:\n" + "\n".join(lines) + "\n")
    return str(path)


def _daemon(tmp_path_factory, *extra: str):
    d = Daemon("--api-key-file", _key_file(tmp_path_factory), "--response-cache",
               "--parallel", "2", "--context-size", "1024", *extra).wait_healthy()  # fmt: skip
    return d


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    d = _daemon(tmp_path_factory)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = _daemon(tmp_path_factory, "--share-cache-across-keys")
    yield d
    d.stop()


def _post(d: Daemon, name: str, path: str, body: dict) -> httpx.Response:
    r = httpx.post(d.url + path, json=body, headers={"Authorization": f"Bearer {KEY[name]}"},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    return r


def _chat(d: Daemon, name: str, text: str, **extra) -> tuple[int, int, str | None]:
    """(prompt tokens, cached tokens, X-Mullama-Cache); sampled (not cacheable) unless
    ``extra`` says otherwise."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4,
            "temperature": 0.7, **extra}  # fmt: skip
    r = _post(d, name, "/v1/chat/completions", body)
    usage = r.json()["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return usage["prompt_tokens"], cached, r.headers.get("X-Mullama-Cache")


def test_another_key_does_not_reuse_or_see_a_prompt(scoped):
    text = _document("alpha")
    prompt, cached, _ = _chat(scoped, "alpha", text)
    assert prompt > 200 and cached == 0
    assert _chat(scoped, "beta", text)[1] == 0  # computed again, nothing reported
    # Nor through the Anthropic API's count of tokens read from the cache.
    r = _post(scoped, "iota", "/v1/messages", {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": text}],
    })  # fmt: skip
    assert r.json()["usage"]["cache_read_input_tokens"] == 0
    # Each key finds its own.
    assert _chat(scoped, "alpha", text)[1] >= prompt - 1
    assert _chat(scoped, "beta", text)[1] >= prompt - 1


def test_keys_of_one_tenant_share_their_prompts(scoped):
    text = _document("team")
    prompt, cached, _ = _chat(scoped, "gamma", text)
    assert cached == 0
    assert _chat(scoped, "delta", text)[1] >= prompt - 1  # the same tenant
    assert _chat(scoped, "epsilon", text)[1] == 0


def test_a_cached_answer_answers_only_its_tenant(scoped):
    text = _document("answer")
    deterministic = {"temperature": 0}
    assert _chat(scoped, "eta", text, **deterministic)[2] == "miss"
    assert _chat(scoped, "theta", text, **deterministic)[2] == "miss"  # no hit for another key
    assert _chat(scoped, "eta", text, **deterministic)[2] == "hit"
    assert _chat(scoped, "theta", text, **deterministic)[2] == "hit"
    # Another cache_salt is another scope for the response cache too.
    assert _chat(scoped, "eta", text, cache_salt="s1", **deterministic)[2] == "miss"


def test_a_cache_salt_is_a_scope_of_its_own(scoped):
    text = _document("salted")
    prompt, cached, _ = _chat(scoped, "zeta", text, cache_salt="salt-one")
    assert cached == 0
    assert _chat(scoped, "zeta", text, cache_salt="salt-two")[1] == 0
    assert _chat(scoped, "zeta", text)[1] == 0  # no salt: another scope again
    assert _chat(scoped, "zeta", text, cache_salt="salt-one")[1] >= prompt - 1


def test_cache_salt_on_the_responses_and_llama_server_apis(scoped):
    text = _document("responses")

    def respond(salt: str) -> dict:
        body = {"model": MODEL, "input": text, "max_output_tokens": 4, "store": False,
                "cache_salt": salt}  # fmt: skip
        return _post(scoped, "kappa", "/v1/responses", body).json()["usage"]

    first = respond("r1")
    assert first["input_tokens_details"]["cached_tokens"] == 0
    assert respond("r2")["input_tokens_details"]["cached_tokens"] == 0
    assert respond("r1")["input_tokens_details"]["cached_tokens"] >= first["input_tokens"] - 1

    def complete(salt: str) -> dict:
        body = {"prompt": _document("completion"), "n_predict": 4, "cache_salt": salt}
        return _post(scoped, "lambda", "/completion", body).json()

    first = complete("c1")
    assert first["tokens_cached"] == 0 and first["tokens_evaluated"] > 200
    assert complete("c2")["tokens_cached"] == 0
    assert complete("c1")["tokens_cached"] >= first["tokens_evaluated"] - 1


def test_an_empty_cache_salt_is_refused(scoped):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "cache_salt": ""}
    r = httpx.post(scoped.url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {KEY['alpha']}"}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"


def test_the_sharing_flag_lets_every_key_reuse_and_hit(shared):
    text = _document("shared")
    prompt, cached, _ = _chat(shared, "alpha", text)
    assert cached == 0
    assert _chat(shared, "beta", text)[1] >= prompt - 1
    deterministic = {"temperature": 0}
    assert _chat(shared, "eta", text, **deterministic)[2] == "miss"
    assert _chat(shared, "theta", text, **deterministic)[2] == "hit"
    # cache_salt still scopes a request when the keys share.
    assert _chat(shared, "zeta", text, cache_salt="own")[1] == 0


def test_a_stored_response_belongs_to_its_tenant(scoped):
    """Another key can neither read, continue nor delete a stored response (it is "not
    found"), even knowing its id; a key of the same tenant can."""
    body = {"model": MODEL, "input": "Say hi.", "max_output_tokens": 4, "store": True}
    rid = _post(scoped, "iota", "/v1/responses", body).json()["id"]
    other = {"Authorization": f"Bearer {KEY['kappa']}"}
    r = httpx.get(f"{scoped.url}/v1/responses/{rid}", headers=other, timeout=30)
    assert r.status_code == 404, r.text
    follow = {**body, "previous_response_id": rid}
    r = httpx.post(scoped.url + "/v1/responses", json=follow, headers=other, timeout=120)
    assert r.status_code == 404 and r.json()["error"]["param"] == "response_id", r.text
    r = httpx.delete(f"{scoped.url}/v1/responses/{rid}", headers=other, timeout=30)
    assert r.status_code == 404
    own = {"Authorization": f"Bearer {KEY['iota']}"}
    assert httpx.get(f"{scoped.url}/v1/responses/{rid}", headers=own, timeout=30).json()["id"] == rid
    assert _post(scoped, "iota", "/v1/responses", follow).json()["status"] in ("completed", "incomplete")
    # One tenant, two keys: the team shares its stored responses.
    team = _post(scoped, "gamma", "/v1/responses", body).json()["id"]
    mate = {"Authorization": f"Bearer {KEY['delta']}"}
    assert httpx.get(f"{scoped.url}/v1/responses/{team}", headers=mate, timeout=30).status_code == 200
