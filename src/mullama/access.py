"""What a route needs, declared on the route itself.

The decorators mark an endpoint (put them below the router's decorators and
``@documented``); the guards (security/policy.py) read the mark of the route that will
run. A route with no mark needs a key of any scope (deny by default).

- ``@public``: no key, ever (health probes, the web UI's static pages, which hold nothing);
- ``@metrics``: no key with --metrics-public, otherwise a key;
- ``@admin``: an admin key, or without keys a caller on this machine. The endpoint checks
  the caller again once routed, so a request that some spelling of its path slipped past
  the middleware still stops here;
- ``@exempt``: answered while draining and never counted as in-flight work.

A neutral module (like errors.py): the API layer declares, the guards read, and neither
imports the other.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .errors import Forbidden

F = TypeVar("F", bound=Callable[..., Any])

# Set by the control-socket server on every request it receives (the socket's file mode
# 0600 is its access control); clients cannot set scope keys.
LOCAL_SOCKET_SCOPE_KEY = "mullama.local_socket"


class Access(enum.Enum):
    PUBLIC = "public"
    METRICS = "metrics"
    INFERENCE = "inference"
    ADMIN = "admin"


@dataclass(frozen=True)
class Rule:
    access: Access = Access.INFERENCE
    lifecycle_exempt: bool = False

    @property
    def timed(self) -> bool:
        """Bound by --request-timeout: not model management (pulls of big files)."""
        return self.access is not Access.ADMIN


DEFAULT_RULE = Rule()
_RULE_ATTR = "__mullama_rule__"


def _declare(fn: Any, **changes: Any) -> None:
    setattr(fn, _RULE_ATTR, replace(getattr(fn, _RULE_ATTR, DEFAULT_RULE), **changes))


def rule_of(route: object) -> Rule:
    """The rule a route (or None: no route) declares."""
    return getattr(getattr(route, "endpoint", None), _RULE_ATTR, DEFAULT_RULE)


def public(fn: F) -> F:
    _declare(fn, access=Access.PUBLIC)
    return fn


def metrics(fn: F) -> F:
    _declare(fn, access=Access.METRICS)
    return fn


def exempt(fn: F) -> F:
    _declare(fn, lifecycle_exempt=True)
    return fn


def admin(fn: F) -> F:
    if "request" not in inspect.signature(fn).parameters:
        raise TypeError(f"admin endpoint {fn.__name__} must take a `request` parameter")

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        require_admin(kwargs["request"].scope)
        return await fn(*args, **kwargs)

    _declare(guarded, access=Access.ADMIN)
    return guarded  # type: ignore[return-value]


def via_local_socket(scope: Any) -> bool:
    return bool(scope.get(LOCAL_SOCKET_SCOPE_KEY))


def require_admin(scope: Any) -> None:
    """The caller the auth middleware found may manage models (or came over the socket)."""
    if via_local_socket(scope):
        return
    principal = scope.get("state", {}).get("principal")
    if principal is None or not getattr(principal, "admin", False):
        raise Forbidden("this route needs an admin API key (or a caller on this machine)")
