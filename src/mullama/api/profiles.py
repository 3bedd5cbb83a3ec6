"""A model's settings applied to requests: a custom model's system prompt (when the
request has none) and chat template, and the model's request defaults, which the request's
own values override. The defaults come, lowest first, from the API (llama-server's
sampling defaults on the OpenAI side, Ollama's on Ollama's), the GGUF's own
``general.sampling.*`` keys, a custom model's parameters, and ``--model-opt``. A reasoning
model's thinking defaults (``thinking``) layer the same way: the global flags, a custom
model's ``think`` and ``reasoning_budget`` parameters, ``--model-opt``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engine import knobs
from ..engine.protocol import SamplingParams, field_names
from .thinking import ThinkDefaults
from .toolsyntax import REMOTE_TOOLS

if TYPE_CHECKING:
    from ..models.manager import ModelManager
    from ..models.router import Target

_FIELDS = field_names(SamplingParams)
# The Ollama option names that differ from SamplingParams' field names (a knob's, in
# engine/knobs.py); every other option of the same name as a field maps to it as it is.
_OLLAMA_RENAMES = {
    "num_ctx": "context_limit",
    "num_predict": "max_tokens",
    **knobs.renames("ollama"),
}
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


# The request defaults /api/show lists, with where each value comes from.
SHOWN = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed",
         "max_tokens")  # fmt: skip
PARAMETERS = "the custom model's parameters"
MODEL_OPT = "--model-opt"


class Profile:
    """What the API layer needs from a model; an empty profile changes nothing.

    ``gguf``: the GGUF's request defaults (field -> (value, its key)); ``parameters``: a
    custom model's (Ollama's names); ``opts``: --model-opt's (field -> value), highest.
    ``max_tokens_cap``: --max-tokens or the model's max_tokens (0: none), applied by the
    engine (engine/limits.py fit_length), and where it comes from. ``thinking``: its
    thinking defaults."""

    def __init__(
        self,
        system: str | None = None,
        template: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        gguf_template: str | None = None,
        gguf: Mapping[str, tuple[Any, str]] | None = None,
        opts: Mapping[str, Any] | None = None,
        max_tokens_cap: tuple[int, str] = (0, ""),
        thinking: ThinkDefaults = ThinkDefaults(),
    ) -> None:
        self.system = system
        self.template = template
        self.chat_template = template or gguf_template  # the one that renders the chat
        # The model's request defaults as SamplingParams fields, under a request's own,
        # and where each comes from.
        self.sources: dict[str, str] = {}
        self.defaults: dict[str, Any] = {}
        layers = [
            {k: (v, f"GGUF {key}") for k, (v, key) in (gguf or {}).items()},
            {k: (v, PARAMETERS) for k, v in from_ollama(parameters or {}).items()},
            {k: (v, MODEL_OPT) for k, v in (opts or {}).items()},
        ]
        for layer in layers:
            for name, (value, source) in layer.items():
                self.defaults[name], self.sources[name] = value, source
        self.max_tokens_cap = max_tokens_cap
        self.thinking = thinking

    def request_defaults(self, base: Mapping[str, Any], base_source: str) -> dict[str, Any]:
        """What a request that sets none of them gets, on an API whose own defaults are
        ``base``: each SHOWN field's value and where it comes from (/api/show)."""
        out: dict[str, Any] = {}
        for name in SHOWN:
            if name in self.defaults:
                out[name] = {"value": self.defaults[name], "source": self.sources[name]}
            elif name == "seed":
                out[name] = {"value": None, "source": "random for each request"}
            elif name == "max_tokens":
                out[name] = {"value": None, "source": "until the end of generation or a full "
                             "context"}  # fmt: skip
            else:
                out[name] = {"value": base[name], "source": base_source}
        cap, where = self.max_tokens_cap
        out["max_tokens_cap"] = {"value": cap or None, "source": where if cap else "none"}
        return out

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system}, *messages]
        return messages


EMPTY = Profile()
# A remote engine applies its own chat template and parses its own tool calls: requests
# go to it as OpenAI messages with tools, and its calls come back in REMOTE_SYNTAX.
REMOTE = Profile()
REMOTE.chat_template = REMOTE_TOOLS  # type: ignore[assignment]


def profile_of(models: ModelManager, name: str | Target | None) -> Profile:
    """The profile of a model (its ModelRef, served or in the store), by its name or its
    request's ``Target``; a lookup only."""
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
        gguf = entry.sampling
    except Exception:  # noqa: BLE001 - an unreadable file fails later, with the usual error
        gguf_template, gguf = None, {}
    opts = models.options(name)
    own = models.per_model.get(entry.name)
    where = MODEL_OPT if own is not None and own.max_tokens is not None else "--max-tokens"
    s = models.settings
    thinking = ThinkDefaults.layered(
        s.reasoning_format, {"reasoning_budget": s.reasoning_budget}, ref.parameters or {},
        opts.thinking(),
    )  # fmt: skip
    return Profile(ref.system, ref.template, ref.parameters, gguf_template, gguf,
                   opts.request_defaults(), (opts.max_tokens or 0, where), thinking)  # fmt: skip
