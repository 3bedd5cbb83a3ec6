"""``/openapi.json``: what the routes say of themselves (api/openapi.py), and what the
middleware in front of them can answer on each path, as configured: the Origin and Host
guards (403), a control character in a path parameter (400), the body limit (413) and
media type (415), API keys (401, and the security schemes), rate limits (429), draining
(503) and --request-timeout (504). Which path is public, admin or exempt is what each
route declares (security/policy.py), as the middleware reads it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from ..api.openapi import add_errors, api_document
from ..security.origin import BODY_METHODS
from ..security.policy import Rule, is_public, rule_of


def install_openapi(app: FastAPI, routes: list[APIRoute]) -> None:
    """Serve the document of ``routes`` (the app's, those of its routers), made once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_document(app: FastAPI, routes: list[APIRoute]) -> dict[str, Any]:
    doc = api_document(routes, app.state.models.default_name or "MODEL")
    guards = _Guards.of(app)
    if guards.keys:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    doc["components"]["headers"] = HEADERS
    rules = {(r.path_format, m): rule_of(r) for r in routes for m in r.methods or ()}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rule = rules[(path, method.upper())]
            add_errors(op, path, guards.statuses(rule, method.upper(), "{" in path))
            if guards.keys and not is_public(rule, guards.metrics_public):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            op.setdefault("parameters", []).append(REQUEST_ID)
            for status, answer in op["responses"].items():
                answer["headers"] = _headers(status, answer)
    return copy.deepcopy(doc)  # no part shared with another document (HEADERS, ...)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _headers(status: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Every answer carries its request's id (RequestStateMiddleware); an error says when
    to retry (503, 429) or how to authenticate (401)."""
    out = {"X-Request-ID": _ref("X-Request-ID")}
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    if str(schema.get("$ref", "")).endswith("Error"):
        if status in ("429", "503"):
            out["Retry-After"] = _ref("Retry-After")
        elif status == "401":
            out["WWW-Authenticate"] = _ref("WWW-Authenticate")
    return out


REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The request's id in logs, traces and the answer (up to 128 printable "
    "characters; otherwise a new one is made).",
}
HEADERS = {
    "X-Request-ID": {
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        "description": "The request's id: the one it sent, or a new one.",
    },
    "Retry-After": {
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "description": "Seconds to wait before retrying.",
    },
    "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
}


@dataclass(frozen=True)
class _Guards:
    """What the middleware may answer, as configured."""

    keys: bool
    limits: bool
    metrics_public: bool

    @classmethod
    def of(cls, app: FastAPI) -> _Guards:
        settings = app.state.settings
        keyed = list(app.state.keys.keys)
        limits = bool(settings.rate_limit_requests or settings.rate_limit_tokens) or any(
            k.requests_per_minute or k.tokens_per_minute for k in keyed
        )
        return cls(keys=bool(keyed), limits=limits, metrics_public=settings.metrics_public)

    def statuses(self, rule: Rule, method: str, parameters: bool = False) -> set[int]:
        codes = {403, 413}  # the Origin (and Host) guard; a body over --max-body-size
        if parameters:
            codes.add(400)  # a path parameter holding a control character
        if method in BODY_METHODS:
            codes.add(415)  # a body that is not declared JSON
        if not is_public(rule, self.metrics_public):
            if self.keys:
                codes.add(401)
            if self.limits:
                codes.add(429)
        if not rule.lifecycle_exempt:
            codes.add(503)  # draining
            if rule.timed:
                codes.add(504)  # --request-timeout
        return codes
