#!/usr/bin/env bash
# Install Mullama with its test dependencies into .venv and run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/install-test-services.sh
bash scripts/install-redis.sh   # redis-server for the shared rate-limit test
bash scripts/install-deploy-tools.sh   # nginx, haproxy, logrotate, systemd-analyze (tests/deploy)
bash scripts/install-llama-server.sh >/dev/null   # llama-server: the remote engine of tests/e2e/test_remote.py
bash scripts/install-agents.sh   # Codex CLI and Claude Code from npm into .agents/ (tests/e2e/test_agents.py)
.venv/bin/ruff check src tests benchmarks
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
