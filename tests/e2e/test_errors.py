"""Client mistakes get 4xx in OpenAI's error shape, never 500 and never FastAPI's 422."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL


def _post(daemon, path: str, **kwargs) -> httpx.Response:
    return httpx.post(daemon.url + path, timeout=60, **kwargs)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


MSG = [{"role": "user", "content": "hi"}]


def test_invalid_json(daemon):
    err = _error(_post(daemon, "/v1/chat/completions", content=b"{not json"), 400)
    assert err["type"] == "invalid_request_error"
    assert "JSON" in err["message"]


@pytest.mark.parametrize("body", [b"[]", b"42", b'"text"', b"null", b""])
def test_body_must_be_an_object(daemon, body):
    _error(_post(daemon, "/v1/chat/completions", content=body), 400)


def test_unknown_model_is_404(daemon):
    err = _error(
        _post(daemon, "/v1/chat/completions", json={"model": "nope", "messages": MSG}), 404
    )
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"
    err = _error(_post(daemon, "/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert err["code"] == "model_not_found"


def test_prompt_longer_than_context(daemon):
    long = "hello " * 3000
    resp = _post(
        daemon,
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": long}]},
    )
    err = _error(resp, 400)
    assert err["code"] == "context_length_exceeded"
    assert "2048" in err["message"]
    n_prompt = int(err["message"].split("has ")[1].split(" tokens")[0])
    assert n_prompt > 2048
    err = _error(_post(daemon, "/v1/completions", json={"model": MODEL, "prompt": long}), 400)
    assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", "ten"),
        ("temperature", "hot"),
        ("temperature", -1),
        ("temperature", 7),
        ("top_p", 0),
        ("top_p", 1.5),
        ("n", 9),
        ("n", 0),
        ("presence_penalty", 3),
        ("frequency_penalty", "x"),
        ("seed", 1.5),
        ("stream", "yes"),
        ("stop", 5),
        ("messages", "hi"),
        ("messages", []),
    ],
)
def test_bad_parameters_name_the_param(daemon, field, value):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 4, field: value}
    err = _error(_post(daemon, "/v1/chat/completions", json=body), 400)
    assert err["param"].split(".")[0].split("[")[0] == field
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_rejected(daemon, literal):
    body = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}'
        % (
            MODEL.encode(),
            literal,
        )
    )
    resp = _post(daemon, "/v1/chat/completions", content=body)
    assert resp.status_code == 400, resp.text


def test_bad_message_role(daemon):
    body = {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}
    err = _error(_post(daemon, "/v1/chat/completions", json=body), 400)
    assert err["param"].startswith("messages")


def test_missing_model(daemon):
    err = _error(_post(daemon, "/v1/chat/completions", json={"messages": MSG}), 400)
    assert err["param"] == "model"


def test_fields_that_change_nothing_here_are_accepted(daemon):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2, "user": "u",
            "metadata": {"team": "a"}, "store": False, "service_tier": "auto",
            "tool_choice": "none", "parallel_tool_calls": True, "tools": []}  # fmt: skip
    resp = _post(daemon, "/v1/chat/completions", json=body)
    assert resp.status_code == 200
    # Accepted and said so; `store: false` changes nothing even where storing would.
    assert resp.headers["mullama-ignored-fields"] == "user,metadata,service_tier"


@pytest.mark.parametrize(
    ("path", "extra", "param", "says"),
    [
        ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions", "replaced by tools"),
        ("/v1/chat/completions", {"logit_bias": {"42": 5}}, "logit_bias", "not supported"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice", "needs tools"),
        ("/api/chat", {"tool_choice": "required"}, "tool_choice", "needs tools"),
        ("/v1/completions", {"suffix": "end"}, "suffix", "not supported"),
        ("/v1/completions", {"best_of": 3}, "best_of", "use n"),
        ("/api/chat", {"think": True}, "think", "thinking"),
        ("/api/chat", {"options": {"mirostat": 2}}, "options.mirostat", "mirostat"),
        ("/api/generate", {"suffix": "}"}, "suffix", "not supported"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(daemon, path, extra, param, says):
    if path.startswith("/api/"):
        body = {"model": MODEL, "stream": False, **extra}
        body["messages" if path == "/api/chat" else "prompt"] = MSG if path == "/api/chat" else "hi"
        resp = _post(daemon, path, json=body)
        assert resp.status_code == 400
        assert param in resp.json()["error"] and says in resp.json()["error"]  # Ollama's shape
        return
    body = {"model": MODEL, "max_tokens": 2, **extra}
    body["messages" if path.endswith("chat/completions") else "prompt"] = (
        MSG if path.endswith("chat/completions") else "hi"
    )
    err = _error(_post(daemon, path, json=body), 400)
    assert err["param"] == param and says in err["message"]


def test_body_over_limit_is_413_without_reading_it(daemon):
    big = b'{"model": "x", "prompt": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    err = _error(_post(daemon, "/v1/completions", content=big), 413)
    assert err["code"] == "request_too_large"


def test_body_over_limit_when_content_length_lies(daemon):
    # Chunked transfer: no Content-Length, so the limit is enforced while reading.
    def chunks():
        yield b'{"model": "x", "prompt": "'
        for _ in range(11):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    resp = httpx.post(daemon.url + "/v1/completions", content=chunks(), timeout=60)
    assert resp.status_code == 413


def test_images_on_text_model(daemon):
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    err = _error(_post(daemon, "/v1/chat/completions", json=body), 400)
    assert "text only" in err["message"]


def test_unknown_route_is_openai_shaped_404(daemon):
    err = _error(httpx.get(daemon.url + "/v1/nothing-here"), 404)
    assert err["type"] == "invalid_request_error"


def test_daemon_still_serves_after_errors(openai_client):
    resp = openai_client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3)
    assert resp.choices[0].message.content is not None
