"""Find the route a request will run, once, before any guard reads its rule.

Outermost of the guards: a path holding a control character (a decoded ``%0A``, ``%0D``,
``%09``, ``%00``...) is a 400 before anything else sees it; otherwise the rule of the
route that the router will run (security/policy.py) goes into the scope, where the
in-flight, auth and OpenAPI code read it instead of comparing path strings.
"""

from __future__ import annotations

from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ClientError
from ..wire.errors import error_response
from .policy import RULE_SCOPE_KEY, has_control_character, matched_route, rule_of


class BadPath(ClientError):
    code = "invalid_path"


class RouteRuleMiddleware:
    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router  # the app's router: routes added later are seen too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if has_control_character(path):
            err = BadPath("the request path holds a control character")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await error_response(path, err)(scope, receive, send)
            return
        scope[RULE_SCOPE_KEY] = rule_of(matched_route(self.router.routes, scope))
        await self.app(scope, receive, send)
