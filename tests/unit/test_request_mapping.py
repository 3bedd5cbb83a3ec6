"""Both APIs' requests -> SamplingParams, custom-model defaults, and the worker's reading of
the wire form: pure code, checked without a daemon."""

from __future__ import annotations

from dataclasses import asdict

import orjson
import pytest

from mullama.api.ollama.schemas import OLLAMA_DEFAULTS, Options
from mullama.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from mullama.api.profiles import EMPTY, Profile, from_ollama
from mullama.engine.chat_template import ChatTemplate
from mullama.engine.messages import (
    Accepted,
    Cancel,
    DetokenizeRequest,
    EmbedRequest,
    EmbedResult,
    Failed,
    LoadFailed,
    Ping,
    Pong,
    Ready,
    Shutdown,
    Step,
    StepRow,
    Text,
    read_command,
    read_event,
)
from mullama.engine.protocol import (
    GenerateRequest,
    ProtocolError,
    SamplingParams,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    WorkerSpec,
)
from mullama.errors import ClientError, ContextLengthExceeded, InvalidParameter, ServerError
from mullama.models.custom import go_to_jinja

MSG = [{"role": "user", "content": "hi"}]


def _chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


def test_openai_unset_fields_keep_the_engine_defaults():
    assert _chat().to_sampling_params(EMPTY, None) == SamplingParams()


def test_openai_fields_set_their_namesakes():
    p = _chat(
        temperature=0.3, top_p=0.5, top_k=7, min_p=0.1, seed=9, presence_penalty=0.4,
        frequency_penalty=-0.2, repeat_penalty=1.3, ignore_eos=True, stop="END",
    ).to_sampling_params(EMPTY, 12)  # fmt: skip
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (0.3, 0.5, 7, 0.1, 9)
    assert (p.presence_penalty, p.frequency_penalty, p.repeat_penalty) == (0.4, -0.2, 1.3)
    assert p.ignore_eos and p.stop == ["END"] and p.max_tokens == 12


def test_openai_request_values_win_over_a_custom_models_parameters():
    profile = Profile(parameters={"temperature": 0.1, "top_k": 5, "num_predict": 30, "stop": ["x"]})
    p = _chat(temperature=0.9).to_sampling_params(profile, None)
    assert (p.temperature, p.top_k, p.max_tokens, p.stop) == (0.9, 5, 30, ["x"])


