"""Defects the API fuzzer (tests/e2e/test_fuzz.py) found, each pinned here as pure code;
tests/e2e/test_fuzz_findings.py checks their answers over HTTP."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from mullama.api.body import validate
from mullama.api.llamaserver import CompletionBody
from mullama.api.ollama.schemas import GenerateBody, Options
from mullama.api.openai.responses import ResponsesRequest
from mullama.api.openai.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from mullama.config import Settings
from mullama.daemon.app import create_app
from mullama.errors import ClientError, InvalidName, InvalidParameter, ModelNotFound
from mullama.models.budget import FOREVER, parse_keep_alive
from mullama.models.manager import ModelManager
from mullama.models.registry import resolve


@pytest.mark.parametrize(
    "model, body, field",
    [
        (ResponsesRequest, {"model": "m", "input": "hi", "background": 0}, "background"),
        (Options, {"tfs_z": True}, "options.tfs_z"),
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


def test_generate_refuses_a_context_it_would_have_ignored():
    """/api/generate took ``context`` (an earlier answer's state) and dropped it."""
    with pytest.raises(InvalidParameter) as err:
        validate(GenerateBody, {"model": "m", "prompt": "hi", "context": [1, 2, 3]})
    assert err.value.param == "context" and "/api/chat" in err.value.message
    validate(GenerateBody, {"model": "m", "prompt": "hi", "context": []})  # neutral


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


BASE = {ChatCompletionRequest: "messages", EmbeddingRequest: "input", CompletionRequest: "prompt"}


@pytest.mark.parametrize(
    "model, body, param",
    [
        (ChatCompletionRequest, {"tool_choice": {"type": "function", "function": {"name": None}}},
         "tool_choice.function.name"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        (EmbeddingRequest, {"input": [1]}, "input[0]"),
        (CompletionRequest, {"prompt": [["a"]]}, "prompt[0][0]"),
        (ChatCompletionRequest, {"stop": 5}, "stop"),
        (ChatCompletionRequest, {"model": None}, "model"),
    ],
)  # fmt: skip
def test_an_error_names_the_place_in_the_request_not_a_union_member(model, body, param):
    """The param was pydantic's loc: the first member of a union it tried, as in
    ``tool_choice.literal['none','auto','required']`` for a tool_choice object."""
    base = {"model": "m", BASE[model]: [{"role": "user", "content": "hi"}]}
    if model is not ChatCompletionRequest:
        base[BASE[model]] = "hi"
    with pytest.raises(InvalidParameter) as err:
        validate(model, {**base, **body})
    assert err.value.param == param and f"'{param}'" in err.value.message


def test_a_responses_tool_choice_without_a_name_says_so():
    body = validate(
        ResponsesRequest, {"model": "m", "input": "hi", "tool_choice": {"type": "function"}}
    )
    with pytest.raises(InvalidParameter) as err:
        body.to_chat([{"role": "user", "content": "hi"}])
    assert err.value.param == "tool_choice.name"


def test_an_empty_prompt_list_on_completion_is_a_400_naming_it():
    """/completion turned ``prompt: []`` into a chat request whose own check raised a
    raw ValidationError: a 500."""
    body = validate(CompletionBody, {"prompt": []})
    with pytest.raises(InvalidParameter) as err:
        body.to_completion("m")
    assert err.value.param == "prompt"


def test_a_name_from_a_request_never_names_a_file(tmp_path, monkeypatch):
    """A request's model name that was a relative path to an existing file (``etc/passwd``
    with the daemon in /) was served as that file; now it is looked up in the store only.
    On the command line a path still serves the file."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0")
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "models"
    with pytest.raises(ModelNotFound):
        resolve("etc/passwd", cache_dir=store, paths=False)
    assert resolve("etc/passwd", cache_dir=store).path == (tmp_path / "etc" / "passwd")
    manager = ModelManager(Settings(cache_dir=str(store)))
    with pytest.raises(ModelNotFound):
        manager.find("etc/passwd")


def test_a_name_too_long_for_the_file_system_is_a_name_error(tmp_path):
    """``Path.is_file`` raised ENAMETOOLONG for a 1000-character name: a 500."""
    with pytest.raises(InvalidName):
        resolve("x" * 1000, cache_dir=tmp_path)
    with pytest.raises(InvalidName):
        ModelManager(Settings(cache_dir=str(tmp_path))).find("é" * 300)


@pytest.mark.parametrize(
    "value", [1e300, 10**400, "99999999999999999h", "inf", -1e300], ids=lambda v: repr(v)[:12]
)
def test_a_keep_alive_past_any_date_is_forever(value):
    """One keep_alive of 1e300 on an unpinned model put its expiry past year 9999, and
    every /api/ps and /api/models after it was a 500 (datetime.fromtimestamp)."""
    assert parse_keep_alive(value) is None
    assert parse_keep_alive(FOREVER) == FOREVER and parse_keep_alive("1h") == 3600


def test_a_keep_alive_that_is_not_a_number_is_refused():
    with pytest.raises(ClientError) as err:
        parse_keep_alive("nan")
    assert err.value.param == "keep_alive"


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
