"""/metrics (Prometheus text format) and /completion-metrics (a JSON summary per model)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import access
from ..observability.metrics import CONTENT_TYPE
from ..wire.framing import ORJSONResponse
from . import answers as a
from .openapi import documented

router = APIRouter()


@router.get("/metrics")
@documented(media="text/plain")  # the Prometheus text format
@access.metrics
@access.exempt
async def metrics(request: Request) -> Response:
    return Response(request.app.state.obs.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/completion-metrics")
@router.get("/v1/completion-metrics")
@documented(ok=a.CompletionMetrics)
async def completion_metrics(request: Request) -> ORJSONResponse:
    return ORJSONResponse(request.app.state.obs.completion_metrics())
