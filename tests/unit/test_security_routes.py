"""Deny by default: walk the app's route table and ask the running app what each route
needs; the admin routes are written out here, independently of how the code marks them."""

from __future__ import annotations

import re

import pytest
from fastapi import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from mullama.access import admin
from mullama.config import Settings
from mullama.daemon.app import create_app
from mullama.models.manager import ModelManager

HEALTH_PATHS = {"/health", "/health/live", "/health/ready", "/v1/health"}
# What an inference key must never do: model management and daemon control.
ADMIN_ROUTES = {
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/copy"),
    ("POST", "/api/create"),
    ("POST", "/api/push"),
    ("POST", "/api/daemon/stop"),
    ("POST", "/api/models/x/load"),
    ("POST", "/api/models/x/unload"),
    ("POST", "/api/models/x/pin"),
    ("POST", "/api/models/x/unpin"),
}


def is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


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
    @app.post("/api/push")  # an admin route added later, marked as such
    @admin
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
    """The routes an inference key is refused on are exactly the admin operations (asked
    of the running app, not of the policy's own tables)."""
    client = TestClient(app, base_url="http://127.0.0.1")
    refused = set()
    for method, path in _routes(app):
        if path in HEALTH_PATHS or is_ui(path):
            continue
        inference = client.request(method, path, headers={"Authorization": f"Bearer {INFER_KEY}"})
        admin_ = client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert admin_.status_code not in (401, 403), (method, path, admin_.text)
        assert inference.status_code != 401, (method, path)
        if inference.status_code == 403:
            assert "needs admin" in inference.json()["error"], (method, path)
            refused.add((method, path))
    assert refused == ADMIN_ROUTES


def test_an_admin_endpoint_checks_the_caller_itself(app):
    """Past the middleware (as if a spelling of the path had slipped through it), the
    endpoint still refuses a caller that is not admin."""
    import asyncio

    from mullama.errors import Forbidden
    from mullama.security.auth import Principal

    route = next(r for r in app.routes if getattr(r, "path", "") == "/api/push")

    class Req:
        scope = {"state": {"principal": Principal("app", admin=False, rate_key=None)}}

    with pytest.raises(Forbidden):
        asyncio.run(route.endpoint(request=Req()))
    Req.scope = {"state": {"principal": Principal("ops", admin=True, rate_key=None)}}
    assert asyncio.run(route.endpoint(request=Req())) == {"ok": True}


def test_an_admin_endpoint_must_take_the_request():
    with pytest.raises(TypeError):

        @admin
        async def stop() -> None:  # pragma: no cover - refused when decorated
            return None


def test_unknown_paths_are_401_not_404(app):
    client = TestClient(app, base_url="http://127.0.0.1")
    for path in ("/nope", "/health/../v1/models", "//health", "/health/", "/HEALTH"):
        assert client.get(path).status_code == 401, path


def test_the_route_that_runs_must_be_the_one_authorised(app):
    """check_route (after routing) fails closed when the guards' rule is another route's."""
    from starlette.requests import Request as StarletteRequest

    from mullama.access import Access, Rule
    from mullama.errors import Forbidden
    from mullama.security.policy import RULE_SCOPE_KEY, check_route

    pull = next(r for r in app.routes if getattr(r, "path", "") == "/api/push")
    scope = {"type": "http", "route": pull, RULE_SCOPE_KEY: Rule(Access.INFERENCE)}
    with pytest.raises(Forbidden):
        check_route(StarletteRequest(scope))
    check_route(StarletteRequest({**scope, RULE_SCOPE_KEY: Rule(Access.ADMIN)}))


@pytest.fixture
def exposed_app(tmp_path):
    settings = Settings(http_addr="0.0.0.0", cache_dir=str(tmp_path / "models"))
    return create_app(settings, models=ModelManager(settings))


def test_exposed_without_keys_a_remote_caller_reaches_no_admin_route(exposed_app):
    from tests.disguises import disguises

    remote = TestClient(exposed_app, base_url="http://203.0.113.7", client=("203.0.113.7", 5555))
    local = TestClient(exposed_app, base_url="http://127.0.0.1", client=("127.0.0.1", 5555))
    for method, path in sorted(ADMIN_ROUTES):
        assert local.request(method, path, json={}).status_code not in (401, 403), path
        for spelling in [path, *disguises(path)]:
            r = remote.request(method, spelling, json={}, follow_redirects=False)
            assert r.status_code in (400, 403, 404, 405, 307, 308), (method, spelling, r.text)
    # Inference stays open to everyone, as on Ollama.
    assert remote.get("/v1/models").status_code == 200
