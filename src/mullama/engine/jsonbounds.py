"""Bounds on every constrained JSON value, so that a weak model cannot run away inside
one: SmolLM2 at temperature 0, asked for ``population: int`` in a forced tool call, wrote
``31522222222…`` until max_tokens, because a JSON schema integer may have any number of
digits. llama.cpp's JSON-schema grammar (which llama-server and Ollama use) bounds an
integer part to 16 digits, a fraction to 16 and whitespace to ~20 characters; llguidance
bounds nothing by default, so the schema is rewritten before it is compiled:

- a number's integral part has at most 16 digits: ``exclusiveMinimum``/``exclusiveMaximum``
  of ∓10^16 where the schema gives no bound of its own on that side (beyond the other
  side's bound when that one is already wider). An ``integer`` gets ``minimum``/``maximum``
  of ∓9,999,999,999,999,998 instead: llguidance reads bounds as f64, where 10^16 − 1 is
  10^16 (17 digits); so 9,999,999,999,999,999 is the one 16-digit integer left out.
- a non-integer number's fraction has at most 10 digits: ``multipleOf: 1e-10`` unless the
  schema has its own ``multipleOf`` (which bounds the fraction already). llguidance keeps a
  ``multipleOf`` as a 32-bit coefficient times a power of ten read from an f64: 1e-10 is
  the finest step it takes (1e-11 is an error).
- llguidance writes a bounded number without an exponent: every value within the bounds
  is still written, in plain decimal form (``0.000015``, not ``1.5e-5``).
- a value of any type (``{}``, ``true``, a schema without ``type``, an array without
  ``items``, an object whose further properties are free) is a bounded value at every
  depth: a ``$defs`` entry that refers to itself for array items and object values. In a
  schema where llguidance intersects schemas (``allOf``, a ``$ref`` beside keywords) it is
  bounded one level deep instead: the recursive entry, intersected with itself, never
  ends there.
- whitespace between JSON tokens: 1 to 20 of space, tab, CR, LF at each place
  (llguidance's ``x-guidance.whitespace_pattern``, matched once at each place), unless the
  schema's own ``x-guidance`` sets a pattern or asks for none.

The rewrite changes nothing for values within the bounds: the schema's own bounds, types
and combinators stay, and every added keyword only constrains numbers or says what an
unconstrained position already meant. Strings are not bounded (a string's length is the
schema's to say with ``maxLength``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WHITESPACE = r"[\x20\x0A\x0D\x09]{1,20}"
NUMBER_LIMIT = 1e16  # |x| < 10^16: at most 16 integral digits
INTEGER_LIMIT = 9_999_999_999_999_998  # the largest f64 integer below 10^16
FRACTION_STEP = 1e-10  # at most 10 fraction digits
I64_EDGE = 2**62  # llguidance keeps integer bounds as i64 (and saturates past them)

# Shared definitions at the root: each bounded number is one lexeme whichever place
# refers to it. Written in place at every numeric field instead, a schema of 40 numbers
# took 40 ms to compile, against 1.8 ms shared (1.2 ms unbounded): llguidance builds each
# range's regex anew.
_INTEGER, _NUMBER, _ANY = "mullama_integer", "mullama_number", "mullama_any_json"
_DEFS: dict[str, dict[str, Any]] = {
    _INTEGER: {"type": "integer", "minimum": -INTEGER_LIMIT, "maximum": INTEGER_LIMIT},
    _NUMBER: {
        "type": "number",
        "exclusiveMinimum": -NUMBER_LIMIT,
        "exclusiveMaximum": NUMBER_LIMIT,
        "multipleOf": FRACTION_STEP,
    },
    _ANY: {  # any JSON value: its numbers bounded, its items and property values such values
        "exclusiveMinimum": -NUMBER_LIMIT,
        "exclusiveMaximum": NUMBER_LIMIT,
        "multipleOf": FRACTION_STEP,
        "items": {"$ref": f"#/$defs/{_ANY}"},
        "additionalProperties": {"$ref": f"#/$defs/{_ANY}"},
    },
}

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("not", "contains", "propertyNames", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_ALL_TYPES = frozenset({"null", "boolean", "number", "integer", "string", "array", "object"})
_LITERAL = ("const", "enum")  # a value from a list: bounded already
# Keywords that make a schema without ``type`` no value of any type: its values are those
# of the schemas it combines or refers to, each bounded itself.
_COMBINING = ("$ref", "anyOf", "oneOf", "allOf", "not")
# Keywords that say nothing of a value: a schema of only these (and ``type``) is the same
# as the shared definition of its type.
_NOTES = frozenset(
    {"title", "description", "default", "examples", "$comment", "readOnly", "writeOnly",
     "deprecated"}
)  # fmt: skip
_BESIDE = frozenset({"$ref", "anyOf", "oneOf"})  # intersected with their sibling keywords
_INERT = _NOTES | {"$defs", "definitions", "$schema", "$id", "$anchor", "x-guidance"}


def bounded(schema: Any) -> Any:
    """``schema`` (a JSON schema, ``{}``/``True``/``None`` for any JSON value) with the
    bounds above; the root gets the shared definitions that something refers to."""
    if schema is None or schema is True:
        schema = {}
    if not isinstance(schema, dict):
        return schema  # False: nothing to bound
    if not isinstance(schema.get("$defs", {}), dict) or not isinstance(
        schema.get("x-guidance", {}), dict
    ):
        return schema  # malformed: llguidance's error names it (a 400)
    walk = _Walk(deep=not _intersects(schema))
    root = walk.value(schema)
    if walk.used:
        defs = {**root.get("$defs", {}), **{k: _DEFS[k] for k in sorted(walk.used)}}
        root = {**root, "$defs": defs}
    return _with_whitespace(root)


def _with_whitespace(root: dict[str, Any]) -> dict[str, Any]:
    options = root.get("x-guidance", {})
    if "whitespace_pattern" in options or options.get("whitespace_flexible") is False:
        return root
    return {**root, "x-guidance": {**options, "whitespace_pattern": WHITESPACE}}


class _Walk:
    """One rewrite: the schema positions of a schema, each bounded, and the shared
    definitions they refer to (``used``). ``deep``: a value of any type is the recursive
    any-value definition; without it (a schema that intersects schemas, see _intersects)
    only the value's own numbers are bounded, not those of the arrays and objects in it."""

    def __init__(self, deep: bool) -> None:
        self.deep = deep
        self.used: set[str] = set()

    def ref(self, name: str) -> dict[str, Any]:
        self.used.add(name)
        return {"$ref": f"#/$defs/{name}"}

    def any(self) -> dict[str, Any]:
        if self.deep:
            return self.ref(_ANY)
        return {k: v for k, v in _DEFS[_ANY].items() if k not in ("items", "additionalProperties")}

    def value(self, schema: Any) -> Any:
        """A schema in a schema position, bounded."""
        if schema is True or (isinstance(schema, dict) and schema.keys() <= _NOTES):
            return self.any()
        if not isinstance(schema, dict):
            return schema
        if schema.keys() <= _NOTES | {"type"} and schema["type"] in ("integer", "number"):
            return self.ref(_INTEGER if schema["type"] == "integer" else _NUMBER)
        out = _map_children(schema, self.value)
        if any(k in schema for k in _LITERAL):
            return out
        if "type" not in schema and any(k in schema for k in _COMBINING):
            return out
        types = _types(schema)
        if types & {"number", "integer"}:
            integer = types & {"number", "integer"} == {"integer"}
            out.update(_number_bounds(schema, integer))
        if "array" in types:
            # 2020-12: with prefixItems, items is the rest; an older draft's list of
            # items leaves the rest to additionalItems.
            rest = "additionalItems" if isinstance(out.get("items"), list) else "items"
            if out.get(rest, True) is True:
                out[rest] = self.any()
        if "object" in types and out.get("additionalProperties", True) is True:
            out["additionalProperties"] = self.any()
        return out


