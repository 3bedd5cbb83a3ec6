"""What each caller is shown (api/disclosure.py), against the real daemon with API keys:
/health without a key says the status only; paths on disk (the model's file, the
CPU-share folder, the control socket) reach an admin key or the control socket, never
an inference key, on any route that has one."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL, Daemon

ADMIN = "sk-admin-" + "5" * 24
INFER = "sk-infer-" + "6" * 24


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(
        f"keys:\n"
        f"  - {{name: ops, key: {ADMIN}, scope: admin}}\n"
        f"  - {{name: app, key: {INFER}, scope: inference}}\n"
    )
    keys.chmod(0o600)
    with Daemon("--api-key-file", str(keys), "--context-size", "512").wait_healthy() as d:
        yield d


def _get(d: Daemon, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(d.url + path, headers=headers, timeout=30)


def _local(d: Daemon, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(d.socket))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as c:
        return c.get(path)


def test_health_without_a_key_says_the_status_only(keyed):
    for path in ("/health", "/v1/health"):
        r = _get(keyed, path)  # ok, or degraded while a busy machine slows a probe
        assert r.status_code == 200 and list(r.json()) == ["status"], r.text
        assert r.json()["status"] in ("ok", "degraded")
    r = _get(keyed, "/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    full = _local(keyed, "/health").json()  # the control socket sees it all
    assert full["models_loaded"] == 1 and "version" in full and "uptime_secs" in full
    assert f"model:{MODEL}" in full["dependencies"]


def _paths(d: Daemon, key: str) -> dict[str, object]:
    """Every path on disk a route shows, by route."""
    models = _get(d, "/api/models", key).json()["models"]
    status = _get(d, "/api/system/status", key).json()
    show = httpx.post(d.url + "/api/show", json={"model": MODEL}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}).json()  # fmt: skip
    return {
        "/api/models": next(m["path"] for m in models if m["name"] == MODEL),
        "/api/show": show["modelfile"],
        "/props": _get(d, f"/props?model={MODEL}", key).json()["model_path"],
        "/api/system/status": status["cpu"]["share_dir"],
        "/api/daemon/status": _get(d, "/api/daemon/status", key).json()["socket"],
    }


def test_an_inference_key_is_shown_no_path_on_disk(keyed):
    admin = _paths(keyed, ADMIN)
    model_file = admin["/api/models"]
    assert isinstance(model_file, str) and model_file.endswith(".gguf")
    assert admin["/api/show"] == f"FROM {model_file}\n"
    assert admin["/props"] == model_file
    assert admin["/api/daemon/status"] == str(keyed.socket)
    assert admin["/api/system/status"] is None or admin["/api/system/status"].startswith("/")
    inference = _paths(keyed, INFER)
    assert inference == {
        "/api/models": None,
        "/api/show": f"FROM {MODEL}\n",
        "/props": MODEL,
        "/api/system/status": None,
        "/api/daemon/status": None,
    }
    # Nor anywhere else in what those routes answer an inference key.
    for path in ("/api/tags", "/api/ps", "/v1/models", "/api/system/status",
                 f"/props?model={MODEL}", f"/tokenizer_info?model={MODEL}"):  # fmt: skip
        r = _get(keyed, path, INFER)
        assert r.status_code == 200, (path, r.text)
        assert model_file not in r.text and str(keyed.socket) not in r.text, path
