"""A custom model's settings applied to requests: its system prompt (when the request has
none), its chat template, and its parameters as defaults that the request's own values
override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engine.protocol import SamplingParams, field_names
from .toolsyntax import REMOTE_TOOLS

if TYPE_CHECKING:
    from ..models.manager import ModelManager

_FIELDS = field_names(SamplingParams)
# The Ollama option names that differ from SamplingParams' field names; every other
# option of the same name as a field (temperature, top_k, stop, ...) maps to it as it is.
_OLLAMA_RENAMES = {"num_ctx": "context_limit", "num_predict": "max_tokens"}
# Fields that no option sets under the field's own name (format sets json_schema).
_NOT_OPTIONS = frozenset(_OLLAMA_RENAMES.values()) | {"json_schema"}


def from_ollama(options: Mapping[str, Any]) -> dict[str, Any]:
    """SamplingParams fields from Ollama-named options (a request's ``options`` and a
    custom model's ``parameters`` alike). Unset values, a ``num_predict`` of 0 or below
    (Ollama's "until the end") and names that are no sampling parameter are left out."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = _OLLAMA_RENAMES.get(key, key)
        if value is None or key in _NOT_OPTIONS or name not in _FIELDS:
            continue
        if name == "max_tokens" and (not isinstance(value, int) or value <= 0):
            continue
        if name == "stop":
            value = [value] if isinstance(value, str) else list(value)
        out[name] = value
    return out


class Profile:
    """What the API layer needs from a ModelRef; an empty profile changes nothing."""

    def __init__(
        self,
        system: str | None = None,
        template: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        gguf_template: str | None = None,
    ) -> None:
        self.system = system
        self.template = template
        self.chat_template = template or gguf_template  # the one that renders the chat
        # The model's parameters as SamplingParams fields: defaults under a request's own.
        self.defaults: dict[str, Any] = from_ollama(parameters or {})

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system}, *messages]
        return messages


EMPTY = Profile()
# A remote engine applies its own chat template and parses its own tool calls: requests
# go to it as OpenAI messages with tools, and its calls come back in REMOTE_SYNTAX.
REMOTE = Profile()
REMOTE.chat_template = REMOTE_TOOLS  # type: ignore[assignment]


def profile_of(models: ModelManager, name: str | None) -> Profile:
    """The profile of a model (its ModelRef, served or in the store); a lookup only."""
    if not name:
        return EMPTY
    if models.remote(name) is not None:
        return REMOTE
    try:
        entry = models.find(name)
        ref = entry.ref
    except Exception:  # noqa: BLE001 - unknown models fail later, with the usual error
        return EMPTY
    try:
        gguf_template = entry.gguf().chat_template
    except Exception:  # noqa: BLE001 - an unreadable file fails later, with the usual error
        gguf_template = None
    return Profile(ref.system, ref.template, ref.parameters, gguf_template)
