#!/usr/bin/env bash
# Install redis-server (Debian package) for the tests of shared rate limits, the Redis
# response cache and /health's Redis probe: the suite needs it, nothing is skipped without
# it. Idempotent: does nothing when redis-server is already on PATH. The tests start their own redis-server on
# 127.0.0.1 on a free port in a temporary directory; this script never starts one.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-redis.sh: redis-server is missing and apt-get is not available;" \
    "install Redis yourself: the tests of shared rate limits and the Redis cache need it" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! sudo -n true 2>/dev/null; then
    echo "install-redis.sh: redis-server is missing and installing it needs root;" \
      "the tests of shared rate limits and the Redis cache need it" >&2
    exit 1
  fi
  sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package may start a system instance; the tests do not use it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
