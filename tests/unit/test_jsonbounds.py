"""Bounds on constrained JSON values (engine/jsonbounds.py), checked by compiling the
rewritten schema with llguidance on SmolLM2's real vocabulary and feeding it text: a
number's integral part stops at 16 digits, a fraction at 10, whitespace at 20 characters,
at every depth and inside tool calls; values within the bounds, and the schema's own
bounds, are as they were."""

from __future__ import annotations

import llguidance as llg
import pytest

from mullama.api.tools import ToolPlan, ToolSpec
from mullama.engine.constraint import Grammars, json_schema_grammar, tool_grammar
from mullama.engine.jsonbounds import bounded
from mullama.engine.llama import Model, init_backend
from mullama.models.registry import embedded_model_path

D16, D17 = "1234567890123456", "12345678901234567"


@pytest.fixture(scope="module")
def grammars():
    init_backend()
    model = Model(str(embedded_model_path()))
    yield Grammars(model.guidance_tokenizer)
    model.close()


def _reads(grammars: Grammars, grammar: str, text: str) -> bool:
    """Whether the grammar takes ``text`` whole, one character's tokens at a time (so a
    multi-character token cannot step over a bound)."""
    matcher = llg.LLMatcher(grammars.tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    for ch in text:
        if not matcher.consume_tokens(grammars.tokenizer.tokenize_str(ch)):
            return False
    return matcher.is_accepting()


def _schema_reads(grammars: Grammars, schema, text: str) -> bool:
    return _reads(grammars, json_schema_grammar(schema), text)


@pytest.mark.parametrize(
    ("schema", "ok", "over"),
    [
        ({"type": "integer"}, [D16, "-" + D16, "0", "9999999999999998"], [D17, "1" + "0" * 16]),
        ({"type": "integer", "title": "Population"}, [D16], [D17]),
        ({"type": "number"}, [D16, "-3.25", "0.1234567891", D16 + ".5"],
         [D17, "0.12345678912", "1.50000000000", "1e5"]),
        ({"type": ["integer", "null"]}, ["null", D16], [D17]),
        ({}, ['{"a": [1, {"b": 2.5}], "c": "' + D17 + '"}', "-" + D16, "null"],
         ['{"a": [1, {"b": ' + D17 + "}]}", "[0.12345678912]", D17]),
        ({"type": "array"}, ["[1, [2.5]]"], ["[[" + D17 + "]]"]),
        ({"type": "object"}, ['{"x": {"y": 1}}'], ['{"x": {"y": ' + D17 + "}}"]),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True},
         ['{"a": 1, "b": 2}'], ['{"a": 1, "b": ' + D17 + "}"]),
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}},
         ['{"a": null}', '{"a": 7}'], ['{"a": ' + D17 + "}"]),
        ({"$defs": {"N": {"type": "number"}}, "type": "array", "items": {"$ref": "#/$defs/N"}},
         ["[1.5, 2]"], ["[" + D17 + "]"]),
    ],
)  # fmt: skip
def test_numbers_stop_at_16_integral_and_10_fraction_digits(grammars, schema, ok, over):
    for text in ok:
        assert _schema_reads(grammars, schema, text), text
    for text in over:
        assert not _schema_reads(grammars, schema, text), text


def test_a_schemas_own_bounds_stay_and_a_wide_one_keeps_its_values(grammars):
    assert not _schema_reads(grammars, {"type": "integer", "minimum": 0}, "-5")
    assert not _schema_reads(grammars, {"type": "number", "maximum": 2.5}, "2.75")
    wide = {"type": "integer", "minimum": -(10**18), "maximum": 10**18}
    assert _schema_reads(grammars, wide, "123456789012345678")
    alone = {"type": "integer", "minimum": 10**17}  # the open side goes past the other one
    assert _schema_reads(grammars, alone, "123456789012345678")
    assert not _schema_reads(grammars, alone, "12345678901234567890")
    step = {"type": "number", "multipleOf": 0.5}
    assert _schema_reads(grammars, step, "2.5") and not _schema_reads(grammars, step, "2.25")


def test_whitespace_runs_stop_at_20_characters(grammars):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert _schema_reads(grammars, schema, '{\n  "a": 1\n}')
    assert _schema_reads(grammars, schema, "{" + " " * 20 + '"a": 1}')
    assert not _schema_reads(grammars, schema, "{" + " " * 21 + '"a": 1}')
    compact = {**schema, "x-guidance": {"whitespace_flexible": False}}
    assert _schema_reads(grammars, compact, '{"a":1}')
    assert not _schema_reads(grammars, compact, '{"a": 1}')


def test_literals_and_notes_are_left_as_written():
    schema = {"enum": [1, "x"], "description": "d"}
    out = bounded({"type": "object", "properties": {"e": schema, "c": {"const": 1e20}}})
    assert out["properties"] == {"e": schema, "c": {"const": 1e20}}


def test_a_forced_tool_calls_integer_argument_is_bounded(grammars):
    city = ToolSpec.model_validate({"type": "function", "function": {
        "name": "City",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["name", "population"],
        },
    }})  # fmt: skip
    grammar = tool_grammar(ToolPlan([city], "required", True).constraint(), lambda t: [t] * bool(t))
    call = '{"tool_calls": [{"name": "City", "parameters": {"name": "Paris", "population": %s}}]}'
    assert _reads(grammars, grammar, call % D16)
    assert not _reads(grammars, grammar, call % D17)


def test_schemas_that_intersect_compile_and_are_bounded(grammars):
    """Where llguidance intersects schemas (allOf, a $ref beside keywords) the any-value
    is bounded one level deep: its recursive definition, intersected with itself, never
    ends there ("Schema intersection stack level exceeded" for schemas that compiled)."""
    tuple_ = {"type": "array", "prefixItems": [{}], "items": False}
    fragment = {"allOf": [{"type": "object", "properties": {"a": tuple_}}, {"required": ["a"]}]}
    assert _schema_reads(grammars, fragment, '{"a": [5]}')
    assert not _schema_reads(grammars, fragment, '{"a": [' + D17 + "]}")
    free = {"allOf": [{"type": "object"}, {"type": "object", "required": ["b"]}]}
    assert _schema_reads(grammars, free, '{"b": [1, 2.5]}')
    assert not _schema_reads(grammars, free, '{"b": ' + D17 + "}")


@pytest.mark.parametrize(
    "schema", [{"$defs": [1]}, {"x-guidance": "x"}, {"type": 5}, {"properties": {"a": "x"}},
               {"items": [True, 1], "anyOf": "x"}, False, [1]],
)  # fmt: skip
def test_a_malformed_schema_is_left_for_llguidance_to_refuse(schema):
    bounded(schema)  # no exception here: llguidance's error names the fault (a 400)
