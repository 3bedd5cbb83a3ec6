"""Constraint grammars compiled by llguidance on SmolLM2's real vocabulary: tool-call
grammars whose trigger is a special token followed by text (as Qwen's `<tool_call>` and
Mistral's `[TOOL_CALLS]` are in their vocabularies), tool schemas with their own $defs,
and the schema path named when a schema does not compile."""

from __future__ import annotations

import llguidance as llg
import pytest

from mullama.api.tools import ToolPlan, ToolSpec
from mullama.api.toolsyntax import TemplateTools
from mullama.engine.constraint import GrammarError, Grammars, tool_grammar
from mullama.engine.llama import Model, init_backend
from mullama.engine.protocol import CallSyntax
from mullama.models.registry import embedded_model_path

ITEM_TOOL = ToolSpec.model_validate({"type": "function", "function": {
    "name": "order",
    "parameters": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"],
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}},
                           "required": ["sku"]}},
    },
}})  # fmt: skip


@pytest.fixture(scope="module")
def vocab():
    init_backend()
    model = Model(str(embedded_model_path()))
    yield model, Grammars(model.guidance_tokenizer)
    model.close()


def _accepts(grammars: Grammars, grammar: str, pieces: list[int | str]) -> bool:
    matcher = llg.LLMatcher(grammars.tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    tokens: list[int] = []
    for p in pieces:
        tokens += [p] if isinstance(p, int) else grammars.tokenizer.tokenize_str(p)
    return matcher.consume_tokens(tokens)


def test_a_special_token_trigger_with_text_after_it_compiles_and_reads(vocab):
    _, grammars = vocab
    special = 1  # <|im_start|>, standing in for Qwen's <tool_call> token
    syntax = CallSyntax(begin="<tool_call>\n", end="\n</tool_call>", separator="\n")
    template = TemplateTools(True, True, True, True, syntax)
    plan = ToolPlan([ITEM_TOOL], "auto", True, template)

    def split(text: str) -> list[int | str]:
        if text.startswith("<tool_call>"):
            return [special, text[len("<tool_call>") :]] if text != "<tool_call>" else [special]
        return [text] if text else []

    grammar = tool_grammar(plan.constraint(), split)
    call = '{"name": "order", "arguments": {"items": [{"sku": "a1"}]}}'
    assert _accepts(grammars, grammar, ["Let me order. ", special, "\n" + call + "\n</tool_call>"])
    assert _accepts(grammars, grammar, ["Just text."])


def test_tool_schemas_with_their_own_defs_compile_in_the_call_object(vocab):
    _, grammars = vocab
    plan = ToolPlan([ITEM_TOOL], "required", True)
    grammar = tool_grammar(plan.constraint(), lambda t: [t] if t else [])
    ok = '{"tool_calls": [{"name": "order", "parameters": {"items": [{"sku": "x"}]}}]}'
    assert _accepts(grammars, grammar, [ok])
    bad = '{"tool_calls": [{"name": "order", "parameters": {"items": [{"nope": 1'
    assert not _accepts(grammars, grammar, [bad])


def test_a_schema_that_does_not_compile_names_its_failing_part(vocab):
    _, grammars = vocab
    schema = {"type": "object", "properties": {"age": {"type": "strin"}}}
    with pytest.raises(GrammarError, match=r"properties\.age"):
        grammars.constraint(None, schema, "response_format")
