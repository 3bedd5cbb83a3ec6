"""Residency (models/residency.py): each model's ModelState at each transition, eviction
under the count limit, load back-off and bounded queues, on a fake engine client (a
worker process cannot run in a unit test; the e2e tests load the real one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mullama.config import Settings
from mullama.engine.protocol import NullObserver
from mullama.errors import ServerError, Unavailable
from mullama.models.entry import ModelEntry
from mullama.models.options import ModelOptions
from mullama.models.registry import ModelRef
from mullama.models.residency import ModelState, Residency, ServedModel


class FakeClient:
    """The part of WorkerClient residency uses: start, close, alive, restarts."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.alive = False
        self.restarts = 0
        self.fail = fail
        self.observer = NullObserver()
        self.seen: list[ModelState] = []  # the model's state while its engine starts
        self.served: ServedModel | None = None

    async def ensure_started(self) -> None:
        if self.served is not None:
            self.seen.append(self.served.state)
        if self.fail is not None:
            raise self.fail
        self.alive = True

    async def close(self) -> None:
        if self.served is not None:
            self.seen.append(self.served.state)
        self.alive = False


def _served(residency: Residency, name: str, client: FakeClient, **kw: object) -> ServedModel:
    ref = ModelRef(name, Path(f"/models/{name}.gguf"), size=1, modified=0.0)
    served = ServedModel(
        entry=ModelEntry(ref),
        client=client,  # type: ignore[arg-type]
        opts=ModelOptions().with_defaults(residency.settings),
        estimate=100,
        **kw,  # type: ignore[arg-type]
    )
    client.served = served
    residency.models[name] = served
    return served


def _residency(**settings: object) -> Residency:
    return Residency(Settings(**settings), budget=1000, default_keep_alive=300.0)  # type: ignore[arg-type]


def test_a_model_goes_through_its_states_and_a_dead_engine_reads_unloaded():
    async def main() -> None:
        residency = _residency()
        client = FakeClient()
        served = _served(residency, "a", client)
        assert served.state is ModelState.UNLOADED
        await residency.load(served)
        assert served.state is ModelState.LOADED
        await residency.unload_now(served)
        assert client.seen == [ModelState.LOADING, ModelState.UNLOADING]
        assert served.state is ModelState.UNLOADED
        await residency.load(served)
        client.alive = False  # the worker died: its next request starts it again
        assert served.state is ModelState.UNLOADED

    asyncio.run(main())


def test_a_failed_load_is_failed_and_backs_off():
    async def main() -> None:
        residency = _residency()
        served = _served(residency, "a", FakeClient(fail=ServerError("no GPU here")))
        with pytest.raises(ServerError) as first:
            await residency.load(served)
        assert first.value.message == "model 'a' cannot be loaded: no GPU here"
        assert first.value.unserved  # a fallback may answer
        assert served.state is ModelState.FAILED
        with pytest.raises(ServerError) as again:
            await residency.load(served)  # within the back-off: not tried again
        assert again.value.message.endswith("(retrying in 1s)")
        assert served.failures == 1

    asyncio.run(main())


def test_the_least_recently_used_idle_model_is_evicted_for_another():
    async def main() -> None:
        residency = _residency(max_loaded_models=2)
        a, b, c = (_served(residency, n, FakeClient()) for n in "abc")
        for served in (a, b):
            await residency.load(served)
        async with residency.lease(b):  # b is used last, and busy meanwhile
            await residency.load(c)
            assert [s.state for s in (a, b, c)] == [
                ModelState.UNLOADED,
                ModelState.LOADED,
                ModelState.LOADED,
            ]

    asyncio.run(main())


def test_a_full_queue_refuses_at_once():
    async def main() -> None:
        residency = _residency(max_queue=0, parallel=1)
        served = _served(residency, "a", FakeClient())
        async with residency.lease(served):
            with pytest.raises(Unavailable) as busy:
                async with residency.lease(served):
                    pass
            assert "is busy: 1 requests in flight" in busy.value.message
            assert busy.value.unserved
        assert served.leases == 0

    asyncio.run(main())


def test_a_pinned_model_has_no_expiry_and_unpinning_brings_the_keep_alive_back():
    async def main() -> None:
        residency = _residency()
        served = _served(residency, "a", FakeClient())
        residency.pin(served, True)
        await residency.load(served)
        assert served.expires_at is None
        residency.pin(served, False)
        assert served.keep_alive == 300.0 and served.expires_at is not None
        await residency.close()
        assert served.state is ModelState.UNLOADED

    asyncio.run(main())
