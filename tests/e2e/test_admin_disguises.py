"""An inference key (or, without keys, a rebound web page) never reaches an admin route,
whatever spelling of the path, the method or the Host it sends: the daemon, its models
and its store are unchanged afterwards. Each request is sent byte for byte."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Daemon
from tests.disguises import ADMIN_OPERATIONS, OVERRIDES, disguises, send

ADMIN = "sk-admin-" + "5" * 24
INFER = "sk-infer-" + "6" * 24
# A pull that got through would go to a closed local port, never out to a Hub.
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}


def _store_state(cache: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(cache)), p.stat().st_size) for p in cache.rglob("*") if p.is_file()
    )


def _names(d: Daemon, headers: dict) -> set[str]:
    r = httpx.get(d.url + "/api/tags", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return {m["name"] for m in r.json()["models"]}


def _model(d: Daemon, headers: dict) -> tuple[str, bool]:
    r = httpx.get(d.url + "/api/system/status", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    m = next(m for m in r.json()["models"] if m["name"] == MODEL)
    return m["state"], m["pinned"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(
        f"- {{name: ops, key: {ADMIN}, scope: admin}}\n"
        f"- {{name: app, key: {INFER}, scope: inference}}\n"
    )
    cache = tmp_path_factory.mktemp("store")
    d = Daemon(
        "--api-key-file", str(keys), "--cache-dir", str(cache), "--session-disk", "0",
        "--parallel", "1", "--context-size", "256", "--model", MODEL,
        env=NO_HUB,
    ).wait_healthy()  # fmt: skip
    d.cache = cache
    yield d
    d.stop()


def test_an_inference_key_reaches_no_admin_route_by_any_spelling(keyed):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    # The admin key can do these things (so a leak below would show): a model to delete.
    r = httpx.post(keyed.url + "/api/copy", json={"source": MODEL, "destination": "victim"},
                   headers=admin, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    names, store = _names(keyed, admin), _store_state(keyed.cache)
    before = _model(keyed, admin)
    assert before == ("loaded", True)
    tried = 0
    for method, path, body in ADMIN_OPERATIONS:
        plain, _ = send(keyed.port, method, path, {"Authorization": f"Bearer {INFER}"}, body)
        assert plain == 403, (method, path, plain)
        for spelling in disguises(path):
            for extra in OVERRIDES:
                for auth in ({"Authorization": f"Bearer {INFER}"}, {"X-API-Key": INFER}, {}):
                    status, raw = send(keyed.port, method, spelling, {**auth, **extra}, body)
                    tried += 1
                    assert status in (400, 401, 403, 404, 405, 307, 308), (
                        method, spelling, extra, auth, raw[:300])  # fmt: skip
                    if "%0" in spelling[:4] or any(c in spelling for c in ("%0A", "%0D", "%00")):
                        assert status == 400, (method, spelling, raw[:300])
        # The other methods on the plain path (GET, PUT...) with an override header.
        for other in ("GET", "PUT", "PATCH", "HEAD"):
            status, raw = send(keyed.port, other, path,
                               {"Authorization": f"Bearer {INFER}", "X-HTTP-Method-Override": method},
                               body if other != "HEAD" else None)  # fmt: skip
            assert status in (403, 405), (other, path, raw[:300])
    assert tried > 1000
    assert keyed.proc.poll() is None, "the daemon stopped"
    assert _names(keyed, admin) == names and "victim" in names
    assert _store_state(keyed.cache) == store
    assert _model(keyed, admin) == before
    # The admin key still can (the guard refuses by scope, not by breaking the routes).
    r = httpx.request("DELETE", keyed.url + "/api/delete", json={"model": "victim"},
                      headers=admin, timeout=60)  # fmt: skip
    assert r.status_code == 200 and "victim" not in _names(keyed, admin)


def test_a_control_character_in_the_path_is_a_400_in_the_apis_shape(keyed):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    status, raw = send(keyed.port, "GET", "/v1/models%0A", auth)
    assert status == 400 and b'"type":"invalid_request_error"' in raw, raw
    status, raw = send(keyed.port, "GET", "/api/tags%00", auth)
    assert status == 400 and b"control character" in raw, raw
    status, raw = send(keyed.port, "GET", "/health%0D", {})  # before any other rule
    assert status == 400, raw


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """Listening on every address, without keys: inference is open, model management
    only from this machine."""
    cache = tmp_path_factory.mktemp("store")
    d = Daemon(
        "--http-addr", "0.0.0.0", "--allowed-hosts", "mybox.lan", "--cache-dir", str(cache),
        "--session-disk", "0", "--parallel", "1", "--context-size", "256", "--model", MODEL,
        env=NO_HUB,
    ).wait_healthy()  # fmt: skip
    yield d
    d.stop()


def _as(d: Daemon, host: str, method: str, path: str, body: dict) -> tuple[int, bytes]:
    """A request from this machine that addresses the daemon as ``host``, from a page of
    that origin (a browser sends both)."""
    origin = f"http://{host}:{d.port}"
    return send(d.port, method, path, {"Host": f"{host}:{d.port}", "Origin": origin}, body)


def test_a_rebound_page_gets_no_local_admin(exposed):
    """DNS rebinding: attacker.example now resolves to 127.0.0.1, so the browser sends
    the attacker's name as Host and Origin, from a local address."""
    copy = {"source": MODEL, "destination": "rebound"}
    for host in ("attacker.example", "rebind.attacker.example", "attacker.example.", "xn--e1a"):
        status, raw = _as(exposed, host, "POST", "/api/copy", copy)
        assert status == 403 and b"allowed-hosts" in raw, (host, raw[:300])
        status, _ = _as(exposed, host, "POST", "/api/daemon/stop", {"force": True})
        assert status == 403
        status, _ = _as(exposed, host, "POST", "/api/copy%0A", copy)
        assert status == 400
        # Inference stays open on an exposed daemon without keys (as Ollama's).
        status, _ = _as(exposed, host, "GET", "/v1/models", None)
        assert status == 200
    assert exposed.proc.poll() is None
    names = {m["name"] for m in httpx.get(exposed.url + "/api/tags", timeout=30).json()["models"]}
    assert "rebound" not in names
    # Addressed by IP, as localhost, or by an --allowed-hosts name: this machine's admin.
    for i, host in enumerate(("127.0.0.1", "localhost", "mybox.lan", "[::1]")):
        body = {"source": MODEL, "destination": f"local-{i}"}
        status, raw = _as(exposed, host, "POST", "/api/copy", body)
        assert status == 200, (host, raw[:300])


