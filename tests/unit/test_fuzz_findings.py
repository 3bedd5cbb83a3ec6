"""Defects the API fuzzer (tests/e2e/test_fuzz.py) found, each pinned here as pure code;
tests/e2e/test_fuzz_findings.py checks their answers over HTTP."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from mullama.api.body import validate
from mullama.api.llamaserver import CompletionBody
from mullama.api.ollama.schemas import Options
from mullama.api.openai.responses import ResponsesRequest
from mullama.api.openai.schemas import CompletionRequest
from mullama.config import Settings
from mullama.daemon.app import create_app
from mullama.errors import InvalidParameter


@pytest.mark.parametrize(
    "model, body, field",
    [
        (ResponsesRequest, {"model": "m", "input": "hi", "background": 0}, "background"),
        (Options, {"typical_p": True}, "options.typical_p"),
        (Options, {"mirostat": 0.0}, "options.mirostat"),
        (CompletionBody, {"prompt": "hi", "typical_p": True}, "typical_p"),
        (CompletionRequest, {"model": "m", "prompt": "hi", "best_of": True}, "best_of"),
    ],
)
def test_a_refused_field_passes_only_with_its_neutral_value_itself(model, body, field):
    """Python's ``0 == False`` and ``True == 1`` let ``background: 0`` (and the like)
    through as if they were the neutral value: now refused by name."""
    with pytest.raises(InvalidParameter) as err:
        validate(model, body)
    assert err.value.param == field


@pytest.mark.parametrize(
    "model, body",
    [
        (ResponsesRequest, {"model": "m", "input": "hi", "background": False}),
        (Options, {"typical_p": 1.0, "mirostat": 0}),
        (Options, {"typical_p": 1}),
        (CompletionRequest, {"model": "m", "prompt": "hi", "best_of": 1}),
    ],
)
def test_the_neutral_values_themselves_still_pass(model, body):
    validate(model, body)


def test_an_empty_prompt_list_on_completion_is_a_400_naming_it():
    """/completion turned ``prompt: []`` into a chat request whose own check raised a
    raw ValidationError: a 500."""
    body = validate(CompletionBody, {"prompt": []})
    with pytest.raises(InvalidParameter) as err:
        body.to_completion("m")
    assert err.value.param == "prompt"


def test_405_names_every_method_of_the_path(tmp_path):
    """Starlette's 405 named the methods of the first route that matched the path only
    (``Allow: GET`` on /v1/responses/ID, which takes DELETE too)."""
    app = create_app(Settings(cache_dir=str(tmp_path)))
    client = TestClient(app, base_url="http://127.0.0.1")  # the Host guard lets it in
    r = client.patch("/v1/responses/resp_1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert r.json()["error"]["code"] == "http_error"
    r = client.post("/api/version")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json() == {"error": "Method Not Allowed"}