def test_openai_response_formats():
    assert (
        _chat(response_format={"type": "json_object"}).to_sampling_params(EMPTY, None).json_schema
        == {}
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert _chat(response_format=fmt).to_sampling_params(EMPTY, None).json_schema == schema
    assert (
        _chat(response_format={"type": "text"}).to_sampling_params(EMPTY, None).json_schema is None
    )
    with pytest.raises(ClientError) as err:
        _chat(response_format={"type": "json_schema"}).to_sampling_params(EMPTY, None)
    assert err.value.param == "response_format"


def test_completion_request_converts_the_same_way():
    req = CompletionRequest.model_validate({"model": "m", "prompt": "p", "stop": ["a", "b"]})
    assert req.to_sampling_params(EMPTY, 16).stop == ["a", "b"]


def test_ollama_defaults_then_model_then_request():
    assert Options().to_sampling_params(None, EMPTY) == SamplingParams(**OLLAMA_DEFAULTS)
    profile = Profile(parameters={"top_p": 0.7, "repeat_penalty": 1.0, "num_ctx": 256})
    p = Options(top_p=0.2, num_predict=5, stop="END").to_sampling_params("json", profile)
    assert (p.top_p, p.repeat_penalty, p.context_limit) == (0.2, 1.0, 256)
    assert (p.max_tokens, p.stop, p.json_schema) == (5, ["END"], {})
    assert p.top_k == OLLAMA_DEFAULTS["top_k"]


def test_ollama_num_predict_zero_or_below_means_until_the_end():
    for n in (0, -1, -2):
        assert Options(num_predict=n).to_sampling_params(None, EMPTY).max_tokens is None


def test_ollama_format_schema_and_ignore_eos():
    schema = {"type": "object"}
    p = Options(ignore_eos=True).to_sampling_params(schema, EMPTY)
    assert p.ignore_eos and p.json_schema == schema


def test_one_table_serves_options_and_model_parameters():
    values = {"num_ctx": 64, "num_predict": 8, "temperature": 0.0, "stop": "s", "seed": None}
    assert from_ollama(values) == {
        "context_limit": 64, "max_tokens": 8, "temperature": 0.0, "stop": ["s"]
    }  # fmt: skip
    # Our own names are no Ollama options, and unknown names are left out.
    assert from_ollama({"max_tokens": 3, "json_schema": {}, "mirostat": 1}) == {}
    assert Profile(parameters=values).defaults == from_ollama(values)


def test_generate_frames_cross_the_wire_and_refuse_unknown_keys():
    params = SamplingParams(temperature=0.0, stop=["a"], json_schema={"type": "object"})
    req = GenerateRequest("api-1", params, messages=MSG, template="{{ x }}")
    wire = req.to_wire("api-1#7")
    assert wire["op"] == "generate" and wire["id"] == "api-1#7" and "request_id" not in wire
    back = GenerateRequest.from_wire(orjson.loads(orjson.dumps(wire)))
    assert back == GenerateRequest("api-1#7", params, messages=MSG, template="{{ x }}")
    with pytest.raises(ValueError, match="unknown SamplingParams fields: grammar"):
        SamplingParams.from_wire({**asdict(params), "grammar": "root ::= x"})
    with pytest.raises(ValueError, match="unknown GenerateRequest fields: images"):
        GenerateRequest.from_wire({**wire, "images": []})


def test_step_frames_keep_their_rows_named():
    step = Step(
        rows=[StepRow("a#1", "Hi", 3, 5, None), StepRow("b#2", "", 9, 4, "length")],
        admitted=[("b#2", 0.25, 7)], active=2, queued=0, kv_used=21, generated_total=12, threads=1,
    )  # fmt: skip
    back = Step.from_wire(orjson.loads(orjson.dumps(step.to_wire())))
    assert back.rows[1].finish == "length" and back.rows[0].text == "Hi"
    assert back == Step(**{**vars(step), "admitted": [["b#2", 0.25, 7]]})  # JSON has no tuples


def test_worker_spec_round_trip():
    spec = WorkerSpec(name="m", path="/x.gguf", threads=2, cpu_share_dir="/dev/shm/s")
    assert WorkerSpec.from_wire(orjson.loads(orjson.dumps(spec.to_wire()))) == spec
    with pytest.raises(ValueError, match="unknown WorkerSpec fields: n_threads"):
        WorkerSpec.from_wire({**spec.to_wire(), "n_threads": 4})


def _across(wire: dict) -> dict:
    return orjson.loads(orjson.dumps(wire))


def test_every_frame_type_reads_back_as_itself():
    info = WorkerInfo(
        n_ctx_train=8192, n_embd=576, n_params=134_515_008, size_bytes=90_000_000,
        description="llama 135M", context_size=1024, parallel=4, kv_size=4096, threads=2,
        load_seconds=0.4, n_vocab=49152, bos_token="<s>", eos_token="</s>", add_bos=True,
        chat_template=None,
        flash_attn="off",
    )  # fmt: skip
    req = GenerateRequest("r#1", SamplingParams(), prompt="hi")
    commands = (
        req, Cancel("r#1"), EmbedRequest("e#2", ["a", "b"], True), Shutdown(),
        TokenizeRequest("t#3", messages=MSG, add_generation_prompt=False, with_pieces=True),
        DetokenizeRequest("d#4", [1, 2, 3]),
        GenerateRequest("r#5", SamplingParams(), prompt_tokens=[7, 8]), Ping("p#6"),
    )  # fmt: skip
    for cmd in commands:
        wire = cmd.to_wire(cmd.request_id) if isinstance(cmd, GenerateRequest) else cmd.to_wire()
        assert read_command(_across(wire)) == cmd
    events = (
        Ready(info), Accepted("r#1", 12), EmbedResult("e#2", [[0.5, 0.5]], 3),
        Tokens("t#3", [1, 2], ["a", "b"]), Text("d#4", "abc"), Pong("p#6"),
    )  # fmt: skip
    for event in events:
        assert read_event(_across(event.to_wire())) == event
    # Errors travel in their wire form and come back as the same kind, message and field.
    failed = read_event(
        _across(Failed("r#1", ContextLengthExceeded("too long", param="messages")).to_wire())
    )
    assert isinstance(failed, Failed) and isinstance(failed.error, ContextLengthExceeded)
    assert (failed.id, failed.error.message, failed.error.param) == ("r#1", "too long", "messages")
    load = read_event(_across(LoadFailed(ServerError("bad file")).to_wire()))
    assert isinstance(load, LoadFailed) and load.error.message == "bad file"


@pytest.mark.parametrize(
    "frame",
    [
        {"op": "launch", "id": "x"},  # no such op
        {"id": "x"},  # no op at all
        {"op": "cancel"},  # a required field is missing
        {"op": "cancel", "id": "x", "reason": "y"},  # a field this version does not know
        {"op": "generate", "id": 7, "params": {}},  # the id is no string
        {"op": "generate", "id": "x", "params": None},
        ["op", "cancel"],  # not an object
    ],
)
def test_a_malformed_command_is_a_protocol_error_naming_the_frame(frame):
    with pytest.raises(ProtocolError, match="malformed frame from the daemon|must be a"):
        read_command(frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"ev": "tokens", "id": "x"},
        {"ev": "accepted", "id": "x"},
        {"ev": "error", "id": "x", "error": "boom"},  # the error is no wire-form object
        {"ev": "ready", "info": {"threads": 2}},  # incomplete load facts
        {
            "ev": "step",
            "rows": [["x", "a"]],
            "admitted": [],
            "active": 1,
            "queued": 0,
            "kv_used": 1,
            "generated_total": 1,
            "threads": 1,
        },  # a row missing columns
    ],  # fmt: skip
)
def test_a_malformed_event_is_a_protocol_error_naming_the_frame(frame):
    with pytest.raises(ProtocolError, match="malformed frame from the worker"):
        read_event(frame)


