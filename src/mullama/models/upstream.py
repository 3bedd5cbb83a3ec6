"""Helpers of the remote engines' calls (models/remote.py): reading an upstream stream
ahead of its consumer, and the message of an upstream's error body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

_END = object()


async def ahead(source: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``source``'s items, read by a task of their own as soon as they arrive: an engine
    that waits for its reader (llama-server does) never waits for the client's side of the
    daemon. Closing this stops the task (and ``source``)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            queue.put_nowait(exc)
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def error_message(raw: bytes) -> str:
    """The message of an OpenAI-, vLLM- or llama-server-shaped error body."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")[:300]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        err = err.get("message") or err.get("detail") or ""
    return str(err)[:1000]
