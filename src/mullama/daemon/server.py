"""Running the app under uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from ..config import Settings
from ..errors import MullamaError
from ..models.manager import ModelManager
from .app import create_app

log = logging.getLogger(__name__)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(settings: Settings) -> int:
    setup_logging(settings.log_level)
    try:
        manager = ModelManager(settings)
    except MullamaError as exc:
        log.error("%s", exc.message)
        return 1
    app = create_app(settings, manager)
    config = uvicorn.Config(
        app,
        host=settings.http_addr,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
