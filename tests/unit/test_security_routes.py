"""Deny by default: walk the app's route table and check every route needs a key."""

from __future__ import annotations

import re

import pytest
from fastapi import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from mullama.config import Settings
from mullama.daemon.app import create_app
from mullama.models.manager import ModelManager
from mullama.security.policy import ADMIN_PATHS, HEALTH_PATHS, is_admin, is_ui

ADMIN_KEY = "adm-" + "a" * 32
INFER_KEY = "inf-" + "b" * 32


@pytest.fixture
def app(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"- {{name: ops, key: {ADMIN_KEY}, scope: admin}}\n"
        f"- {{name: app, key: {INFER_KEY}, scope: inference}}\n"
    )
    settings = Settings(api_key_file=keys, cache_dir=str(tmp_path / "models"))
    app = create_app(settings, models=ModelManager(settings))

    # Routes added later (other features) are protected without any change to security/.
    @app.post("/api/push")  # an admin path with no route yet
    async def push(request: Request) -> dict:
        return {"ok": True}

    @app.get("/v2/brand-new")
    async def brand_new() -> dict:
        return {"ok": True}

    return app


pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


def _walk(routes, prefix: str = ""):
    """Every (path, methods) of the route table, through included routers (FastAPI keeps
    them as wrappers that hold the original router and the include prefix)."""
    for route in routes:
        if isinstance(route, Route):
            yield prefix + route.path, route.methods or {"GET"}
        elif hasattr(route, "original_router"):
            inner = prefix + route.include_context.prefix
            yield from _walk(route.original_router.routes, inner)
        elif hasattr(route, "routes"):  # Mount
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def _routes(app) -> list[tuple[str, str]]:
    out = []
    for path, methods in _walk(app.routes):
        path = re.sub(r"\{[^}]+\}", "x", path)
        for method in sorted(methods):
            out.append((method, path))
    assert len(out) > 20, out
    return out


def test_every_route_needs_a_key(app):
    client = TestClient(app, base_url="http://127.0.0.1")
    routes = _routes(app)
    assert ("POST", "/v1/chat/completions") in routes and ("POST", "/api/pull") in routes
    for method, path in routes:
        resp = client.request(method, path)
        if path in HEALTH_PATHS or is_ui(path):  # the UI's static pages hold no data
            assert resp.status_code != 401, (method, path)
            continue
        assert resp.status_code == 401, (method, path, resp.status_code)
        assert resp.headers["www-authenticate"] == "Bearer"
        if method == "HEAD":
            pass
        elif path.startswith("/api/"):
            assert isinstance(resp.json()["error"], str), path
        else:
            assert resp.json()["error"]["type"] == "authentication_error", path
        bad = client.request(method, path, headers={"X-API-Key": "wrong"})
        assert bad.status_code == 401, (method, path)


def test_admin_routes_need_an_admin_key(app):
    client = TestClient(app, base_url="http://127.0.0.1")
    for method, path in _routes(app):
        if path in HEALTH_PATHS or is_ui(path):
            continue
        inference = client.request(method, path, headers={"Authorization": f"Bearer {INFER_KEY}"})
        admin = client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.status_code not in (401, 403), (method, path, admin.text)
        if is_admin(path):
            assert inference.status_code == 403, (method, path)
        else:
            assert inference.status_code not in (401, 403), (method, path, inference.text)


def test_admin_path_set():
    for path in ADMIN_PATHS:
        assert is_admin(path)
    assert is_admin("/api/models/smollm2:135m/load")
    assert is_admin("/api/models/org/name/unload")
    assert not is_admin("/api/chat")
    assert not is_admin("/api/pull/")  # a different path; the router 404s it (after auth)


def test_unknown_paths_are_401_not_404(app):
    client = TestClient(app, base_url="http://127.0.0.1")
    for path in ("/nope", "/health/../v1/models", "//health", "/health/", "/HEALTH"):
        assert client.get(path).status_code == 401, path