def _render_go(template: str, messages: list[dict]) -> str:
    return ChatTemplate(go_to_jinja(template)).render(messages)


def test_go_templates_see_the_system_prompt_and_the_last_user_turn():
    template = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}"
    system = [{"role": "system", "content": "be brief"}]
    assert _render_go(template, [*system, *MSG]) == "S:be brief\nU:hi\nA:"
    assert _render_go(template, MSG) == "U:hi\nA:"  # the if-block drops out
    turns = [*MSG, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "2nd"}]
    assert _render_go(template, turns) == "U:2nd\nA:"  # single-turn, as Ollama's are


def test_go_template_trim_markers_and_trailing_newline_are_kept():
    assert _render_go("a  {{- .Prompt -}}  \nb", MSG) == "ahib"  # Go's trims, both sides
    assert _render_go("a {{ .Prompt }} b", MSG) == "a hi b"
    assert _render_go("<<{{ .Prompt }}>>\n", MSG) == "<<hi>>\n"


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{{ .Messages }}", ".Messages is not supported"),
        ("{{ range .Messages }}x{{ end }}", "unsupported Go template syntax"),
        ("{{ .Prompt }}{% if x %}", "unsupported Go template syntax"),
    ],
)
def test_go_template_outside_the_subset_is_refused_by_name(template, named):
    with pytest.raises(InvalidParameter, match=named) as info:
        go_to_jinja(template)
    assert info.value.param == "template" and info.value.status == 400


def test_api_reference_lists_every_refused_and_ignored_field():
    from pathlib import Path

    from mullama.api.reference import fields_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
    assert fields_markdown() in doc, "docs/API.md is stale: regenerate its table (api/reference.py)"
