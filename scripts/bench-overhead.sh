#!/usr/bin/env bash
# Overhead benchmark: plain call vs the reference tool (prometheus_client
# multiprocess Histogram) vs ms-service-metric on / off, in one run, one
# interpreter.  Agent rows need root and the built binary; without them they
# are reported as skipped.
#
#   scripts/bench-overhead.sh [--iters N] [--rounds R] [--no-agent]
#
# Environment: PYTHON (default pyenv 3.11.7), MSM_BIN (default
# .build/release/ms-service-metric, else .build/debug/…), BENCH_VENV (default /tmp/msm-bench-venv-<ver>).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-/root/.pyenv/versions/3.11.7/bin/python3}"
[ -x "$py" ] || py="$(command -v python3)"
ver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
venv="${BENCH_VENV:-/tmp/msm-bench-venv-$ver}"

if ! "$venv/bin/python" -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "bench: creating $venv with prometheus_client (reference rows)..." >&2
    "$py" -m venv "$venv"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check prometheus_client >&2; then
        echo "bench: could not install prometheus_client into $venv;" >&2
        echo "       install it (pip install prometheus_client) or set BENCH_VENV to a venv that has it" >&2
        exit 2
    fi
fi

# The agent as it runs in production: a release build when there is one (`swift build -c release`).
default_bin="$repo/.build/release/ms-service-metric"
[ -x "$default_bin" ] || default_bin="$repo/.build/debug/ms-service-metric"
export MSM_BIN="${MSM_BIN:-$default_bin}"
case "$MSM_BIN" in /*) ;; *) MSM_BIN="$repo/$MSM_BIN" ;; esac
exec "$venv/bin/python" "$here/bench_overhead.py" --msm-bin "$MSM_BIN" "$@"
