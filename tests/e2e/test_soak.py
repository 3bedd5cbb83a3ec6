"""A bounded soak: three minutes of mixed traffic (both APIs, streamed and not,
embeddings, cancellations, bad requests) against a real daemon, sampling memory, file
descriptors, threads and slots every 3 s (scripts/soak.py; its long run is the same
script with --duration). No unexpected error, no growth after the warm-up beyond the
script's bounds, no slot left busy, nothing unexpected in the daemon's error log."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import Daemon

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import soak  # noqa: E402


def test_three_minutes_of_mixed_traffic_hold_steady():
    with Daemon("--parallel", "4", "--context-size", "1024").wait_healthy() as d:
        result = soak.run(d.url, d.proc.pid, duration=180, clients=6, seed=7)
        log = d.log()
    assert result["requests"] > 200
    assert set(result["by_kind"]) >= {"chat", "chat_stream", "embed", "ollama_chat", "cancel",
                                      "bad_json", "bad_model"}  # fmt: skip
    assert result["unexpected_errors"] == []
    assert result["growth"] == [], result["growth"]
    assert result["slots_busy_at_end"] == 0
    errors = [ln for ln in log.splitlines() if '"level":"error"' in ln]
    # Client mistakes are not logged as errors; a 5xx would be ("request failed").
    assert errors == [], errors[:5]
    assert "Traceback" not in log
