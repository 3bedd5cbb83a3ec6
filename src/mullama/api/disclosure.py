"""Who is shown what: paths on disk only to an admin (or the control socket), the health
pages' details only to a caller the guards know when API keys are set.

A path on disk (a model's blob, the CPU-share folder, the control socket) tells a caller
how the host is laid out and which user runs the daemon: an inference key needs none of
it. /health is public (probes carry no key); with keys set, an anonymous caller learns
the status and the HTTP code, which is all a probe reads, and not which models run, the
version or the dependencies' error texts.

Read from the request only (the caller the auth middleware stored in
``scope["state"]["principal"]``: an admin-scope key, the control socket, or without keys
a caller allowed to manage models): the API layer never imports the guards.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request


def _principal(request: Request) -> Any:
    return request.scope.get("state", {}).get("principal")


def sees_paths(request: Request) -> bool:
    """Whether this caller may see paths on disk."""
    return bool(getattr(_principal(request), "admin", False))


def shown_path(request: Request, path: object, instead: Any = None) -> Any:
    """``str(path)`` for a caller who may see it, else ``instead`` (None stays None)."""
    if path is None:
        return None
    return str(path) if sees_paths(request) else instead


def sees_health_details(request: Request) -> bool:
    """Whether /health and /health/ready may say more than the status: always without
    keys; with keys, to a caller the guards identified (the control socket)."""
    return not request.app.state.keys or _principal(request) is not None
