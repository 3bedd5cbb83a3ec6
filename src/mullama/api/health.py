"""/health, /health/live, /health/ready and /api/system/status.

These handlers only read in-memory state (the engines run in other processes), so they
answer at once even while every sequence is decoding."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Request

from .. import __version__
from ..access import exempt, public
from ..models.adapters import card as adapters_card
from ..wire.framing import ORJSONResponse
from . import answers as a
from .disclosure import sees_health_details, shown_path
from .openapi import documented

router = APIRouter()


@router.get("/health")
@router.get("/v1/health")
@documented(ok=a.Health, also={503: a.Health})
@public
@exempt
async def health(request: Request) -> ORJSONResponse:
    """200 while serving; 503 while the preloaded models are still loading (like
    llama-server) and once stopped. ``status`` is ok, degraded (a model failed to load,
    a circuit is open, or a dependency is down), starting, draining or stopped.
    ``dependencies`` are the background probes' last results (daemon/dependencies.py):
    this never waits on a dependency. With API keys set, a caller without one (a probe)
    gets the status only (api/disclosure.py)."""
    lifecycle = request.app.state.lifecycle
    obs = request.app.state.obs
    phase = lifecycle.phase.value
    open_circuits = sorted(
        name for name, b in request.app.state.models.circuits().items() if b.state != "closed"
    )
    deps = request.app.state.dependencies
    if phase == "ready":
        bad = lifecycle.failed_models or open_circuits or deps.degraded()
        status = "degraded" if bad else "ok"
    else:
        status = phase
    code = 503 if phase in ("starting", "stopped") else 200
    if not sees_health_details(request):
        return ORJSONResponse({"status": status}, status_code=code)
    return ORJSONResponse(
        {
            "status": status,
            "open_circuits": open_circuits,
            "dependencies": deps.snapshot(),
            "models_loaded": sum(1 for c in request.app.state.models.clients() if c.alive),
            "uptime_secs": round(obs.uptime(), 3),
            "version": __version__,
        },
        status_code=code,
    )


@router.get("/health/live")
@documented(ok=a.Live)
@public
@exempt
async def live() -> ORJSONResponse:
    return ORJSONResponse({"status": "alive"})


@router.get("/health/ready")
@documented(ok=a.Ready, also={503: a.Ready})
@public
@exempt
async def ready(request: Request) -> ORJSONResponse:
    lifecycle = request.app.state.lifecycle
    body = {"status": "ready" if lifecycle.ready else lifecycle.phase.value}
    if lifecycle.failed_models:
        body["status"] = "degraded"
        if sees_health_details(request):
            body["failed_models"] = lifecycle.failed_models
    return ORJSONResponse(body, status_code=200 if lifecycle.ready else 503)


@router.get("/api/system/status")
@documented(ok=a.SystemStatus)
async def system_status(request: Request) -> ORJSONResponse:
    obs = request.app.state.obs
    lifecycle = request.app.state.lifecycle
    snapshot = obs.snapshot()
    snaps = {s.name: s for s in snapshot.models}
    manager = request.app.state.models
    circuits = manager.circuits()
    loaded = [
        _worker_state(c, snaps[c.name], circuits.get(c.name), lifecycle.failed_models)
        for c in manager.clients()
    ]
    return ORJSONResponse(
        {
            "version": __version__,
            "status": lifecycle.phase.value,
            "uptime_secs": round(snapshot.uptime, 3),
            "models_loaded": loaded,
            "stats": obs.stats(),
            "memory": {
                "rss_bytes": snapshot.daemon_memory_bytes,
                "models_rss_bytes": sum(m.memory_bytes for m in snaps.values()),
                "budget_bytes": manager.budget,
                "estimated_bytes": sum(s.estimate for s in manager.served() if s.loaded),
            },
            "models": [
                *(_model_state(s, lifecycle.failed_models) for s in manager.served()),
                *(_remote_state(r) for r in manager.remotes.values()),
            ],
            "remote_models": [
                {"name": r.name, **r.describe(), "circuit": r.breaker.as_dict()}
                for r in manager.remotes.values()
            ],  # fmt: skip
            "latency": obs.latency(),
            "errors": dict(obs.errors),
            "prompt_tokens": obs.prompt_tokens(),
            "response_cache": _response_cache(manager),
            "history": obs.history_rates(),
            "pid": os.getpid(),
            "cpu": {
                **manager.cpu.as_dict(),
                "share": manager.settings.cpu_share,
                "share_dir": shown_path(request, manager.share_dir),
            },
        }
    )


def _worker_state(c: Any, snap: Any, circuit: Any, failed: dict[str, str]) -> dict[str, Any]:
    """A local model's engine worker for status pages: its process, slots, KV cache,
    threads, rates and circuit (``snap``: its ``ModelSnapshot``)."""
    st = c.stats()
    return {
        "name": c.name,
        "loaded": snap.loaded,
        "pid": c.pid if snap.loaded else None,
        "active_sequences": snap.active,
        "queued_sequences": snap.queued,
        "kv_cache_used": snap.kv_used,
        "kv_cache_size": snap.kv_size,
        "kv_unified": c.spec.kv_unified,
        # on / off, or auto: left to llama.cpp; null until loaded
        "flash_attn": c.info.flash_attn if snap.loaded and c.info else None,
        "threads": c.spec.threads,
        # Threads of its last decode step: its share while other models decode.
        "threads_now": st.threads if snap.loaded else None,
        "tokens_generated": st.generated_total,
        "tokens_per_second": round(snap.tokens_per_second, 3),
        "parallel": c.spec.parallel,
        "context_size": c.spec.context_size,
        "memory_bytes": snap.memory_bytes,
        "restarts": c.restarts,
        "load_error": failed.get(c.name),
        "circuit": circuit.as_dict() if circuit is not None else None,
        "kv_reuse": _kv_reuse(snap.kv_cache, c.spec.cache_ram),
        "slots": c.slots(),
    }


def _model_state(served: Any, failed: dict[str, str]) -> dict[str, Any]:
    """A served model's state for status pages (its ``ModelState``: unloaded, loading,
    loaded, failed or unloading; failed too when it failed at start-up and has not loaded
    since); pinned; the keep-alive left (None: forever, or not loaded); the estimate."""
    name = served.entry.name
    state = served.state.value
    if state == "unloaded" and name in failed:
        state = "failed"
    left = None
    if served.loaded and served.expires_at is not None:
        left = round(max(served.expires_at - time.time(), 0.0), 1)
    return {
        "name": name,
        "state": state,
        "pinned": served.pinned,
        "keep_alive_secs": served.keep_alive,
        "expires_in_secs": left,
        "in_use": served.leases,
        "estimate_bytes": served.estimate,
        "circuit": served.breaker.state,
        "error": failed.get(name) or (served.last_error and served.last_error.message),
        **adapters_card(served.opts.lora),
    }


def _remote_state(remote: Any) -> dict[str, Any]:
    """A remote model in the status page's model list: state ``remote``, never unloaded."""
    healthy = sum(r.healthy for r in remote.replicas)
    return {
        "name": remote.name,
        "state": "remote",
        "pinned": True,
        "keep_alive_secs": None,
        "expires_in_secs": None,
        "in_use": remote.inflight,
        "estimate_bytes": 0,
        "circuit": remote.breaker.state,
        "error": None if healthy else "no replica is reachable",
        "replicas_healthy": healthy,
        "replicas": len(remote.replicas),
    }


def _response_cache(manager: Any) -> dict[str, Any] | None:
    cache = manager.cache
    if cache is None:
        return None
    stats = cache.stats
    return {"hits": sum(stats.hits.values()), "misses": sum(stats.misses.values())}


def _kv_reuse(report: Any, budget: int) -> dict[str, Any] | None:
    """What each slot holds (tokens in KV: a running sequence's, or an idle slot's kept
    history) and the host-RAM cache of KV states."""
    if report is None:
        return None
    return {
        "slots": report.slots,
        "moves": report.moves,
        "preemptions": report.preemptions,
        "ram_cache": {
            "bytes": report.ram_bytes,
            "budget_bytes": budget,
            "entries": report.ram_entries,
            "hits": report.ram_hits,
            "misses": report.ram_misses,
            "saves": report.ram_saves,
            "evictions": report.ram_evictions,
        },  # fmt: skip
    }
