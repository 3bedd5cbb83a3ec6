"""Per-request usage that the services fill and middleware reads (e.g. token rate limits).

The middleware puts a :class:`Usage` in :data:`current_usage` before calling the app;
every engine generation wrapped with :func:`metered` adds its completion tokens to it as
they are produced. Without a Usage set, :func:`metered` returns the generation as is.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from ..engine.protocol import ChunkStream


@dataclass
class Usage:
    completion_tokens: int = 0


current_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar(
    "mullama_usage", default=None
)


def metered(gen: ChunkStream) -> ChunkStream:
    usage = current_usage.get()
    if usage is None:
        return gen
    return _metered(gen, usage)


async def _metered(gen: ChunkStream, usage: Usage) -> ChunkStream:
    seen = 0
    try:
        async for chunk in gen:
            if chunk.completion_tokens > seen:
                usage.completion_tokens += chunk.completion_tokens - seen
                seen = chunk.completion_tokens
            yield chunk
    finally:
        await gen.aclose()