def test_a_get_never_loads_or_evicts_a_model(keyed):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(keyed.url + "/api/copy", json={"source": MODEL, "destination": "spare"},
                   headers=admin, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    httpx.post(keyed.url + "/api/models/spare/unload", headers=admin, timeout=60)
    paths = ["/props", "/tokenizer_info", "/v1/tokenizer_info", "/v1/models/spare", "/api/ps",
             "/api/tags", "/v1/models", "/api/system/status", "/api/models"]  # fmt: skip
    for path in paths:
        for auth in (admin, {"Authorization": f"Bearer {INFER}"}):
            r = httpx.get(keyed.url + path, params={"model": "spare"}, headers=auth, timeout=60)
            assert r.status_code in (200, 404, 409), (path, r.status_code, r.text)
    r = httpx.get(keyed.url + "/props", params={"model": "spare"}, headers=admin, timeout=60)
    assert r.status_code == 409 and "not loaded" in r.json()["error"]["message"], r.text
    status = httpx.get(keyed.url + "/api/system/status", headers=admin, timeout=30).json()
    states = {m["name"]: m["state"] for m in status["models"]}
    assert states.get("spare", "unloaded") == "unloaded" and states[MODEL] == "loaded"
    # Once loaded by a POST, the same GET answers.
    r = httpx.post(keyed.url + "/api/models/spare/load", headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    r = httpx.get(keyed.url + "/props", params={"model": "spare"}, headers=admin, timeout=60)
    assert r.status_code == 200 and r.json()["model_alias"] == "spare"
