"""The narrow engine interface: what the model manager asks of an engine, wherever it runs.

A local model's engine is a worker process (``engine/client.py``, ``WorkerClient``); a
remote model's is an OpenAI-compatible server (``models/remote.py``, ``RemoteModel``).
Both speak this interface, so the manager, the response cache and the API above them
treat every model alike. An engine that cannot do something (a remote engine has no
tokenizer that Mullama can reach) refuses it by name with a ``ClientError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .protocol import (
    ChunkStream,
    Embeddings,
    GenerateRequest,
    Ranked,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
)


class EngineClient(Protocol):
    """One model's engine. ``generate`` yields a first chunk once the engine took the
    request (it carries the prompt count when known), then the deltas, the last one with
    ``finish_reason`` and the counts; ``progress`` is called at each step of the engine."""

    name: str
    # The facts of a loaded local model's tokenizer and context; None when not known
    # (not loaded yet, or a remote engine, whose facts are its own).
    info: WorkerInfo | None

    def generate(
        self, request: GenerateRequest, progress: Callable[[], None] | None = None
    ) -> ChunkStream: ...

    async def embed(
        self, inputs: list[str], truncate: bool = False, norm: int = 2, per_token: bool = False
    ) -> Embeddings:
        """Each input's vector, normalised by ``norm`` (llama-server's embd_normalize; 2:
        unit length); ``per_token``: a model with pooling none answers a vector per token."""
        ...

    async def rank(self, query: str, documents: list[str]) -> Ranked:
        """A reranker's score of each (query, document) pair (a model with rank pooling;
        any other refuses it)."""
        ...

    async def tokenize(self, request: TokenizeRequest) -> Tokens: ...

    async def detokenize(self, tokens: list[int]) -> str: ...
