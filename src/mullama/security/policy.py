"""Who may call a route: what each route declares, and who is calling.

Routes declare what they need with the decorators of ``mullama.access`` (``@public``,
``@metrics``, ``@admin``, ``@exempt``); a route that says nothing needs a key (deny by
default), so routes added later are protected without touching this file. The
middleware finds the route the router will run for a request with the router's own
matching (``route.matches(scope)``: first full match, else first partial one), so no
spelling of a path (a decoded newline, a trailing ``/``, ``.`` or ``;x``, doubled
slashes, another case) reaches a handler under another route's rule: a path no route
matches needs a key, then gets 404. An admin endpoint also checks the caller itself once
routed (``@admin`` wraps it). Paths holding control characters are refused before
anything else (400, security/routing.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from ..access import (
    DEFAULT_RULE,
    LOCAL_SOCKET_SCOPE_KEY,
    Access,
    Rule,
    rule_of,
    via_local_socket,
)
from ..errors import Forbidden

__all__ = [
    "LOCAL_SOCKET_SCOPE_KEY",
    "RULE_SCOPE_KEY",
    "Access",
    "Rule",
    "rule_of",
    "via_local_socket",
]

# The rule of the route a request will run, found once by RouteRuleMiddleware.
RULE_SCOPE_KEY = "mullama.rule"


def _match(routes: Iterable[BaseRoute], scope: Scope) -> tuple[Match, BaseRoute | None]:
    partial = None
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            if getattr(getattr(route, "include_context", None), "prefix", ""):
                raise ValueError("routers are included without a prefix (their routes say it)")
            match, leaf = _match(included.routes, scope)
        else:
            match, _ = route.matches(scope)
            leaf = route
        if match is Match.FULL:
            return match, leaf
        if match is Match.PARTIAL and partial is None:
            partial = leaf
    return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, None)


def matched_route(routes: Iterable[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router will run for ``scope``: the first full match, else the first
    partial one (a method it does not take: 405), through included routers as FastAPI
    walks them. None: 404 (or a redirect to the path with a slash added or removed, which
    is a new request). ``check_route`` (after routing) refuses any request whose route
    turns out to be another one."""
    probe = {k: dict(v) if isinstance(v, dict) else v for k, v in scope.items()}
    return _match(routes, probe)[1]


def check_route(request: Request) -> None:
    """An app-wide dependency, run once the router has chosen the route: the rule the
    guards enforced must be the rule of the route that runs (fails closed if the
    prediction above ever differs from the router's own choice)."""
    scope = request.scope
    if scope.get(RULE_SCOPE_KEY) is None:  # no guards in front (an app under test)
        return
    if rule_of(scope.get("route")) != request_rule(scope):
        raise Forbidden("this request was authorised for another route; refused")


def request_rule(scope: Scope) -> Rule:
    """The rule RouteRuleMiddleware found for this request (the default if none ran)."""
    rule = scope.get(RULE_SCOPE_KEY)
    return rule if isinstance(rule, Rule) else DEFAULT_RULE


def has_control_character(path: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)


def is_public(rule: Rule, metrics_public: bool) -> bool:
    return rule.access is Access.PUBLIC or (metrics_public and rule.access is Access.METRICS)


def is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local_caller(scope: Scope) -> bool:
    if via_local_socket(scope):
        return True
    client = scope.get("client")
    return bool(client) and is_loopback_ip(str(client[0]))
