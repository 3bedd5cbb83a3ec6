"""Ollama request bodies: types checked strictly; on generate, chat and embed a field or
option Mullama does not implement is refused by name (api/fields.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...engine import knobs, limits
from ...engine.protocol import SamplingParams
from ...errors import InvalidParameter
from ...models.custom import ModelParameters
from ..fields import Refusing
from ..profiles import Profile, from_ollama
from ..thinking import Think
from ..tools import ToolChoice, ToolSpec

_CONFIG = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = _CONFIG


class Options(Refusing, ModelParameters):
    """A request's options: a custom model's parameters (same names and ranges), plus
    ``ignore_eos``; strict types. Options about hardware and memory are accepted and
    ignored (Mullama decides those per model, at load); sampling options it does not
    implement are refused, where Ollama would quietly use them."""

    model_config = _CONFIG
    WHERE = "options."
    IGNORED = frozenset(
        {"num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap", "use_mlock", "numa",
         "low_vram", "f16_kv", "vocab_only", "logits_all", "num_keep", "penalize_newline",
         "mirostat_tau", "mirostat_eta"}
    )  # fmt: skip
    REFUSED = knobs.refused("ollama")
    NEUTRAL = knobs.neutral("ollama")

    stop: list[str] | str | None = None
    ignore_eos: bool | None = None  # extension (as llama-server): generate to num_predict

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | str | None) -> list[str] | str | None:
        return limits.check_stop_field(value)

    def to_sampling_params(self, fmt: Format, profile: Profile) -> SamplingParams:
        """Ollama's defaults, then the model's (a custom model's parameters), then the
        request's options; ``format`` constrains the output to JSON."""
        p = SamplingParams(**{**OLLAMA_DEFAULTS, **profile.defaults, **from_ollama(vars(self))})
        if fmt == "json":
            p.json_schema = {}
        elif isinstance(fmt, dict):
            p.json_schema = fmt
        return p


# Ollama's own defaults of its knobs (some differ from SamplingParams', the OpenAI side's).
OLLAMA_DEFAULTS: dict[str, Any] = knobs.ollama_defaults()

Format = Literal["json", ""] | dict[str, Any] | None
KeepAlive = str | int | float | None


class _Generation(BaseModel):
    """What /api/generate and /api/chat share about how to generate: ``format``,
    ``options``, (Ollama 0.12) ``logprobs`` / ``top_logprobs`` and ``think``."""

    format: Format = None
    options: Options | None = None
    logprobs: bool = False
    top_logprobs: limits.TopLogprobs | None = None
    # The model's thinking: on or off, or on with an effort.
    think: bool | Literal["low", "medium", "high"] | None = None
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)

    def thinking(self) -> Think:
        """What ``think`` asks of the model's thinking (None: the model's default)."""
        if isinstance(self.think, str):
            return Think(True, self.think)
        return Think(self.think)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> Any:
        if self.top_logprobs and not self.logprobs:
            raise InvalidParameter("top_logprobs needs logprobs: true", param="top_logprobs")
        return self

    def sampling_params(self, profile: Profile) -> SamplingParams:
        p = (self.options or Options()).to_sampling_params(self.format, profile)
        p.logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return p


class GenerateBody(_Strict, _Generation, Refusing):
    REFUSED = {
        "suffix": "insertion (suffix) is not implemented",
        # Answers carry no context to send back; a conversation goes to /api/chat.
        "context": "continuing from an earlier answer's context is not implemented; "
        "send the conversation to /api/chat",
    }
    model: str
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    stream: bool = True
    images: list[str] | None = None
    keep_alive: KeepAlive = None


class OllamaFunctionCall(BaseModel):
    model_config = _CONFIG
    name: str
    # An object, as Ollama sends it; a JSON string is taken too (Ollama itself refuses it).
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = _CONFIG
    id: str | None = None
    function: OllamaFunctionCall


class Message(_Strict, Refusing):
    REFUSE_UNKNOWN = False
    WHERE = "messages[]."
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None  # an assistant turn's thinking, sent back
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None  # which tool a tool message is the result of


class ChatBody(_Strict, _Generation, Refusing):
    tools: list[ToolSpec] | None = Field(default=None, max_length=limits.MAX_TOOLS)
    tool_choice: ToolChoice | None = None  # extension: OpenAI's meaning
    model: str
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    keep_alive: KeepAlive = None


class EmbedBody(_Strict, Refusing):
    model: str
    input: str | list[str]
    truncate: bool = True  # Ollama's default: a long input is cut (and named in a header)
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        return limits.check_inputs(value) if isinstance(value, list) else value


class EmbeddingsBody(_Strict, Refusing):
    model: str
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelBody(_Strict):
    model: str | None = None
    name: str | None = None  # older clients send "name"

    def target(self) -> str:
        return self.model or self.name or ""


class PullBody(ModelBody):
    insecure: bool = False
    stream: bool = True


class CopyBody(_Strict):
    source: str
    destination: str


class CreateBody(ModelBody):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    from_: str | None = Field(default=None, alias="from")
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] | None = None
    license: str | list[str] | None = None
    stream: bool = True
    quantize: str | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    messages: list[dict[str, Any]] | None = None
