"""OpenTelemetry tracing (optional: ``pip install mullama[tracing]``).

One SERVER span per HTTP request, named after the GenAI operation and model
(``chat smollm2:135m``) when the request generated text, else ``METHOD /route``; GenAI
semantic-convention attributes; child spans ``queue``, ``prefill`` and ``decode`` for
every generated sequence. Spans go over OTLP/HTTP (protobuf) through a batch processor.
The tracer provider belongs to the app (the global OpenTelemetry provider is not touched).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from ..errors import ClientError

log = logging.getLogger(__name__)

# Route templates -> gen_ai.operation.name
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/api/chat": "chat",
    "/v1/completions": "text_completion",
    "/api/generate": "text_completion",
    "/v1/embeddings": "embeddings",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
}


def traces_url(endpoint: str) -> str:
    """``http://collector:4318`` -> ``http://collector:4318/v1/traces`` (a URL that
    already names a path is used as given)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"--otlp-endpoint must be an http(s) URL, not {endpoint!r}")
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class Tracing:
    def __init__(self, exporter: Any, version: str) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._trace = trace
        resource = Resource.create({"service.name": "mullama", "service.version": version})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("mullama", version)

    @classmethod
    def from_endpoint(cls, endpoint: str, version: str) -> Tracing:
        url = traces_url(endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ClientError(
                "--otlp-endpoint needs the tracing extra: pip install 'mullama[tracing]'"
            ) from exc
        log.info("exporting traces to %s", url)
        return cls(OTLPSpanExporter(endpoint=url), version)

    def start_request(self, method: str, path: str, request_id: str, start_ns: int) -> Any:
        return self.tracer.start_span(
            f"{method} {path}",
            kind=self._trace.SpanKind.SERVER,
            start_time=start_ns,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "mullama.request_id": request_id,
            },
        )

    def child(self, parent: Any, name: str, start_ns: int, end_ns: int, **attrs: Any) -> None:
        ctx = self._trace.set_span_in_context(parent)
        span = self.tracer.start_span(name, context=ctx, start_time=start_ns, attributes=attrs)
        span.end(end_time=max(end_ns, start_ns))

    def end_request(
        self, span: Any, *, route: str | None, status: int, record: Any, end_ns: int
    ) -> None:
        method = record.method
        operation = OPERATIONS.get(route or "")
        if operation and record.model:
            span.update_name(f"{operation} {record.model}")
            span.set_attribute("gen_ai.operation.name", operation)
            span.set_attribute("gen_ai.provider.name", "mullama")
        elif route:
            span.update_name(f"{method} {route}")
        if route:
            span.set_attribute("http.route", route)
        if record.model:
            span.set_attribute("gen_ai.request.model", record.model)
            span.set_attribute("gen_ai.response.model", record.model)
            span.set_attribute("gen_ai.usage.input_tokens", record.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", record.completion_tokens)
        if record.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", list(record.finish_reasons))
        span.set_attribute("http.response.status_code", status)
        if status >= 500 or record.error:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()
