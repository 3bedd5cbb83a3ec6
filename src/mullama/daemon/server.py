"""Running the app under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from ..config import Settings
from ..errors import MullamaError
from ..models.manager import ModelManager
from ..observability.logging import setup_logging
from .app import create_app

log = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.log_format, settings.log_file)
    try:
        manager = ModelManager(settings)
        app = create_app(settings, manager)
    except MullamaError as exc:
        log.error("%s", exc.message)
        return 1
    config = uvicorn.Config(
        app,
        host=settings.http_addr,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through ours (same format, same file)
        access_log=False,  # one access line per request comes from our middleware
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
