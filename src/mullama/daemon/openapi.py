"""``/openapi.json``: what the routes say of themselves (api/openapi.py), and what the
middleware in front of them can answer on each path, as configured: the Origin and Host
guards (403), the body limit (413) and media type (415), API keys (401, and the security
schemes), rate limits (429), draining (503) and --request-timeout (504). Which path is
public, admin or exempt comes from security/policy.py, as the middleware reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from ..api.openapi import add_errors, api_document
from ..security.origin import BODY_METHODS
from ..security.policy import is_admin, is_lifecycle_exempt, is_public


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
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            add_errors(op, path, guards.statuses(path, method.upper()))
            if guards.keys and not is_public(path, guards.metrics_public):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


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

    def statuses(self, path: str, method: str) -> set[int]:
        codes = {403, 413}  # the Origin (and Host) guard; a body over --max-body-size
        if method in BODY_METHODS:
            codes.add(415)  # a body that is not declared JSON
        if not is_public(path, self.metrics_public):
            if self.keys:
                codes.add(401)
            if self.limits:
                codes.add(429)
        if not is_lifecycle_exempt(path):
            codes.add(503)  # draining
            if not is_admin(path):
                codes.add(504)  # --request-timeout
        return codes
