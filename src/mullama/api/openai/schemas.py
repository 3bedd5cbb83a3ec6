"""OpenAI request bodies. Strict types (a string is not a number), no NaN/Infinity; a
field that would change the answer and that Mullama does not implement is refused by
name, other fields it does not act on are accepted and reported (api/fields.py)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, create_model, field_validator, model_validator

from ...engine import knobs, limits
from ...engine.protocol import SamplingParams
from ...errors import ClientError, InvalidParameter
from ..fields import Refusing, StrictBody
from ..profiles import Profile
from ..thinking import Think
from ..tools import ToolCallIn, ToolChoice, ToolSpec, history_message

_Strict = StrictBody


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url", "input_audio", "file"]


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict, Refusing):
    # Assistant messages that clients send back carry more (refusal, annotations, audio):
    # only the fields that would change the prompt are refused, even with --strict-fields.
    REFUSE_UNKNOWN = False
    WHERE = "messages[]."
    REFUSED = {"function_call": "the functions API is replaced by tools; send tool_calls"}

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # which call a tool message answers
    # An assistant's earlier thinking, as the answers carry it (both names are read).
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(
            not isinstance(p, TextPart) for p in self.content
        )

    def for_prompt(self, index: int, model: str | None, native: bool = False) -> dict[str, Any]:
        """The message as the chat template gets it (tool calls and results as a
        ``native`` tool-aware template wants them, or in the generic format's words);
        media is refused, the models being text-only."""
        if self.has_media():
            raise ClientError(
                f"model {model!r} takes text only; messages[{index}] has non-text content",
                param=f"messages[{index}].content",
            )
        message = history_message(
            self.role, self.text(), self.tool_calls, self.tool_call_id, self.name, index,
            native=native,
        )  # fmt: skip
        thought = self.reasoning_content or self.reasoning
        if self.role == "assistant" and thought:
            message["reasoning_content"] = thought  # api/chat.py names it for the template
        return message


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaSpec(_Strict):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


Stop = str | list[str] | None
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
Prompt = str | list[str] | list[int] | list[list[int]]


# Accepted by every OpenAI request and ignored: they change nothing for a local server
# (prompt caching is prefix reuse, always on).
_NO_OPS = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
     "prompt_cache_retention"}
)  # fmt: skip


# The sampling knobs as OpenAI requests name them (engine/knobs.py): OpenAI's own, its
# extensions (top_k, min_p, repeat_penalty and vLLM's repetition_penalty for it, ...).
_Knobs = create_model("_Knobs", __base__=_Strict, **knobs.fields("openai"))  # type: ignore[call-overload]


class _Sampling(_Knobs, Refusing):  # type: ignore[valid-type,misc]
    IGNORED = _NO_OPS
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    stop: Stop = None
    n: limits.Choices = 1
    ignore_eos: bool = False  # extension (as llama-server): generate until max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    keep_alive: str | int | float | None = None  # extension, as Ollama's keep_alive
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)
    # vLLM's: prefix reuse (and the response cache) only among requests with this salt
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: Stop) -> Stop:
        return limits.check_stop_field(value)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def to_sampling_params(self, profile: Profile, max_tokens: int | None) -> SamplingParams:
        """The request's values over the model's defaults (a custom model's parameters):
        each knob the request sets, ``max_tokens`` (chat's max_completion_tokens),
        ``stop`` (a string or a list) and ``ignore_eos``."""
        p = SamplingParams(**{**profile.defaults, **knobs.values(self, "openai")})
        p.ignore_eos = self.ignore_eos
        if max_tokens is not None:
            p.max_tokens = max_tokens
        if self.stop_list():
            p.stop = self.stop_list()
        p.json_schema = self._json_schema(p.json_schema)
        p.logprobs = self.top_logprobs_wanted()
        return p

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; else how many alternatives each token reports."""
        return None

    def _json_schema(self, default: dict[str, Any] | None) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return default
        if fmt.type == "json_object":
            return {}
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ClientError(
                "response_format.json_schema.schema is required for type json_schema",
                param="response_format",
            )
        return fmt.json_schema.schema_


class ChatCompletionRequest(_Sampling):
    REFUSED: ClassVar[dict[str, str]] = {
        "functions": "the functions API is replaced by tools",
        "function_call": "the functions API is replaced by tool_choice",
        "logit_bias": "token biases are not implemented",
        "audio": "audio output is not implemented (text models only)",
        "modalities": "only text output is implemented",
    }
    # The answer is one the client asked for, only not tuned as hinted.
    HINTS: ClassVar[dict[str, str]] = {
        "prediction": "predicted outputs (a speed-up) are not implemented",
        "web_search_options": "there is no web search in a local server",
        "verbosity": "verbosity is not implemented",
    }
    NEUTRAL = {"function_call": ("none", "auto"), "modalities": (["text"],)}  # fmt: skip

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: limits.TopLogprobs | None = None
    tools: list[ToolSpec] | None = Field(default=None, max_length=limits.MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Reasoning models (api/thinking.py): how much the model thinks ("none": not at all),
    # and more variables for the chat template (vLLM's and llama-server's field).
    reasoning_effort: Effort | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameter("top_logprobs needs logprobs: true", param="top_logprobs")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def think(self) -> Think:
        """What the request asks of the model's thinking: ``reasoning_effort`` "none" turns
        it off, another effort is passed on (the template's switch or a budget; "max", the
        SDK's newest, as "xhigh": the most there is here)."""
        effort = self.reasoning_effort
        asked_by = "reasoning_effort" if effort is not None else ""
        if effort == "none":
            return Think(on=False, asked_by=asked_by)
        return Think(effort="xhigh" if effort == "max" else effort, asked_by=asked_by)


class CompletionRequest(_Sampling):
    REFUSED: ClassVar[dict[str, str]] = {
        "suffix": "insertion (suffix) is not implemented",
        "best_of": "best_of is not implemented; use n",
        "logit_bias": "token biases are not implemented",
    }
    NEUTRAL = {"best_of": (1,)}

    # Text, several texts, token ids (checked against the model's vocabulary), or
    # several lists of token ids: lm-evaluation-harness sends the last.
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: limits.TopLogprobs | None = None
    # 0 only with echo: score the prompt, generate nothing (lm-evaluation-harness).
    max_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _zero_tokens_only_to_score(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise InvalidParameter(
                "max_tokens 0 generates nothing: it is only for scoring a prompt (with echo)",
                param="max_tokens",
            )
        return self

    @model_validator(mode="after")
    def _bounded_completions(self) -> CompletionRequest:
        n = len(self.prompts()) * self.n
        if n > limits.MAX_COMPLETIONS:
            raise InvalidParameter(
                f"at most {limits.MAX_COMPLETIONS} completions per request (prompts times n), "
                f"not {n}",
                param="prompt",
            )
        return self

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def to_sampling_params(self, profile: Profile, max_tokens: int | None) -> SamplingParams:
        p = super().to_sampling_params(profile, max_tokens)
        p.prompt_logprobs = self.echo and self.logprobs is not None
        return p

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a prompt of token ids must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text, or its token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(_Strict, Refusing):
    IGNORED = _NO_OPS
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    keep_alive: str | int | float | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return limits.check_inputs(value) if isinstance(value, list) else value
