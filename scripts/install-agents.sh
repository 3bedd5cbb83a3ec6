#!/usr/bin/env bash
# Install the coding agents that tests/e2e/test_agents.py runs unchanged: Codex CLI
# (@openai/codex) and Claude Code (@anthropic-ai/claude-code), from npm, at the exact
# versions of scripts/agents/package-lock.json, into .agents/ (git-ignored; another folder
# with MULLAMA_AGENTS_DIR). Node and npm come from Debian when missing, with bubblewrap
# (Codex's sandbox for the commands it runs; it warns without it).
# Idempotent: when .agents/ holds this lockfile's install, it returns at once; otherwise
# `npm ci` (npm's cache makes a reinstall a matter of seconds). Nothing is installed
# globally and nothing is fetched at test time: both CLIs are native binaries that the
# packages carry (Codex's in the optional dependency @openai/codex-linux-x64, Claude
# Code's in @anthropic-ai/claude-code-linux-x64, copied into place by its postinstall).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${MULLAMA_AGENTS_DIR:-$PWD/.agents}"
lock=scripts/agents/package-lock.json

need=()
command -v node >/dev/null && command -v npm >/dev/null || need+=(nodejs npm)
command -v bwrap >/dev/null || need+=(bubblewrap)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-agents: need root to apt-get install ${need[*]}" >&2; exit 1; }
    SUDO="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Codex's npm wrapper needs Node 16, Claude Code's installer 18 (its package asks for 22,
# but what runs is its native binary: npm only warns).
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  echo "install-agents: Node $(node --version) is too old; the agents need Node 18 or later" >&2
  exit 1
fi

case "$(uname -m)" in
  x86_64) arch=x64; triple=x86_64-unknown-linux-musl ;;
  aarch64) arch=arm64; triple=aarch64-unknown-linux-musl ;;
  *) echo "install-agents: no Codex/Claude Code build for $(uname -m)" >&2; exit 1 ;;
esac
codex_native="$dest/node_modules/@openai/codex-linux-$arch/vendor/$triple/bin/codex"
installed() {
  cmp -s "$lock" "$dest/.installed-lock.json" && [ -x "$codex_native" ] \
    && [ -x "$dest/node_modules/.bin/codex" ] && [ -x "$dest/node_modules/.bin/claude" ]
}
installed && exit 0

mkdir -p "$dest"
cp scripts/agents/package.json "$lock" "$dest/"
rm -f "$dest/.installed-lock.json"
(cd "$dest" && npm ci --no-audit --no-fund --include=optional --loglevel=error)
[ -x "$codex_native" ] || { echo "install-agents: npm did not install Codex's native binary ($codex_native)" >&2; exit 1; }
# Both run offline: print the versions (and fail here, not in a test, if they cannot start).
want_codex=$(node -p 'require(process.argv[1]).packages["node_modules/@openai/codex"].version' "$PWD/$lock")
want_claude=$(node -p 'require(process.argv[1]).packages["node_modules/@anthropic-ai/claude-code"].version' "$PWD/$lock")
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
got_codex=$(HOME="$home" CODEX_HOME="$home" "$dest/node_modules/.bin/codex" --version 2>/dev/null)
got_claude=$(HOME="$home" CLAUDE_CONFIG_DIR="$home" DISABLE_AUTOUPDATER=1 "$dest/node_modules/.bin/claude" --version)
[ "$got_codex" = "codex-cli $want_codex" ] || { echo "install-agents: codex --version said '$got_codex'" >&2; exit 1; }
[ "$got_claude" = "$want_claude (Claude Code)" ] || { echo "install-agents: claude --version said '$got_claude'" >&2; exit 1; }
cp "$lock" "$dest/.installed-lock.json"
echo "install-agents: $got_codex, Claude Code $want_claude in $dest" >&2
