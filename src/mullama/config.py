"""One settings schema for flags, environment variables (MULLAMA_*) and defaults.

Each field becomes a ``--kebab-case`` flag of ``mullama serve`` and an ``MULLAMA_UPPER``
environment variable. Precedence: flags > environment > defaults. ``docs/CONFIG.md`` is
generated from this schema (``mullama config docs``).
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MULLAMA_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model to serve: a name (smollm2:135m), a path to a .gguf file, or "
        "NAME=PATH. Repeatable; comma-separated in the environment. "
        "Default: the embedded smollm2:135m.",
    )
    cache_dir: str = Field(
        "~/.mullama/models",
        description="Model store: pulled and created models (blobs + manifests).",
    )
    http_addr: str = Field("127.0.0.1", description="Address to listen on.")
    http_port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    parallel: int = Field(
        4, ge=1, le=256, description="Sequences decoded together per model (slots)."
    )
    context_size: int = Field(
        4096,
        ge=64,
        description="Context length per sequence, in tokens; the shared KV cache holds "
        "context-size x parallel tokens.",
    )
    threads: int = Field(0, ge=0, description="CPU threads per model; 0 = all cores.")
    batch_size: int = Field(
        512, ge=16, description="Most tokens put into one llama_decode step (n_batch)."
    )
    gpu_layers: int = Field(
        0, ge=-1, description="Layers to offload to the GPU (-1 = all); needs a GPU build."
    )
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
    max_body_size: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
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
    model_opt: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per-model setting NAME:key=value (keys: context_size, parallel, threads, "
        "batch_size, gpu_layers, keep_alive, pinned). Repeatable; comma-separated in the "
        "environment.",
    )

    @field_validator("model", "model_opt", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per settings field; unset flags stay absent (argparse.SUPPRESS)."""
    for name, info in Settings.model_fields.items():
        ann = info.annotation
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": f"{info.description} [env {env_name(name)}]",
        }
        if get_origin(ann) is list:
            kwargs["action"] = "append"
        elif get_origin(ann) is Literal:
            kwargs["choices"] = list(get_args(ann))
        elif ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif ann in (int, float):
            kwargs["type"] = ann
        parser.add_argument(flag_name(name), **kwargs)


def load_settings(cli_values: dict[str, Any] | None = None) -> Settings:
    """Flags (already parsed) override the environment, which overrides defaults."""
    return Settings(**(cli_values or {}))


def settings_markdown() -> str:
    """The reference table of every flag and environment variable."""
    lines = [
        "| flag | environment | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        lines.append(
            f"| `{flag_name(name)}` | `{env_name(name)}` | `{default!r}` | {info.description} |"
        )
    return "\n".join(lines) + "\n"
