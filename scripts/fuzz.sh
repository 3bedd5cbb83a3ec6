#!/usr/bin/env bash
# The long API fuzzing run: tests/e2e/test_fuzz.py (schemathesis against the daemon's own
# /openapi.json, without keys and with one) with many examples per operation and the
# coverage phase (boundary values of every field) on.
#
#   scripts/fuzz.sh [EXAMPLES [SEED]] [pytest arguments...]
#
# EXAMPLES per operation (default 500); SEED (default: a new one, printed: run it again
# with the same EXAMPLES and SEED to get the same cases). The interpreter is
# $PYTHON, else .venv/bin/python. Failures are reported per operation, with a curl line
# that reproduces each; the daemon logs are the /tmp/mullama-test-*.log files.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-500}
seed=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
shift $(( $# < 2 ? $# : 2 ))
for n in "$examples" "$seed"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "usage: $0 [EXAMPLES [SEED]] [pytest arguments...]" >&2; exit 2; }
done
python=${PYTHON:-.venv/bin/python}
echo "fuzzing every operation: $examples examples each, seed $seed" >&2
export MULLAMA_FUZZ_EXAMPLES="$examples" MULLAMA_FUZZ_SEED="$seed" MULLAMA_FUZZ_COVERAGE=1
# --timeout=0: one operation's examples may take longer than the suite's per-test limit.
exec "$python" -m pytest -p no:cacheprovider --timeout=0 -rs tests/e2e/test_fuzz.py "$@"
