"""The real worker process reading frames it does not understand: each is a clear error in
the worker's log, the request it names fails at once, and the worker keeps serving."""

from __future__ import annotations

import asyncio

from mullama.engine.client import WorkerClient, _Stream
from mullama.engine.protocol import GenerateRequest, SamplingParams, WorkerSpec
from mullama.errors import MullamaError
from mullama.models.registry import embedded_model_path


def test_malformed_frames_are_logged_refused_and_survived(tmp_path):
    log_file = tmp_path / "worker.log"
    spec = WorkerSpec(
        name="smollm2:135m",
        path=str(embedded_model_path()),
        parallel=1,
        context_size=512,
        log_file=str(log_file),
        log_format="text",
    )

    async def run() -> tuple[list[MullamaError], str]:
        client = WorkerClient(spec)
        await client.ensure_started()
        try:
            failures = []
            bad = [
                # A sampling knob this version does not know (a typo, another version).
                {"op": "generate", "id": "bad#1", "params": {"temprature": 0.5}},
                # An op that does not exist, naming a sequence.
                {"op": "pause", "id": "bad#2"},
            ]
            for frame in bad:
                stream = client._streams[frame["id"]] = _Stream()
                client._send(frame)
                failures.append(await asyncio.wait_for(stream.queue.get(), 60))
            request = GenerateRequest(
                "ok", SamplingParams(max_tokens=3, temperature=0.0), prompt="Hello"
            )
            chunks = [c async for c in client.generate(request)]
            return failures, chunks[-1].finish_reason or ""
        finally:
            await client.close()

    failures, finish = asyncio.run(run())
    assert [type(f).__name__ for f in failures] == ["ServerError", "ServerError"]
    assert "temprature" in failures[0].message and "'pause'" in failures[1].message
    assert finish == "length"  # the same worker went on serving
    log = log_file.read_text()
    assert "unknown SamplingParams fields: temprature" in log
    assert "malformed frame from the daemon" in log and "pause" in log
