"""/health and /api/system/status."""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import ORJSONResponse

from .. import __version__

router = APIRouter()


def _uptime(request: Request) -> float:
    return time.time() - request.app.state.started_at


@router.get("/health")
@router.get("/v1/health")
async def health(request: Request) -> ORJSONResponse:
    models = request.app.state.models
    return ORJSONResponse(
        {
            "status": "ok",
            "models_loaded": sum(1 for c in models.clients() if c.alive),
            "uptime_secs": round(_uptime(request), 3),
            "version": __version__,
        }
    )


@router.get("/health/live")
async def live() -> ORJSONResponse:
    return ORJSONResponse({"status": "alive"})


@router.get("/health/ready")
async def ready(request: Request) -> ORJSONResponse:
    lifecycle = request.app.state.lifecycle
    body = {"status": "ready" if lifecycle.ready else lifecycle.phase.value}
    if lifecycle.failed_models:
        body["failed_models"] = lifecycle.failed_models
        body["status"] = "degraded"
    return ORJSONResponse(body, status_code=200 if lifecycle.ready else 503)


def _rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@router.get("/api/system/status")
async def system_status(request: Request) -> ORJSONResponse:
    models = request.app.state.models
    loaded = []
    for c in models.clients():
        st = c.stats()
        loaded.append(
            {
                "name": c.name,
                "loaded": c.alive,
                "pid": c.pid if c.alive else None,
                "active_sequences": st.active if c.alive else 0,
                "queued_sequences": st.queued if c.alive else 0,
                "kv_cache_used": st.kv_used,
                "tokens_generated": st.generated_total,
                "kv_cache_size": st.kv_size,
                "parallel": c.spec.parallel,
                "context_size": c.spec.context_size,
                "memory_bytes": _rss_bytes(c.pid) if c.alive else 0,
                "restarts": c.restarts,
            }
        )
    return ORJSONResponse(
        {
            "version": __version__,
            "uptime_secs": round(_uptime(request), 3),
            "models_loaded": loaded,
            "memory": {"rss_bytes": _rss_bytes(os.getpid())},
        }
    )
