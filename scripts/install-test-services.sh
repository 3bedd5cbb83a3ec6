#!/usr/bin/env bash
# Install the system services the test suite needs, from Debian packages (idempotent:
# quick when they are already there). Prometheus gives /usr/bin/prometheus and promtool;
# Chromium is the real browser of the web UI's tests (driven by Playwright's Python package,
# tests/browser.py), with a font so its screenshots show text.
# Nothing is started or enabled here; tests start their own instances on 127.0.0.1.
set -euo pipefail
need=()
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need+=(prometheus)
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-test-services: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
else
  SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
# The lock: other jobs on this machine may run apt at the same time.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's package starts a system prometheus on :9090; the tests do not need it.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
