"""No silent drops: a request field that would change the answer and that Mullama does not
implement is refused by name (400 in the API's own shape), never ignored.

Each request model says which fields it refuses (with why), which it accepts and ignores
because they change nothing for a local server (``user``, ``metadata``, ``num_gpu``...),
and which values of a refused field change nothing (``tool_choice: "none"``). Any other
field it does not know is refused too: an unknown field is never silently dropped.
``docs/API.md`` lists both sets; a unit test keeps it current.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import InvalidParameter


class StrictBody(BaseModel):
    """A request body's model: strict types (a string is not a number), no NaN or
    Infinity; unknown fields are the business of ``Refusing``."""

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


class Refusing(BaseModel):
    REFUSED: ClassVar[Mapping[str, str]] = {}  # field -> why it is not implemented
    IGNORED: ClassVar[frozenset[str]] = frozenset()  # accepted, changes nothing here
    NEUTRAL: ClassVar[Mapping[str, tuple[Any, ...]]] = {}  # values that change nothing
    REFUSE_UNKNOWN: ClassVar[bool] = True
    WHERE: ClassVar[str] = ""  # how the error names the field (e.g. "options.")

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = _known(cls)
        for key, value in data.items():
            if key in known or key in cls.IGNORED:
                continue
            if _neutral(value) or any(_same(value, n) for n in cls.NEUTRAL.get(key, ())):
                continue
            param = f"{cls.WHERE}{key}"
            why = cls.REFUSED.get(key)
            if why is not None:
                raise InvalidParameter(f"'{param}' is not supported: {why}", param=param)
            if cls.REFUSE_UNKNOWN:
                raise InvalidParameter(
                    f"unknown field '{param}': Mullama does not implement it, and refuses "
                    "it rather than ignore it",
                    param=param,
                )
        return data
