"""Constrained decoding with llguidance: a grammar (Lark, llguidance's dialect, with
``%json`` for JSON schemas) becomes a token matcher that checks and masks each sampled
token of one sequence.

The mask is applied only when needed: the sampler picks a token from the raw row first,
and only if the grammar rejects it is the row masked and the token picked again (a
greedy row: the argmax of the allowed tokens). Compiling a grammar takes well under a
millisecond for ordinary schemas, and llguidance bounds its work with parser limits, so
a hostile schema ends in a clear error, not a stuck worker. The matcher is built on the
worker's reader thread (llguidance drops the GIL while it compiles), never on the decode
thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import llguidance as llg
import numpy as np
import orjson

from ..errors import InvalidParameter
from .jsonbounds import bounded
from .protocol import ToolGrammar

# Bounds on what one grammar may cost (llguidance's "fuel"): a lexer or parser that
# needs more is an error at compile time or at the step that would need it.
_LIMITS = dict(
    initial_lexer_fuel=2_000_000,  # ~40 ms of regex analysis
    step_lexer_fuel=400_000,  # ~30 ms for one mask
    max_grammar_size=400_000,
)


class GrammarError(InvalidParameter):
    """A grammar or JSON schema that cannot be used; ``param`` names the request field."""


class Grammars:
    """One model's llguidance tokenizer (built on first use: ~0.2 s for a 49k vocabulary)
    and the matchers made from it."""

    def __init__(self, make_tokenizer: Callable[[], llg.LLTokenizer]) -> None:
        self._make = make_tokenizer
        self._tokenizer: llg.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llg.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make()
            return self._tokenizer

    def constraint(self, grammar: str | None, schema: Any, param: str) -> Constraint | None:
        """The constraint of a request: an llguidance grammar, or a JSON schema (``{}``:
        any JSON value). Raises GrammarError naming the schema path that fails."""
        if grammar is None and schema is None:
            return None
        if grammar is None:
            grammar = json_schema_grammar(schema)
        matcher = self._matcher(grammar)
        if matcher.is_error():
            where = _failing_path(self, schema) if schema is not None else None
            detail = matcher.get_error().splitlines()[0]
            at = f" (at the schema's {where[1:]})" if where else ""
            raise GrammarError(f"the constraint cannot be compiled{at}: {detail}", param=param)
        return Constraint(matcher, self.tokenizer.vocab_size)

    def _matcher(self, grammar: str) -> llg.LLMatcher:
        return llg.LLMatcher(
            self.tokenizer, grammar, log_level=0, limits=llg.LLParserLimits(**_LIMITS)
        )


def json_schema_grammar(schema: Any) -> str:
    """An llguidance grammar for a JSON schema: properties in the schema's own order,
    whitespace where the model likes it inside the value but none after it (generation
    ends as the value closes), and an object that lists its
    properties gets no others unless it says so (``additionalProperties`` defaults to
    false, as in llama.cpp's converter, which llama-server and Ollama use). Numbers and
    whitespace are bounded (jsonbounds.py)."""
    if schema in ({}, None, True):
        schema = {}
    text = orjson.dumps(bounded(_closed(schema))).decode()
    return llg.LLMatcher.grammar_from_json_schema(text)


def _closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that lists
    ``properties`` and does not say otherwise."""
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _failing_path(grammars: Grammars, schema: Any, path: str = "") -> str | None:
    """The deepest part of ``schema`` that does not compile on its own (a JSON pointer
    style path such as ``.properties.age``), or None when only the whole fails (a
    ``$ref`` into the root, say)."""
    if not isinstance(schema, dict):
        return None
    children: list[tuple[str, Any]] = []
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(schema.get(key), dict):
            children += [(f"{path}.{key}.{k}", v) for k, v in schema[key].items()]
    for key in ("items", "additionalProperties", "not", "contains"):
        if isinstance(schema.get(key), dict):
            children.append((f"{path}.{key}", schema[key]))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(schema.get(key), list):
            children += [(f"{path}.{key}[{i}]", v) for i, v in enumerate(schema[key])]
    for where, child in children:
        if not isinstance(child, dict) or "$ref" in orjson.dumps(child).decode():
            continue
        if grammars._matcher(json_schema_grammar(child)).is_error():
            return _failing_path(grammars, child, where) or where
    return None


class Constraint:
    """One sequence's matcher: ``allows`` checks a sampled token, ``mask`` bans every
    token the grammar rejects from a logits row, ``accept`` advances past a token."""

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def allows(self, token: int) -> bool:
        return self.matcher.validate_tokens([token]) == 1

    def mask(self, logits: np.ndarray) -> None:
        """Write -inf over every rejected token of ``logits`` (llama.cpp's own row)."""
        bits = self._bits
        self.matcher.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[: len(logits)]
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """The value is complete and nothing may follow it: generation ends here."""
        return self.matcher.is_stopped()


# ---- tool calls ---------------------------------------------------------------------

Piece = int | str  # a special token's id, or literal text


def tool_grammar(tg: ToolGrammar, split: Callable[[str], list[Piece]]) -> str:
    """The Lark grammar of a reply with tool calls in ``tg.syntax``. ``split`` cuts a
    marker into literal text and special tokens (Mistral's ``[TOOL_CALLS]`` is one token,
    which the grammar must name as a token: its text alone would not match it).

    Forced: the calls from the first token. Auto: free text; once the syntax's trigger is
    written, what follows is held to the syntax and the schemas (a lazy lexeme: it ends
    at the first trigger), and the reply ends after the calls. A syntax without a
    trigger (a call is a bare JSON object, as Llama 3's) is a call when the reply opens
    with ``{``, free text otherwise."""
    syn = tg.syntax
    calls = [_closed(c) for c in tg.calls]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if tg.defs:  # each tool's own $defs, moved to the root its refs now point at
        schema = {**schema, "$defs": _closed(tg.defs)}
    obj = "%json " + orjson.dumps(bounded(schema)).decode()
    sep = _seq(split(syn.separator))
    extra = max(0, tg.max_calls - 1)
    more = f"({_seq(sep, 'call')}){{0,{extra}}}" if extra else ""
    rules = [f"call: {_seq(split(syn.begin), obj, split(syn.end))}"]
    trigger = syn.trigger
    if syn.open:
        whole = _seq(split(syn.open), "call", more, split(syn.close))
        after = _seq(split(syn.open[len(trigger) :]), "call", more, split(syn.close))
    else:
        whole = _seq("call", more, split(syn.close))
        after = _seq(split(syn.begin[len(trigger) :]), obj, split(syn.end), more, split(syn.close))
    head = split(trigger)
    if tg.forced:
        start = whole
    elif not trigger:
        start = f"PLAIN | {whole}"
        rules.append(r"PLAIN: /[ \t\r\n]*([^{ \t\r\n](.|\n)*)?/")
    elif isinstance(head[0], int):  # a special token ends TEXT by itself: no lazy rule
        # (llguidance takes no special token inside a lexeme)
        start = f"TEXT | TEXT {_seq(head)} {after}"
    else:
        start = f"TEXT | trig {after}"
        rules.append(f"trig[lazy]: TEXT {_seq(head)}")
    rules.append(r"TEXT: /(.|\n)*/")
    return "%llguidance {}\nstart: " + start + "\n" + "\n".join(rules) + "\n"


def _seq(*parts: Any) -> str:
    """Lark for a sequence of parts: rule names (str), or piece lists (from ``split``)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                out.append(part)
            continue
        for piece in part:
            out.append(f"<[{piece}]>" if isinstance(piece, int) else orjson.dumps(piece).decode())
    return " ".join(out)
