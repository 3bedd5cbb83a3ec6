"""Request fields Mullama does not act on: refused when they would change the answer,
otherwise accepted and reported, never dropped in silence.

llama-server, Ollama and vLLM ignore fields they do not know, and the agents' clients add
fields every month (Codex's ``client_metadata``, Claude Code's ``context_management``):
refusing every unknown field made them fail on their first request. So, per request
model:

- ``REFUSED`` (field -> why): fields that would change the answer the client relies on
  and that Mullama cannot honour (``logit_bias``, ``n`` beyond the limit, ``background``).
  Always a 400 in the API's own shape, naming the field and why.
- ``HINTS`` (field -> why): hints Mullama does not act on (verbosity, context
  management, predicted output): the answer is the one the client asked for, only not
  tuned as hinted. Accepted and reported; refused (with why) under ``--strict-fields``.
- ``IGNORED``: fields that change nothing for a local server (``user``, ``metadata``,
  caching hints: prefix reuse is always on). Accepted and reported.
- any other field: accepted and reported, or refused under ``--strict-fields`` when
  ``REFUSE_UNKNOWN`` (models whose extra fields are expected, such as assistant
  messages sent back, never refuse them).
- ``NEUTRAL``: values of such a field that change nothing (``tool_choice: "none"``),
  accepted and not reported, as are ``null``, ``false``, ``[]`` and ``{}``.

"Reported": the field's name (``output_config.effort``, ``messages[].cache_control``)
goes into the request's context (requestctx.py), from which the middleware writes the
``Mullama-Ignored-Fields`` response header, a debug log line and the
``mullama_ignored_fields_total`` counter. ``docs/API.md`` lists the sets; a unit test
keeps it current.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from .. import requestctx
from ..errors import InvalidParameter


class StrictBody(BaseModel):
    """A request body's model: strict types (a string is not a number), no NaN or
    Infinity; fields it does not declare are the business of ``Refusing``."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def _same(value: Any, neutral: Any) -> bool:
    """``value`` is ``neutral`` as JSON sees it: Python's ``0 == False`` and ``True == 1``
    must not let a refused field through (``background: 0``, ``typical_p: true``)."""
    return type(value) is type(neutral) and value == neutral


@functools.cache
def _known(cls: type[BaseModel]) -> frozenset[str]:
    names = set(cls.model_fields)
    names.update(f.alias for f in cls.model_fields.values() if f.alias)
    return frozenset(names)


def strict() -> bool:
    """Whether the request runs under --strict-fields."""
    return requestctx.get().strict_fields


def ignored(param: str, declared: bool = True) -> None:
    """Report ``param`` as accepted and not acted on. ``declared``: a name the API
    declares (a bounded metric label), not one the client made up."""
    requestctx.get().ignore(param, declared)


def hint(param: str, why: str) -> None:
    """A hint Mullama does not act on: reported, or refused under --strict-fields."""
    if strict():
        raise InvalidParameter(f"'{param}' is not supported: {why}", param=param)
    ignored(param)


def unknown(param: str) -> None:
    """A field Mullama does not know: reported, or refused under --strict-fields."""
    if strict():
        raise InvalidParameter(
            f"unknown field '{param}': Mullama does not implement it, and refuses it "
            "rather than ignore it (--strict-fields)",
            param=param,
        )
    ignored(param, declared=False)


class Refusing(BaseModel):
    REFUSED: ClassVar[Mapping[str, str]] = {}  # field -> why it is not implemented
    HINTS: ClassVar[Mapping[str, str]] = {}  # field -> why it is not acted on
    IGNORED: ClassVar[frozenset[str]] = frozenset()  # accepted, changes nothing here
    NEUTRAL: ClassVar[Mapping[str, tuple[Any, ...]]] = {}  # values that change nothing
    REFUSE_UNKNOWN: ClassVar[bool] = True  # under --strict-fields
    WHERE: ClassVar[str] = ""  # how the error names the field (e.g. "options.")

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = _known(cls)
        for key, value in data.items():
            declared = key in cls.IGNORED or key in cls.HINTS
            if key in known and not declared:
                continue
            if _neutral(value) or any(_same(value, n) for n in cls.NEUTRAL.get(key, ())):
                continue
            param = f"{cls.WHERE}{key}"
            why = cls.REFUSED.get(key)
            if why is not None:
                raise InvalidParameter(f"'{param}' is not supported: {why}", param=param)
            if key in cls.HINTS:
                hint(param, cls.HINTS[key])
            elif key in cls.IGNORED:
                ignored(param)
            elif cls.REFUSE_UNKNOWN:
                unknown(param)
            else:
                ignored(param, declared=False)
        return data
