"""Ollama's model management on the store: /api/pull, /api/delete, /api/copy, /api/create.

Store operations block (file I/O, downloads), so they run in threads; a pull's progress
crosses back to the event loop through a queue and is streamed as NDJSON.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ...errors import ClientError, MullamaError, ServerError
from ...models.aliases import check_name
from ...models.custom import create_model, parse_definition
from ...models.pull import Puller
from ...models.store import ModelStore
from ...wire.errors import ndjson_error
from ...wire.framing import ndjson_line
from .schemas import CopyBody, CreateBody, ModelBody, PullBody

_DONE = object()


class ModelAdmin:
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    # ---- pull --------------------------------------------------------------------

    async def pull(self, body: PullBody) -> dict[str, Any] | AsyncIterator[bytes]:
        name = check_name(body.target())
        cancel = threading.Event()
        events = _run_in_thread(
            lambda progress: Puller(self.store, cancel=cancel).pull(name, progress), cancel
        )
        first = await _next(events)  # errors before the first event become HTTP errors
        if not body.stream:
            last = first
            while (item := await _next(events)) is not _DONE:
                last = item
            return last if last is not _DONE else {"status": "success"}
        return _stream(first, events)

    # ---- delete / copy / create --------------------------------------------------

    async def delete(self, body: ModelBody) -> None:
        name = check_name(body.target())
        await asyncio.to_thread(self.store.remove, name)

    async def copy(self, body: CopyBody) -> None:
        src, dst = check_name(body.source), check_name(body.destination)
        await asyncio.to_thread(self.store.copy, src, dst)

    async def create(self, body: CreateBody) -> dict[str, Any] | AsyncIterator[bytes]:
        name = check_name(body.target())
        unsupported = [k for k in ("files", "quantize", "messages") if getattr(body, k)]
        if unsupported:
            raise ClientError(
                f"create: {', '.join(unsupported)} not supported; build on a model in the "
                "store with 'from' (plus system, template, parameters, adapters)"
            )
        if not body.from_:
            raise ClientError("create: 'from' (the base model) is required", param="from")
        definition = parse_definition(
            {
                "from": body.from_,
                "system": body.system,
                "template": body.template,
                "parameters": body.parameters or {},
                # Ollama's {file name: blob digest}: blobs already in the store.
                "adapters": list((body.adapters or {}).values()),
            },
            where="create",
        )
        await asyncio.to_thread(create_model, self.store, name, definition, allow_paths=False)
        statuses = [f"using base model {body.from_}", "writing manifest", "success"]
        if not body.stream:
            return {"status": "success"}

        async def gen() -> AsyncIterator[bytes]:
            for status in statuses:
                yield ndjson_line({"status": status})

        return gen()


async def _stream(first: Any, events: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
    item = first
    try:
        while item is not _DONE:
            if isinstance(item, MullamaError):
                yield ndjson_error(item)
                return
            yield ndjson_line(item)
            item = await _next(events, raise_errors=False)
    finally:
        cancel = getattr(events, "cancel", None)
        if item is not _DONE and cancel is not None:
            cancel.set()  # the client went away: stop downloading (the partial file stays)


async def _next(events: asyncio.Queue[Any], raise_errors: bool = True) -> Any:
    item = await events.get()
    if isinstance(item, MullamaError) and raise_errors:
        raise item
    return item


def _run_in_thread(
    work: Callable[[Callable[[dict[str, Any]], None]], Any], cancel: threading.Event
) -> asyncio.Queue[Any]:
    """Run ``work(progress)`` in a thread; its events, then an error or _DONE, land in the
    returned queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    queue.cancel = cancel  # type: ignore[attr-defined]

    def put(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            work(put)
        except MullamaError as exc:
            put(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the client, not lost
            put(ServerError(f"pull failed: {type(exc).__name__}: {exc}"))
        else:
            put(_DONE)

    threading.Thread(target=run, name="mullama-pull", daemon=True).start()
    return queue
