"""/openapi.json says what each route takes and answers (api/openapi.py): checked on the
app's own route table, without a daemon. tests/e2e/test_fuzz.py fuzzes a daemon with it."""

from __future__ import annotations

import inspect

import pytest
import schemathesis
from fastapi.routing import APIRoute

from mullama.api.body import validate
from mullama.api.openapi import NDJSON, SSE, doc_of
from mullama.config import Settings
from mullama.daemon.app import create_app

KEY = "sk-doc-" + "7" * 24


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(cache_dir=str(tmp_path_factory.mktemp("models"))))


@pytest.fixture(scope="module")
def doc(app):
    return app.openapi()


def _operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method.upper(), op


def _routes(app):
    return [r for r in app.state.api_routes if r.include_in_schema]


def test_every_route_is_documented_with_what_it_parses(app, doc):
    for route in _routes(app):
        d = doc_of(route)
        assert d is not None, f"{route.path} has no @documented"
        source = inspect.getsource(route.endpoint)
        parses = "parse_body(" in source or "validate(" in source
        assert parses == (d.body is not None), route.path
        if d.body is not None:
            assert d.body.__name__ in source, f"{route.path} parses another model"
            for method in route.methods:
                op = doc["paths"][route.path_format][method.lower()]
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{d.body.__name__}"


def test_examples_are_valid_requests(app, doc):
    for route in _routes(app):
        d = doc_of(route)
        if d is not None and d.example is not None:
            validate(d.body, {**d.example, "model": "m"} if "model" in d.example else d.example)


def test_no_422_and_every_error_in_the_paths_api_shape(doc):
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, method, op in _operations(doc):
        assert "422" not in op["responses"], (method, path)
        if path.startswith("/api/"):
            shape = "OllamaError"
        elif path.startswith("/v1/messages"):
            shape = "AnthropicError"
        else:
            shape = "OpenAIError"
        errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
        assert "403" in errors and "413" in errors, (method, path)
        if method in ("POST", "DELETE"):
            assert "415" in errors, (method, path)
        for status, answer in errors.items():
            if path in ("/health", "/v1/health", "/health/ready") and status == "503":
                continue  # /health's own body, with 503 while starting
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{shape}", (method, path, status)


def test_streaming_routes_name_their_media_types(doc):
    def media(path, method="post"):
        return set(doc["paths"][path][method]["responses"]["200"]["content"])

    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
                 "/completion"):  # fmt: skip
        assert media(path) == {"application/json", SSE}, path
    for path in ("/api/generate", "/api/chat", "/api/pull", "/api/create"):
        assert media(path) == {"application/json", NDJSON}, path
    assert media("/metrics", "get") == {"text/plain"}
    event = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"][SSE]
    data = event["schema"]["properties"]["data"]
    assert data["if"] == {"const": "[DONE]"}
    chunk, error = data["else"]["contentSchema"]["anyOf"]
    assert chunk == {"$ref": "#/components/schemas/ChatCompletionChunk"}
    assert error == {"$ref": "#/components/schemas/OpenAIError"}


def test_refused_hinted_and_ignored_fields_are_documented(doc):
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "--strict-fields" in chat["additionalProperties"]["description"]
    assert chat["properties"]["logit_bias"]["description"].startswith("not supported:")
    neutral = chat["properties"]["logit_bias"]["anyOf"]
    assert {"type": "null"} in neutral and {"const": False} in neutral
    assert {"enum": ["none", "auto"]} in chat["properties"]["function_call"]["anyOf"]
    assert "accepted and ignored" in chat["properties"]["user"]["description"]
    verbosity = chat["properties"]["verbosity"]["description"]
    assert "accepted and ignored" in verbosity and "--strict-fields" in verbosity
    # A model whose unknown fields are never refused (an assistant message's extra
    # fields) says nothing of them.
    assert "additionalProperties" not in doc["components"]["schemas"]["ChatMessage"]


def test_keys_and_what_needs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MULLAMA_API_KEY", KEY)
    keyed = create_app(Settings(cache_dir=str(tmp_path))).openapi()
    schemes = keyed["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["name"] == "X-API-Key"
    for path, method, op in _operations(keyed):
        public = path.startswith("/health") or path == "/v1/health"
        assert ("security" in op) != public, (method, path)
        assert ("401" in op["responses"]) != public, (method, path)


def test_the_document_is_valid_openapi_and_loads_in_a_fuzzer(doc):
    # The OpenAPI 3.1 meta-schema, as schemathesis ships it.
    from schemathesis.specs.openapi import definitions

    assert [str(e) for e in definitions.OPENAPI_31_VALIDATOR.iter_errors(doc)] == []
    schema = schemathesis.openapi.from_dict(doc)
    results = list(schema.get_all_operations())
    assert all(r.ok() for r in results)
    assert len(results) == sum(1 for _ in _operations(doc))


def test_api_routes_are_the_apps(app):
    assert all(isinstance(r, APIRoute) for r in app.state.api_routes)
    paths = {r.path for r in app.state.api_routes}
    assert {"/v1/chat/completions", "/api/chat", "/health", "/metrics"} <= paths


def test_headers_every_answer_and_error_carries(doc, tmp_path, monkeypatch):
    for path, method, op in _operations(doc):
        assert {"name": "X-Request-ID", "in": "header"}.items() <= op["parameters"][-1].items()
        for status, answer in op["responses"].items():
            assert "X-Request-ID" in answer["headers"], (method, path, status)
        if "503" in op["responses"] and path not in ("/health", "/v1/health", "/health/ready"):
            assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
    monkeypatch.setenv("MULLAMA_API_KEY", KEY)
    keyed = create_app(Settings(cache_dir=str(tmp_path))).openapi()
    answer = keyed["paths"]["/v1/models"]["get"]["responses"]["401"]
    assert "WWW-Authenticate" in answer["headers"]
    assert keyed["components"]["headers"]["X-Request-ID"]["required"] is True
