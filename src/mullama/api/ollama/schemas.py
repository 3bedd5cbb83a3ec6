"""Ollama request bodies (types checked strictly, unknown fields ignored)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_CONFIG = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = _CONFIG


class Options(_Strict):
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    num_predict: int | None = Field(default=None, ge=-2)
    num_ctx: int | None = Field(default=None, ge=1)
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    repeat_last_n: int | None = Field(default=None, ge=-1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    ignore_eos: bool | None = None  # extension (as llama-server): generate to num_predict


Format = Literal["json", ""] | dict[str, Any] | None
KeepAlive = str | int | float | None


class GenerateBody(_Strict):
    model: str
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    stream: bool = True
    format: Format = None
    options: Options | None = None
    images: list[str] | None = None
    keep_alive: KeepAlive = None
    context: list[int] | None = None


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class ChatBody(_Strict):
    model: str
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbedBody(_Strict):
    model: str
    input: str | list[str]
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsBody(_Strict):
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
