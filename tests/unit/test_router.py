"""The router (models/router.py) and the response cache's engine wrapper
(models/cache.py, CachedEngine): a name resolved once into a Target; a hit that never
reaches the engine, a miss that does and is stored. The engine is a fake (a worker
process cannot run in a unit test; tests/e2e/test_response_cache.py runs the real one)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from mullama.config import Settings
from mullama.engine.protocol import Chunk, GenerateRequest, NullObserver, SamplingParams
from mullama.errors import ClientError, ModelNotFound
from mullama.models.breaker import CircuitBreaker
from mullama.models.cache import CachedEngine, ResponseCache, cache_key
from mullama.models.entry import ModelEntry
from mullama.models.registry import ModelRef
from mullama.models.remote import RemoteModel, parse_remotes
from mullama.models.router import Router


class _Served:
    def __init__(self, name: str) -> None:
        self.entry = ModelEntry(ModelRef(name, Path(f"/models/{name}.gguf"), size=1, modified=0))


def _router(tmp_path: Path) -> Router:
    ((name, (urls, opts)),) = parse_remotes(["big=http://engine:8000/v1"], []).items()
    remote = RemoteModel(
        name, urls, opts, max_queue=1, queue_timeout=1, breaker=CircuitBreaker(name)
    )
    return Router(
        aliases={"gpt-5": "big", "claude": "small"},
        fallbacks={"big": "small"},
        remotes={"big": remote},
        served={"small": _Served("small")},  # type: ignore[dict-item]
        cache_dir=str(tmp_path),
    )


def test_a_name_is_routed_once_to_its_model_its_engine_and_its_fallback(tmp_path):
    router = _router(tmp_path)
    remote = router.route("gpt-5")
    assert (remote.asked, remote.name, remote.entry, remote.fallback) == (
        "gpt-5",
        "big",
        None,
        "small",
    )
    assert remote.remote is router.remotes["big"]
    local = router.route("claude")
    assert (local.name, local.remote, local.fallback) == ("small", None, None)
    assert local.entry is router.served["small"].entry  # the served model's, not a new one
    with pytest.raises(ClientError, match="served by a remote engine: pinning is not available"):
        remote.refuse_remote("pinning")
    local.refuse_remote("pinning")


def test_no_name_and_unknown_names_are_refused_with_a_hint(tmp_path):
    router = _router(tmp_path)
    with pytest.raises(ClientError, match="you must provide a model parameter"):
        router.route(None)
    with pytest.raises(ModelNotFound, match="The model 'smal' does not exist") as missing:
        router.route("smal")
    assert "small" in missing.value.message
    with pytest.raises(ModelNotFound):
        router.route("/etc/passwd.gguf")  # file paths only from --model


class FakeEngine:
    name = "m"
    info = None

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request, progress=None):
        self.calls += 1
        yield Chunk(prompt_tokens=3)
        yield Chunk("hi", 1)
        yield Chunk("!", 2, 3, "stop")


def test_the_cache_wrapper_answers_a_hit_without_the_engine():
    async def main() -> None:
        cache = ResponseCache.from_settings(Settings(response_cache=True))
        assert cache is not None
        engine = FakeEngine()
        acquired = []

        @contextlib.asynccontextmanager
        async def acquire():
            acquired.append(1)  # a lease on a local model: a hit never takes one
            yield engine

        request = GenerateRequest("r1", prompt="say hi", params=SamplingParams(temperature=0))
        key = cache_key("sha256:abc", request)

        async def answer() -> list[str]:
            wrapped = CachedEngine(cache, "m", key, acquire, NullObserver())
            return [c.text async for c in wrapped.generate(request)]

        assert await answer() == ["", "hi", "!"]
        assert await answer() == ["", "hi", "!"]  # the stored stream
        assert (engine.calls, len(acquired)) == (1, 1)
        assert (cache.stats.misses["m"], cache.stats.hits["m"]) == (1, 1)
        await cache.track("m", "sha256:abc")
        await cache.track("m", "sha256:new")  # the model's file was replaced
        assert cache.stats.entries == 0

    asyncio.run(main())
