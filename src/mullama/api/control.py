"""Daemon control endpoints used by ``mullama daemon status|stop`` over the control socket
(JSON, never pickle). Stopping needs an admin key or the control socket."""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from .. import __version__
from ..access import admin, exempt
from ..errors import Unavailable
from ..wire.framing import ORJSONResponse
from . import answers as a
from .body import parse_json, validate
from .disclosure import shown_path
from .openapi import documented

router = APIRouter()


class StopBody(BaseModel):
    timeout: float | None = Field(None, ge=0)
    force: bool = False


@router.get("/api/daemon/status")
@documented(ok=a.DaemonStatus)
@exempt
async def daemon_status(request: Request) -> ORJSONResponse:
    state = request.app.state
    settings = state.settings
    scheme = "https" if settings.tls_cert else "http"
    return ORJSONResponse(
        {
            "status": state.lifecycle.phase.value,
            "ready": state.lifecycle.ready,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_secs": round(time.time() - state.started_at, 3),
            "models": state.models.names,
            "in_flight": len(state.inflight),
            "http": f"{scheme}://{settings.http_addr}:{settings.http_port}",
            "socket": shown_path(request, getattr(state, "control_socket", None)),
        }
    )


@router.post("/api/daemon/stop")
@documented(StopBody, a.Stopping, status=202, body_required=False, errors=(400, 503))
@admin
@exempt
async def daemon_stop(request: Request) -> ORJSONResponse:
    raw = await request.body()
    body = validate(StopBody, await parse_json(request)) if raw.strip() else StopBody()
    shutdown = getattr(request.app.state, "shutdown", None)
    if shutdown is None:
        raise Unavailable("this app is not running under `mullama serve`; cannot stop it")
    shutdown.request(timeout=body.timeout, force=body.force)
    return ORJSONResponse(
        {"status": "stopping", "pid": os.getpid(), "force": body.force}, status_code=202
    )
