#!/usr/bin/env bash
# A scale-out set-up on this machine, to try: N Mullama instances sharing one rate-limit
# budget in a Redis, behind nginx or HAProxy (the configs in deploy/, rendered for these
# ports by deploy/render.py), with a self-signed certificate. Everything listens on
# 127.0.0.1 and lives in one folder; `stop` ends it all.
#
#   deploy/local-cluster.sh start [--proxy nginx|haproxy] [-- EXTRA SERVE FLAGS...]
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh stop
#
#   curl --cacert "$DIR/tls/cert.pem" https://127.0.0.1:8443/v1/models
#
# Environment: CLUSTER_DIR (default ${TMPDIR:-/tmp}/mullama-cluster), INSTANCES (3),
# BASE_PORT (18081: instances on 18081..; or PORTS="P1 P2 P3"), HTTP_PORT (8080), HTTPS_PORT (8443),
# REDIS_PORT (16379), EMBED_INSTANCES (e.g. "1": the instances HAProxy sends embeddings
# to; default all), MULLAMA (the mullama command; default .venv/bin/mullama of this
# checkout, else mullama on PATH), PYTHON (python3). Needs redis-server, openssl, and
# nginx or haproxy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
DIR="${CLUSTER_DIR:-${TMPDIR:-/tmp}/mullama-cluster}"
INSTANCES="${INSTANCES:-3}"
BASE_PORT="${BASE_PORT:-18081}"
HTTP_PORT="${HTTP_PORT:-8080}"
HTTPS_PORT="${HTTPS_PORT:-8443}"
REDIS_PORT="${REDIS_PORT:-16379}"
PYTHON="${PYTHON:-python3}"
if [ -z "${MULLAMA:-}" ]; then
  if [ -x "$here/../.venv/bin/mullama" ]; then MULLAMA="$here/../.venv/bin/mullama"; else MULLAMA=mullama; fi
fi

say() { echo "local-cluster: $*" >&2; }

wait_http() {  # URL [seconds]: until it answers 200
  "$PYTHON" - "$1" "${2:-180}" <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(url, timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.3)
sys.exit(f"{url} did not answer 200")
PY
}

port_of() {  # the i-th instance's port
  if [ -n "${PORTS:-}" ]; then
    local ports
    read -r -a ports <<<"$PORTS"
    echo "${ports[$(($1 - 1))]}"
  else
    echo $((BASE_PORT + $1 - 1))
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  local proxy=nginx
  while [ $# -gt 0 ]; do
    case "$1" in
      --proxy) proxy="$2"; shift 2 ;;
      --) shift; break ;;
      *) say "unknown option $1"; exit 2 ;;
    esac
  done
  if [ -e "$DIR/cluster.env" ]; then
    say "already started in $DIR (run: $0 stop)"; exit 1
  fi
  mkdir -p "$DIR/tls" "$DIR/redis" "$DIR/proxy"
  printf 'PROXY=%s\nINSTANCES=%s\n' "$proxy" "$INSTANCES" > "$DIR/cluster.env"

  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$DIR/redis" --save "" \
    --appendonly no --daemonize yes --pidfile "$DIR/redis/redis.pid" \
    --logfile "$DIR/redis/redis.log"
  local storage="redis://127.0.0.1:$REDIS_PORT/0"

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" 2>/dev/null

  local backends=() i port
  for i in $(seq 1 "$INSTANCES"); do
    port=$(port_of "$i")
    mkdir -p "$DIR/m$i"
    nohup "$MULLAMA" serve --http-addr 127.0.0.1 --http-port "$port" \
      --socket "unix://$DIR/m$i/mullama.sock" --rate-limit-storage "$storage" \
      --log-format json "$@" </dev/null >"$DIR/m$i/mullama.log" 2>&1 &
    echo $! > "$DIR/m$i/pid"
    echo "$port" > "$DIR/m$i/port"
    backends+=(--backend "127.0.0.1:$port")
  done
  for i in $(seq 1 "$INSTANCES"); do
    wait_http "http://127.0.0.1:$(cat "$DIR/m$i/port")/health/ready" || {
      say "instance m$i did not become ready; its log: $DIR/m$i/mullama.log"; exit 1; }
  done

  for i in ${EMBED_INSTANCES:-}; do
    backends+=(--embed-backend "127.0.0.1:$(port_of "$i")")
  done
  local conf
  conf=$("$PYTHON" "$here/render.py" "$proxy" --workdir "$DIR/proxy" "${backends[@]}" \
    --http-port "$HTTP_PORT" --https-port "$HTTPS_PORT" \
    --cert "$DIR/tls/cert.pem" --key "$DIR/tls/key.pem")
  case "$proxy" in
    nginx) nginx -c "$conf" -e "$DIR/proxy/error.log" ;;
    haproxy)
      nohup haproxy -db -f "$conf" </dev/null >"$DIR/proxy/haproxy.log" 2>&1 &
      echo $! > "$DIR/proxy/haproxy.pid" ;;
    *) say "unknown proxy $proxy"; exit 2 ;;
  esac
  wait_http "http://127.0.0.1:$HTTP_PORT/health/ready" 30 >/dev/null 2>&1 || true
  say "$INSTANCES instances behind $proxy: https://127.0.0.1:$HTTPS_PORT (CA: $DIR/tls/cert.pem), Redis $storage"
}

stop() {
  [ -e "$DIR/cluster.env" ] || { say "nothing started in $DIR"; return 0; }
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
  case "$PROXY" in
    nginx) alive "$DIR/proxy/nginx.pid" && nginx -c "$DIR/proxy/nginx.conf" -e "$DIR/proxy/error.log" -s quit || true ;;
    haproxy) alive "$DIR/proxy/haproxy.pid" && kill "$(cat "$DIR/proxy/haproxy.pid")" || true ;;
  esac
  local i pids=()
  for i in $(seq 1 "$INSTANCES"); do
    if alive "$DIR/m$i/pid"; then
      # Graceful: drain through the control socket (in-flight requests finish).
      "$MULLAMA" daemon stop --socket "unix://$DIR/m$i/mullama.sock" >/dev/null 2>&1 \
        || kill -TERM "$(cat "$DIR/m$i/pid")" 2>/dev/null || true
      pids+=("$(cat "$DIR/m$i/pid")")
    fi
  done
  local p n
  for p in "${pids[@]}"; do
    for n in $(seq 1 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  alive "$DIR/redis/redis.pid" && kill "$(cat "$DIR/redis/redis.pid")" || true
  for n in $(seq 1 100); do
    alive "$DIR/proxy/nginx.pid" || alive "$DIR/proxy/haproxy.pid" || alive "$DIR/redis/redis.pid" || break
    sleep 0.1
  done
  rm -f "$DIR/cluster.env"
  say "stopped (logs kept in $DIR)"
}

status() {
  [ -e "$DIR/cluster.env" ] || { say "not started"; return 3; }
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
  local i
  for i in $(seq 1 "$INSTANCES"); do
    if alive "$DIR/m$i/pid"; then echo "m$i: running, port $(cat "$DIR/m$i/port")"; else echo "m$i: stopped"; fi
  done
  echo "proxy: $PROXY on https://127.0.0.1:$HTTPS_PORT"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
