"""App factory: wires settings, the model manager, observability and the API routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from .. import __version__
from ..api import control, health, llamaserver, monitoring, rerank, tokenizer, ui
from ..api.anthropic import routes as anthropic_routes
from ..api.anthropic.service import AnthropicService
from ..api.ollama import routes as ollama_routes
from ..api.ollama.manage import ModelAdmin
from ..api.ollama.models import OllamaModels
from ..api.ollama.service import OllamaService
from ..api.openai import routes as openai_routes
from ..api.openai.responses import ResponsesService, ResponseStore
from ..api.openai.service import OpenAIService
from ..config import Settings
from ..models.manager import ModelManager
from ..models.store import ModelStore
from ..observability.access import AccessLogMiddleware
from ..observability.hub import Observability
from ..observability.tracing import Tracing
from ..security.keys import KeyRing
from ..security.policy import check_route
from ..security.tenancy import CacheTenancy
from .dependencies import Dependencies
from .guards import install_guards
from .handlers import install_error_handlers
from .lifecycle import Lifecycle, Phase
from .middleware import CallerContextMiddleware, RequestStateMiddleware
from .openapi import install_openapi

log = logging.getLogger(__name__)


async def preload(manager: ModelManager, lifecycle: Lifecycle) -> None:
    """Load the configured models in the background: the HTTP server answers meanwhile
    (/health/ready says 503 until this is done, and stays 503 if a model failed)."""
    failed = await manager.start()
    lifecycle.failed_models.update(failed)
    if lifecycle.phase is Phase.STARTING:  # not if a drain began meanwhile
        lifecycle.phase = Phase.READY
    loaded = [n for n in manager.names if n not in failed]
    log.info("serving models: %s", ", ".join(loaded) or "(none)")


def create_app(
    settings: Settings, models: ModelManager | None = None, tracing: Tracing | None = None
) -> FastAPI:
    manager = models if models is not None else ModelManager(settings)
    if tracing is None and settings.otlp_endpoint:
        tracing = Tracing.from_endpoint(settings.otlp_endpoint, __version__)
    obs = Observability(manager, tracing)
    manager.set_observer(obs)  # also for models loaded on demand later
    app = FastAPI(
        title="Mullama",
        lifespan=_lifespan(manager, obs, tracing),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Once routed, the route that runs must be the one the guards authorised.
        dependencies=[Depends(check_route)],
    )
    _add_services(app, settings, manager, obs)
    install_error_handlers(app)
    _mount_routes(app, settings)
    _add_middleware(app, settings, obs)
    return app


def _lifespan(
    manager: ModelManager, obs: Observability, tracing: Tracing | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's life: the models load, the dependencies are probed and the dashboard's
    history is sampled in the background while it serves; all of it stops at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle: Lifecycle = app.state.lifecycle
        loading = asyncio.create_task(preload(manager, lifecycle), name="preload")
        app.state.preload = loading
        probing = asyncio.create_task(app.state.dependencies.run(), name="dependencies")
        sampling = asyncio.create_task(obs.sample_history(), name="history")
        try:
            yield
        finally:
            lifecycle.phase = Phase.STOPPED
            probing.cancel()
            sampling.cancel()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            await manager.close()
            if tracing is not None:
                tracing.shutdown()

    return lifespan


def _add_services(
    app: FastAPI, settings: Settings, manager: ModelManager, obs: Observability
) -> None:
    """What the routes find in ``app.state``: the settings, the manager, the hub and
    each API's service."""
    app.state.settings = settings
    app.state.models = manager
    app.state.started_at = time.time()
    app.state.lifecycle = Lifecycle()
    app.state.obs = obs
    app.state.openai = OpenAIService(manager)
    app.state.anthropic = AnthropicService(manager)
    app.state.dependencies = Dependencies(settings, manager)
    app.state.responses = ResponsesService(manager, ResponseStore())
    app.state.ollama = OllamaService(manager)
    store = ModelStore(settings.cache_dir)
    app.state.store = store
    app.state.ollama_models = OllamaModels(manager, store)
    app.state.model_admin = ModelAdmin(store)


def _mount_routes(app: FastAPI, settings: Settings) -> None:
    """Every API's router (the UI's when --ui), and /openapi.json made from them."""
    routers = [health.router, monitoring.router, openai_routes.router, anthropic_routes.router,
               ollama_routes.router, control.router, tokenizer.router, llamaserver.router,
               rerank.router]  # fmt: skip
    if settings.ui:
        routers.append(ui.router)
    for router in routers:
        app.include_router(router)
    app.state.api_routes = [r for rt in routers for r in rt.routes if isinstance(r, APIRoute)]
    install_openapi(app, app.state.api_routes)


def _add_middleware(app: FastAPI, settings: Settings, obs: Observability) -> None:
    """add_middleware wraps what was added before: the caller's part of the request's
    context (tenant, --strict-fields) innermost, then the guards (limits, drain, auth,
    rate limits), then the access log, then the request's id and context outermost."""
    tenancy = CacheTenancy(KeyRing([]), shared=settings.share_cache_across_keys)
    app.add_middleware(
        CallerContextMiddleware,
        tenancy=tenancy,
        strict_fields=settings.strict_fields,
        metrics=obs.metrics,
    )
    install_guards(app, settings)
    tenancy.keys = app.state.keys  # the ring the auth middleware holds (SIGHUP reloads it)
    app.add_middleware(AccessLogMiddleware, obs=obs)
    app.add_middleware(RequestStateMiddleware)
