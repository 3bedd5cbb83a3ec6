"""The success bodies of the routes, as the OpenAPI document describes them (api/openapi.py).

The services build their answers as plain dicts (one pass, no model per token); these
models say what those dicts hold, for /openapi.json. tests/e2e/test_fuzz.py checks every
answer the fuzzer gets against them, so they stay what the services write. Fields that
are always there have no default (required); the others do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, RootModel

Json = dict[str, Any]

# ---- health, metrics, daemon control ---------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "degraded", "starting", "draining", "stopped"]
    # With API keys set, a caller without a key gets the status only (api/disclosure.py).
    open_circuits: list[str] | None = None
    dependencies: dict[str, Json] | None = None
    models_loaded: int | None = None
    uptime_secs: float | None = None
    version: str | None = None


class Live(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    status: str  # ready, degraded, or the phase (starting, draining, stopped)
    failed_models: dict[str, str] | None = None


class SystemStatus(BaseModel):
    version: str
    status: str
    uptime_secs: float
    models_loaded: list[Json]
    stats: Json
    memory: Json
    models: list[Json]
    latency: Json
    errors: dict[str, int]
    prompt_tokens: dict[str, int]
    response_cache: dict[str, int] | None
    history: Json
    pid: int
    cpu: Json
    remote_models: list[Json]


class CompletionMetrics(BaseModel):
    object: Literal["completion_metrics"]
    uptime_secs: float
    models: dict[str, Json]


class DaemonStatus(BaseModel):
    status: str
    ready: bool
    pid: int
    version: str
    uptime_secs: float
    models: list[str]
    in_flight: int
    http: str
    socket: str | None


class Stopping(BaseModel):
    status: Literal["stopping"]
    pid: int
    force: bool


# ---- OpenAI ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]
    # reasoning_tokens: those of the completion's that were thinking (a reply that thought)
    completion_tokens_details: dict[str, int] | None = None


class CalledFunctionOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunctionOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    # The model's thinking (a reply that thought), under both names clients read.
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Json | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Json | None
    finish_reason: str | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int
    delta: Json  # role, content, reasoning_content and reasoning, tool_calls: what it adds
    logprobs: Json | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One event of a chat stream; with ``stream_options.include_usage``, every chunk
    has ``usage`` (null) and a last one, without choices, has the counts."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextCompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: base64 float32s (encoding_format base64)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class AdapterCard(BaseModel):
    """A LoRA adapter a model is served with (--lora): its file's name and scale."""

    name: str
    scale: float


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    remote: bool | None = None  # served by a remote engine (--remote)
    adapters: list[AdapterCard] | None = None  # a local model's LoRA adapters (--lora)


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ResponseObject(BaseModel):
    """The Responses API's response (its output items as OpenAI writes them)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: Json | None
    incomplete_details: Json | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[Json]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: Json | None  # the request's {effort, summary}
    store: bool
    temperature: float | None
    text: Json
    tool_choice: str | Json
    tools: list[Json]
    top_p: float | None
    truncation: str
    usage: Json | None
    metadata: Json


class ResponseEvent(BaseModel):
    """One event of a Responses stream (response.created, ...output_text.delta, ...)."""

    type: str
    sequence_number: int


class ResponseStreamError(BaseModel):
    """What ends a Responses stream cut short (a drain, a timeout)."""

    type: Literal["error"]
    code: str
    message: str
    param: str | None


class ResponseStreamItem(RootModel[ResponseEvent | ResponseStreamError]):
    pass


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


# ---- Anthropic ---------------------------------------------------------------------------


class AnthropicMessage(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Json]  # thinking, text and tool_use blocks
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None
    usage: dict[str, int]


class AnthropicEvent(BaseModel):
    """One event of a Messages stream; its data carries its type too."""

    type: Literal[
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop", "error",
    ]  # fmt: skip


class TokenCount(BaseModel):
    input_tokens: int


# ---- Ollama ------------------------------------------------------------------------------


class Version(BaseModel):
    version: str


class _Timings(BaseModel):
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Json] | None = None


class GenerateAnswer(_Timings):
    model: str
    created_at: str
    response: str
    thinking: str | None = None  # the model's thinking (think on, a reply that thought)


class OllamaCall(BaseModel):
    function: Json


class OllamaMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str
    thinking: str | None = None  # the model's thinking (a reply that thought)
    tool_calls: list[OllamaCall] | None = None


class ChatAnswer(_Timings):
    model: str
    created_at: str
    message: OllamaMessageOut


class Embeds(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OneEmbedding(BaseModel):
    embedding: list[float]


class ModelDetails(BaseModel):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class Tag(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    remote_model: str | None = None  # a remote engine's model id (--remote)


class Tags(BaseModel):
    models: list[Tag]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    size_vram: int
    memory_estimate: int
    expires_at: str | None
    pinned: bool
    loaded: bool
    pid: int | None
    context_length: int
    parallel: int
    active_requests: int
    active_sequences: int
    queued_sequences: int
    details: ModelDetails
    digest: str | None = None  # /api/ps
    adapters: list[AdapterCard] | None = None  # LoRA adapters (--lora)
    path: str | None = None  # /api/models
    remote_model: str | None = None  # a remote engine's (--remote), with its replicas
    replicas: list[Json] | None = None


class RunningModels(BaseModel):
    models: list[RunningModel]


class ShowAnswer(BaseModel):
    license: str | list[str]
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: Json
    capabilities: list[str]
    modified_at: str
    system: str | None = None
    # Mullama's: the defaults a request gets for what it does not set, on the OpenAI-shaped
    # APIs and on Ollama's, each {"value", "source"} (docs/API.md, Long answers).
    request_defaults: Json | None = None


class ModelAction(BaseModel):
    """/api/models/NAME/load, unload, pin and unpin."""

    model: str
    status: Literal["loaded", "unloaded", "pinned", "unpinned"]
    load_seconds: float | None = None
    was_loaded: bool | None = None
    pinned: bool | None = None


class Progress(BaseModel):
    """A pull's or a create's status (the last one, without ``stream``)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


# ---- tokenizer and llama-server ----------------------------------------------------------


class Tokens(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class Detokenized(BaseModel):
    prompt: str


class TokenizerInfoAnswer(BaseModel):
    model: str
    tokenizer_class: str
    vocab_size: int
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
    model_max_length: int
    chat_template: str | None


class LlamaCompletion(BaseModel):
    index: int
    content: str
    tokens: list[int]
    id_slot: int
    stop: bool
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    generation_settings: Json
    has_new_line: bool
    truncated: bool
    stop_type: Literal["eos", "limit", "word"]
    stopping_word: str
    tokens_cached: int
    timings: dict[str, float]


class LlamaEmbedding(BaseModel):
    index: int
    embedding: list[list[float]]  # [the pooled vector], or a vector per token (pooling none)


class LlamaEmbeddings(RootModel[list[LlamaEmbedding]]):
    """llama-server's /embedding answer: one item per input, in their order."""


class LlamaChunk(BaseModel):
    """One event of a /completion stream: a piece, or the last one (``stop: true``, with
    the fields of the whole answer)."""

    index: int
    content: str
    tokens: list[int]
    stop: bool
    id_slot: int
    tokens_predicted: int
    tokens_evaluated: int


class Props(BaseModel):
    default_generation_settings: Json
    total_slots: int
    model_alias: str
    model_path: str
    chat_template: str | None
    bos_token: str
    eos_token: str
    modalities: dict[str, bool]
    build_info: str