def _map_children(schema: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """``schema`` with ``fn`` applied to each schema it holds (data such as ``const``,
    ``enum``, ``default``, ``examples`` and ``x-guidance`` stays as it is)."""
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {k: fn(v) for k, v in schema[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [fn(v) for v in schema[key]]
    for key in (*_SCHEMA_ONE, "additionalProperties", "additionalItems"):
        if isinstance(schema.get(key), dict):
            out[key] = fn(schema[key])
    items = schema.get("items")
    if isinstance(items, dict):
        out["items"] = fn(items)
    elif isinstance(items, list):  # an older draft's tuple
        out["items"] = [fn(v) for v in items]
    return out


def _intersects(schema: Any) -> bool:
    """Whether llguidance intersects schemas somewhere in ``schema``: ``allOf``, or a
    ``$ref``/``anyOf``/``oneOf`` beside another of them or a validation keyword. The
    recursive any-value definition must then stay out: llguidance's intersection of it
    with itself never ends ("Schema intersection stack level exceeded", a 400 for a
    schema that compiled without the bounds)."""
    if not isinstance(schema, dict):
        return False
    combined = schema.keys() & _BESIDE
    if "allOf" in schema or (combined and (len(combined) > 1 or schema.keys() - _INERT - combined)):
        return True
    found: list[bool] = []
    _map_children(schema, lambda child: found.append(_intersects(child)))
    return any(found)


def _types(schema: dict[str, Any]) -> frozenset[str]:
    kind = schema.get("type")
    if kind is None:
        return _ALL_TYPES
    if isinstance(kind, str):
        return frozenset([kind])
    return (
        frozenset(t for t in kind if isinstance(t, str)) if isinstance(kind, list) else _ALL_TYPES
    )


def _number_bounds(schema: dict[str, Any], integer: bool) -> dict[str, Any]:
    """The bounds a numeric schema with keywords of its own lacks: a side it leaves open, and for a non-integer
    the fraction's step. A side is set beyond the other side's own bound when that one
    is already past the limit (``minimum: 1e20`` alone keeps its values)."""
    low = _given(schema, "minimum", "exclusiveMinimum")
    high = _given(schema, "maximum", "exclusiveMaximum")
    add: dict[str, Any] = {}
    limit = INTEGER_LIMIT if integer else NUMBER_LIMIT

    def edge(other: float | None) -> float | None:
        wide = limit if other is None else max(limit, 10 * abs(other))
        if integer and wide > I64_EDGE:  # past what llguidance's integers hold: as it was
            return None
        return wide

    if low is None and (side := edge(high)) is not None:
        add["minimum" if integer else "exclusiveMinimum"] = -side
    if high is None and (side := edge(low)) is not None:
        add["maximum" if integer else "exclusiveMaximum"] = side
    if not integer and "multipleOf" not in schema:
        add["multipleOf"] = FRACTION_STEP
    return add


def _given(schema: dict[str, Any], *keys: str) -> float | None:
    """The schema's own bound on one side (a number; draft 4's boolean
    ``exclusiveMinimum`` only qualifies ``minimum``)."""
    for key in keys:
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
