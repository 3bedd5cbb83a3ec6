"""Which paths are public, which need an admin key: the one place that says so.

Everything not listed as public needs a key when keys are configured (deny by default),
so routes added later are protected without touching this file. Paths are compared with
the raw ASGI ``scope["path"]``, never with a URL rebuilt from the Host header.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.types import Scope

HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/v1/health"})
METRICS_PATH = "/metrics"
DAEMON_STOP_PATH = "/api/daemon/stop"
DAEMON_STATUS_PATH = "/api/daemon/status"

# Model management and daemon control: an admin key (or, without keys, a local caller).
ADMIN_PATHS = frozenset(
    {"/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/push", DAEMON_STOP_PATH}
)
_ADMIN_PATTERNS = (re.compile(r"^/api/models/.+/(load|unload|pin|unpin)$"),)

# Set by the control-socket server on every request it receives (the socket's file mode
# 0600 is its access control); clients cannot set scope keys.
LOCAL_SOCKET_SCOPE_KEY = "mullama.local_socket"


# The web UI's pages and assets hold nothing; the API calls they make need a key.
UI_PATH = "/ui"


def is_ui(path: str) -> bool:
    return path == UI_PATH or path.startswith(UI_PATH + "/")


def is_public(path: str, metrics_public: bool) -> bool:
    return path in HEALTH_PATHS or (metrics_public and path == METRICS_PATH) or is_ui(path)


def is_admin(path: str) -> bool:
    return path in ADMIN_PATHS or any(p.match(path) for p in _ADMIN_PATTERNS)


def is_lifecycle_exempt(path: str) -> bool:
    """Answered even while draining and never counted as in-flight work."""
    return path in HEALTH_PATHS or path in (METRICS_PATH, DAEMON_STOP_PATH, DAEMON_STATUS_PATH)


def via_local_socket(scope: Scope) -> bool:
    return bool(scope.get(LOCAL_SOCKET_SCOPE_KEY))


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
