"""Codex CLI and Claude Code, installed from npm into .agents/ (scripts/install-agents.sh),
and the exact way they are pointed at a local server: the setup of docs/CLIENTS.md.

Each run gets its own home folder (config, sessions, caches) and an environment built from
nothing but PATH and that home, so no key or setting of the machine leaks in, and every
update check, telemetry and analytics channel of the agents is turned off: their only
traffic is to the URL given (127.0.0.1)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENTS = Path(os.environ.get("MULLAMA_AGENTS_DIR", ROOT / ".agents"))
BIN = AGENTS / "node_modules" / ".bin"
CODEX = BIN / "codex"
CLAUDE = BIN / "claude"
KEY = "sk-mullama-test-dummy"

# Codex 0.171: a custom provider speaking the Responses API. Analytics, feedback uploads
# and the update check are off; OpenTelemetry export is off by default.
CODEX_CONFIG = """\
model_provider = "mullama"
{model_lines}check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[model_providers.mullama]
name = "Mullama"
base_url = "{url}/v1"
env_key = "MULLAMA_KEY"
wire_api = "responses"
"""

# Claude Code 2.1: telemetry (Statsig/OpenTelemetry), error reports (Sentry), the
# auto-updater, feature-flag fetches and the other non-essential calls are off.
CLAUDE_QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DO_NOT_TRACK": "1",
}


def _base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",  # node for codex.js
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def codex_command(
    url: str, home: Path, prompt: str, model: str | None = None, context: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """``codex exec PROMPT`` against ``url`` (no /v1) with CODEX_HOME in ``home``; without
    ``model`` Codex sends its own default model name (alias it on the daemon); ``context``
    is the daemon's context size (model_context_window)."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    model_lines = f'model = "{model}"\n' if model else ""
    if context:
        model_lines += f"model_context_window = {context}\n"
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(url=url, model_lines=model_lines))
    env = {**_base_env(home), "CODEX_HOME": str(codex_home), "MULLAMA_KEY": KEY}
    cmd = [str(CODEX), "exec", "--strict-config", "--skip-git-repo-check", "--color", "never",
           prompt]  # fmt: skip
    return cmd, env


def claude_command(
    url: str, home: Path, prompt: str, model: str | None = None, max_output: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """``claude -p PROMPT`` against ``url`` with its config in ``home``; without ``model``
    Claude Code sends its own default model names (alias them on the daemon)."""
    env = {
        **_base_env(home),
        **CLAUDE_QUIET,
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": KEY,
    }
    if model:
        env["ANTHROPIC_MODEL"] = model
    if max_output:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output)
    return [str(CLAUDE), "-p", prompt], env
