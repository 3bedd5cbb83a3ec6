"""Fallback models (``--fallback PRIMARY=BACKUP``): when a request's model cannot take it
(its circuit is open, its queue is full, it cannot be loaded; the manager marks such
errors ``unserved``), the request is run again, whole, on the backup model: planned for
the backup's template and answered under its name, with ``X-Mullama-Fallback:
PRIMARY->BACKUP`` on the response. Errors after the model took the request (a bad
prompt, a crash mid-answer) are never retried elsewhere. A request opts out with
``"fallback": false`` or the header ``X-Mullama-Fallback: off``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from .. import requestctx
from ..errors import MullamaError
from .streaming import unless_disconnected

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)


async def answer(request: Request, body: Body, work: Callable[[Body], Awaitable[Any]]) -> Any:
    """``work(body)`` (a service call, cancelled if the client leaves), on the body's
    model or, when that model cannot take it, on its fallback chain."""
    models = request.app.state.models
    ctx = requestctx.get()
    allowed = ctx.fallback and getattr(body, "fallback", True) is not False
    path = [body.model]  # type: ignore[attr-defined]
    while True:
        try:
            result = await unless_disconnected(request, work(body))
        except MullamaError as exc:
            backup = models.fallback_for(path[-1]) if allowed and exc.unserved else None
            if backup is None or backup in path:
                raise
            log.warning(
                "model %s cannot take request %s (%s): answering with %s",
                path[-1], request.scope["state"].get("request_id"), exc.message, backup,
            )  # fmt: skip
            request.app.state.obs.metrics.fallbacks.labels(path[-1], backup).inc()
            path.append(backup)
            body = body.model_copy(update={"model": backup})
            continue
        if len(path) > 1:
            ctx.fallback_path = "->".join(path)
        return result
