"""A custom model's settings applied to requests: its system prompt (when the request has
none), its chat template, and its parameters as defaults that the request's own values
override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Ollama option name -> SamplingParams field
_PARAMS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "num_ctx": "context_limit",
    "num_predict": "max_tokens",
}


class Profile:
    """What the API layer needs from a ModelRef; an empty profile changes nothing."""

    def __init__(
        self,
        system: str | None = None,
        template: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.system = system
        self.template = template
        self.defaults: dict[str, Any] = {}
        for key, value in (parameters or {}).items():
            field = _PARAMS.get(key)
            if field is None or value is None:
                continue
            if field == "max_tokens" and (not isinstance(value, int) or value <= 0):
                continue
            self.defaults[field] = list(value) if field == "stop" else value

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system}, *messages]
        return messages


EMPTY = Profile()


def profile_of(models: Any, name: str | None) -> Profile:
    """The profile of a served model (the ModelRef kept by the model manager)."""
    if not name:
        return EMPTY
    try:
        entry = models.entry(name)
    except Exception:  # noqa: BLE001 - unknown models fail later, with the usual error
        return EMPTY
    ref = getattr(entry, "ref", None)
    if ref is None:
        return EMPTY
    return Profile(ref.system, ref.template, ref.parameters)
