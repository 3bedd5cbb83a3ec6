"""App factory: wires settings, the model manager and the API routers together."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..api import control, health
from ..api.errors import install_error_handlers
from ..api.ollama import routes as ollama_routes
from ..api.ollama.models import OllamaModels
from ..api.ollama.service import OllamaService
from ..api.openai import routes as openai_routes
from ..api.openai.service import OpenAIService
from ..config import Settings
from ..models.manager import ModelManager
from .guards import install_guards
from .lifecycle import Lifecycle, Phase
from .middleware import RequestIdMiddleware

log = logging.getLogger(__name__)


def create_app(settings: Settings, models: ModelManager | None = None) -> FastAPI:
    manager = models if models is not None else ModelManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle: Lifecycle = app.state.lifecycle
        await manager.start()
        lifecycle.phase = Phase.READY
        log.info("serving models: %s", ", ".join(manager.names))
        try:
            yield
        finally:
            lifecycle.phase = Phase.STOPPED
            await manager.close()

    app = FastAPI(
        title="Mullama",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.models = manager
    app.state.started_at = time.time()
    app.state.lifecycle = Lifecycle()
    app.state.openai = OpenAIService(manager)
    app.state.ollama = OllamaService(manager)
    app.state.ollama_models = OllamaModels(manager)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(control.router)
    # Outermost last: request id, then the guards (limits, drain, auth, rate limits).
    install_guards(app, settings)
    app.add_middleware(RequestIdMiddleware)
    return app
