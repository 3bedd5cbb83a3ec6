"""The settings schema's three groups, one class per section of the config file:
``server``, ``models`` and ``security`` (config.py joins them into ``Settings`` and makes
flags, environment variables, the config file and docs/CONFIG.md from them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import NoDecode


class ServerSettings(BaseModel):
    """The ``server`` section: listening, limits per request and connection, logs, tracing."""

    http_addr: str = Field("127.0.0.1", description="Address to listen on.")
    http_port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log line format on stderr: json (one object per line) or text; "
        "auto = text on a terminal, json otherwise.",
    )
    log_file: str | None = Field(
        None, description="Also append log lines to this file (the daemon's and workers')."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="Export OpenTelemetry traces over OTLP/HTTP to this URL "
        "(e.g. http://127.0.0.1:4318); needs the tracing extra.",
    )
    ui: bool = Field(
        True,
        description="Serve the web UI (chat playground and operations dashboard) at /ui/; "
        "a browser asking for / is sent there.",
    )
    max_body_size: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )
    strict_fields: bool = Field(
        False,
        description="Refuse (400, naming the field) request fields Mullama does not know "
        "and hints it does not act on (reasoning effort, context management), as well as "
        "tools it does not have, instead of accepting them and listing them in the "
        "Mullama-Ignored-Fields response header; and a max_tokens beyond the room the "
        "context leaves (400 context_length_exceeded, as OpenAI answers it) instead of "
        "clamping it. Fields that would change the answer are refused either way.",
    )
    config: Path | None = Field(
        None, description="Configuration file (YAML or TOML) with server/security/models sections."
    )
    socket: str | None = Field(
        None,
        description="Control socket, ipc:///path or unix:///path (mode 0600; the API over a "
        "unix socket, used by `mullama daemon stop|status`). Default: "
        "$XDG_RUNTIME_DIR/mullama/mullama.sock, else /run/mullama/mullama.sock when "
        "writable, else a per-user temp dir. `none` turns it off.",
    )
    request_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a request may run (a streamed one: until its response starts); "
        "then its generation is cancelled and the client gets an error (model management "
        "routes are exempt). A stream is bound by --stream-idle-timeout instead.",
    )
    stream_idle_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a streamed response may go without progress: nothing sent and "
        "no decode step of its model's engine (which computes its prompt, its tokens, or "
        "the answers it waits behind in the queue); then its generation is cancelled and "
        "the stream ends with an error event. A stream that still produces tokens is never "
        "cut by it.",
    )
    stream_timeout: float = Field(
        0.0,
        ge=0,
        description="Seconds a streamed response may run in all, progress or not; 0 = no cap.",
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM/SIGINT, seconds in-flight requests may take to finish before "
        "they are aborted.",
    )
    max_connections: int = Field(
        1000, ge=1, description="Most concurrent connections; more get 503."
    )
    max_header_size: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request line plus headers, in bytes (431 beyond it).",
    )
    max_header_count: int = Field(100, ge=8, description="Most request headers (431 beyond).")
    read_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send the request headers, and again the "
        "body; slower clients are disconnected.",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )


class ModelSettings(BaseModel):
    """The ``models`` section: which models, how each is loaded and run, the store."""

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model to serve: a name (smollm2:135m), a path to a .gguf file, or "
        "NAME=PATH. Repeatable; comma-separated in the environment. "
        "Default: the embedded smollm2:135m.",
    )
    model_opt: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per-model setting NAME:key=value (keys: context_size, parallel, threads, "
        "batch_size, gpu_layers, keep_alive, pinned, max_tokens, pooling; and request "
        "defaults, under a request's own values: temperature, top_k, top_p, min_p, "
        "repeat_penalty, repeat_last_n, seed, think (true/false: a reasoning model thinks "
        "or not), reasoning_budget, reasoning_format; lora=PATH[:scale], repeatable, as --lora). "
        "Repeatable; comma-separated in the environment.",
    )
    lora: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="A LoRA adapter GGUF applied to the default model, PATH[:scale] (scale "
        "1 when left out; 0 leaves the base model's output). Repeatable; comma-separated "
        "in the environment. A model with adapters shares no saved sessions or cached "
        "answers with its base.",
    )
    remote: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="A model served by a remote OpenAI-compatible engine (vLLM, SGLang, TGI, "
        "llama-server): NAME=URL[,URL...], each URL up to its /v1 base, several URLs being "
        "replicas. Every API serves it like a local model. Repeatable; separated by ';' in "
        "the environment. With only remote models, no local default model is loaded.",
    )
    remote_opt: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per-remote-model setting NAME:key=value (keys: upstream_model, "
        "api_key_file, api_key_env, timeout, connect_timeout, max_inflight, health_path, "
        "health_interval; see docs/SCALING.md). Repeatable; comma-separated in the "
        "environment.",
    )
    model_alias: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Another name for a model, NAME=MODEL (e.g. claude-sonnet-4-5=qwen2.5:7b), "
        "for clients whose model name is fixed (Claude Code, Codex CLI). Every API takes "
        "the alias; replies name it as the client asked. Repeatable; comma-separated in "
        "the environment.",
    )
    cache_dir: str = Field(
        "~/.mullama/models",
        description="Model store: pulled and created models (blobs + manifests).",
    )
    parallel: int = Field(
        4, ge=1, le=256, description="Sequences decoded together per model (slots)."
    )
    context_size: int = Field(
        4096,
        ge=64,
        description="Context length per sequence, in tokens; a model's KV cache holds "
        "context-size x parallel tokens.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads per model; 0 = one per physical core this process may run "
        "on, within its affinity mask (taskset, CPUAffinity=) and cgroup CPU quota "
        "(CPUQuota=, a Kubernetes CPU limit, docker --cpus), at least 1.",
    )
    cpu_share: Literal["host", "daemon", "off"] = Field(
        "host",
        description="How models busy at the same time split the threads: host = all Mullama "
        "engines on the same CPUs of this machine (other daemons included) split them "
        "evenly between those decoding; daemon = only this daemon's models; off = every "
        "model always runs --threads (oversubscribed cores make llama.cpp's spinning "
        "threads stall each other).",
    )
    batch_size: int = Field(
        2048,
        ge=16,
        description="Most tokens put into one llama_decode step (n_batch), as llama-server's "
        "-b. A step that ends a short prompt (at most 512 tokens, a conversation's next turn) "
        "holds at most 512, so that turn's first token does not wait behind a long prefill.",
    )
    kv_unified: bool = Field(
        False,
        description="One KV cache pool shared by all sequences of a model, instead of one "
        "context-size stream per sequence (same size in all). Per-sequence streams decode "
        "faster: attention reads only the sequence's own cells (~10% at 8 sequences).",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Flash attention (llama-server's -fa). auto: llama.cpp's choice, on where "
        "the device has it (the CPU does). On a CPU, off makes each generated token faster "
        "once contexts are long (2.2x at 2,048 tokens, 8 sequences; docs/PERFORMANCE.md), "
        "while on is up to a quarter faster below ~200 tokens and an eighth faster on prompts.",
    )
    pooling: Literal["none", "mean", "cls", "last", "rank"] | None = Field(
        None,
        description="How a model's embeddings pool its tokens (llama-server's --pooling): "
        "mean, cls, last, rank (a cross-encoder reranker: one score per query and "
        "document) or none (a vector per token: served by llama-server's /embedding, "
        "refused by the OpenAI and Ollama embeddings). Default: the GGUF's <arch>.pooling_type, else "
        "mean. Per model: --model-opt NAME:pooling=...",
    )
    burst_wait_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description="When a model's engine is idle and a request arrives, wait up to this "
        "long for as many requests as came together the last time it started from idle, "
        "so a burst shares its first decode step; a lone client never waits; 0 = off.",
    )
    gpu_layers: int = Field(
        0, ge=-1, description="Layers to offload to the GPU (-1 = all); needs a GPU build."
    )
    max_tokens: int = Field(
        0,
        ge=0,
        description="Most tokens one answer may generate, on every API (as llama-server's "
        "-n): a request's max_tokens above it is lowered to it (the "
        "Mullama-Max-Tokens-Clamped response header says so), and an answer whose request "
        "sets none stops there. 0 = no cap: an answer ends at its end-of-generation token "
        "or when its context is full.",
    )
    reasoning_format: Literal["none", "deepseek", "auto"] = Field(
        "auto",
        description="How a reasoning model's thinking is returned (llama-server's flag): auto "
        "or deepseek = apart from the answer (reasoning_content, thinking blocks, reasoning "
        "items) wherever the chat template's thinking format is recognised; none = not "
        "separated, the raw text in the answer. A model's own: --model-opt "
        "NAME:reasoning_format=...",
    )
    reasoning_budget: int = Field(
        -1,
        ge=-1,
        description="Most thinking tokens of a reasoning model's answer, after which the "
        "server closes the thinking itself and the model goes on to answer; -1 = no limit, "
        "0 = thinking off (llama-server's flag). A request's own budget or effort wins; a "
        "model's own: the custom model's reasoning_budget parameter, --model-opt "
        "NAME:reasoning_budget=N.",
    )
    load_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a model may take to load, and that a request waits for room "
        "to load its model, before it fails (503 with Retry-After).",
    )
    keep_alive: str = Field(
        "5m",
        description="How long a model loaded on demand stays loaded after its last request: "
        "seconds or a duration (30s, 5m, 1h); 0 unloads at once; negative keeps it forever. "
        "Models given with --model are pinned and stay loaded.",
    )
    max_loaded_models: int = Field(3, ge=1, description="Most models loaded at once.")
    memory_budget: str = Field(
        "80%",
        description="Memory the loaded models may use together (estimated from each GGUF: "
        "weights + KV cache + buffers): bytes, a size like 12GiB, or a percentage of RAM.",
    )
    max_queue: int = Field(
        512,
        ge=0,
        description="Requests per model that may wait for a free sequence; beyond it, 503.",
    )
    breaker_failures: int = Field(
        5,
        ge=1,
        description="Circuit breaker: this many failures of a model (worker crashes, load "
        "failures, engine errors, timeouts) within --breaker-window open its circuit; while "
        "open, its requests fail at once with 503 and Retry-After.",
    )
    breaker_window: float = Field(
        60.0, gt=0, description="Seconds in which --breaker-failures failures open a circuit."
    )
    breaker_cooldown: float = Field(
        30.0,
        gt=0,
        description="Seconds an open circuit stays open; then one probe request is let "
        "through, and its success closes the circuit.",
    )
    cache_ram: str = Field(
        "5%",
        description="Host RAM per model for the KV states of conversations that had to "
        "leave their slot (restored into any slot on their next turn instead of computed "
        "again): bytes, a size like 2GiB, or a percentage of RAM; 0 turns it off.",
    )
    preempt_after: float = Field(
        0.0,
        ge=0,
        description="When every slot is generating, a short request (at most 512 tokens to "
        "compute, e.g. a conversation's next turn with its history in the RAM cache) that "
        "has waited this many seconds for a slot takes the slot of the answer with the most "
        "tokens left (of those that have streamed 16 or more), which pauses (its KV saved to "
        "RAM) and resumes from the same state, with the same text, at the next free slot: "
        "first tokens come sooner, one answer pauses at a time, each at most once. 0 = never. "
        "Needs --cache-ram.",
    )
    session_disk: str = Field(
        "1GiB",
        description="Disk per model for conversations saved across restarts under "
        "<cache dir>/sessions/ (the hottest KV states, written at shutdown and unload, "
        "restored on demand by the next start of the same model and settings): bytes, a "
        "size like 2GiB, or a percentage of RAM; 0 turns it off. Needs --cache-ram.",
    )
    session_save_interval: float = Field(
        0.0,
        ge=0,
        description="Also save conversations every this many seconds while the model is "
        "idle (0: only at shutdown and unload).",
    )
    fallback: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="PRIMARY=BACKUP: when PRIMARY cannot take a request (its circuit is "
        "open, its queue is full, or it cannot be loaded), BACKUP answers it (repeatable; "
        "chains allowed, cycles refused; comma-separated in the environment).",
    )
    response_cache: bool = Field(
        False,
        description="Cache deterministic answers (temperature 0 or a fixed seed) in this "
        "process, keyed by the model's digest and the whole request.",
    )
    response_cache_size: str = Field(
        "256MiB",
        description="Bytes the in-process response cache may hold (least recently used "
        "entries go first): bytes, a size like 512MiB, or a percentage of RAM.",
    )
    cache_url: str | None = Field(
        None,
        description="redis://host:port/db: keep the response cache in Redis, shared by "
        "every daemon pointed at it (turns the cache on).",
    )
    cache_ttl: float = Field(
        3600.0, gt=0, description="Seconds a response cache entry is served after it is made."
    )


class SecuritySettings(BaseModel):
    """The ``security`` section: API keys, rate limits, CORS, TLS."""

    api_key: SecretStr | None = Field(
        None,
        description="One API key with admin scope (environment or config file only; "
        "or read from the file named by MULLAMA_API_KEY__FILE).",
    )
    api_key_file: Path | None = Field(
        None,
        description="YAML/JSON file listing API keys: name, key or sha256, scope "
        "(inference|admin), optional requests_per_minute/tokens_per_minute and tenant (keys "
        "of one tenant share its caches).",
    )
    metrics_public: bool = Field(False, description="Serve /metrics without an API key.")
    allow_remote_admin: bool = Field(
        False,
        description="Without API keys on a non-loopback address, still let non-local "
        "callers use model-management routes.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (besides localhost and IP addresses) that requests may "
        "address the daemon by on a loopback bind, and by which a caller on this machine "
        "keeps local admin on an exposed bind without keys (repeatable; comma-separated in "
        "the environment). Guards against DNS rebinding.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (repeatable; comma-separated in the "
        "environment; `*` for any). Default: none.",
    )
    rate_limit_requests: int = Field(
        0,
        ge=0,
        description="Requests per minute per API key (per client address without keys); "
        "0 = unlimited. A key's own limit in --api-key-file wins.",
    )
    rate_limit_tokens: int = Field(
        0,
        ge=0,
        description="Generated tokens per minute per API key (per client address without "
        "keys); 0 = unlimited.",
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate-limit counters live: memory:// (this process) or "
        "redis://host:port/db (shared by several instances).",
    )
    rate_limit_fail: Literal["open", "closed"] = Field(
        "open",
        description="When the rate-limit storage (Redis) cannot be reached: open lets "
        "requests through unlimited (logged), closed refuses limited keys' requests with "
        "503 and Retry-After. Either way the storage is used again as soon as it answers.",
    )
    share_cache_across_keys: bool = Field(
        False,
        description="With several API keys, let every key reuse the prompts (KV) and "
        "cached responses of every other. By default each key, or each tenant named in "
        "--api-key-file, has its own: reused-token counts and cache hits would otherwise "
        "tell one caller what another sent.",
    )
    tls_cert: Path | None = Field(None, description="TLS certificate (PEM) to serve HTTPS.")
    tls_key: Path | None = Field(None, description="TLS private key (PEM) for --tls-cert.")
