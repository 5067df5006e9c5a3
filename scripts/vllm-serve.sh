#!/usr/bin/env bash
# vllm-serve.sh — starts a real `vllm serve` (CPU, tiny dummy-weight model) in the background,
# waits until it answers /health, prints its pid on stdout (nothing else goes to stdout).
#
# Usage:   pid=$(bash scripts/vllm-serve.sh [options])   ...   bash scripts/vllm-stop.sh "$pid"
# Options: --port P            listen port on 127.0.0.1 (default 8000)
#          --max-num-seqs N    vLLM --max-num-seqs (pressure: 4 fills the waiting queue)
#          --small-kv          --kv-cache-memory-bytes 8388608, VLLM_CPU_KVCACHE_SPACE unset
#                              (32 blocks; preemptions happen)
#          --dp N              --data-parallel-size N (2: DP coordinator, EngineCore_DP0/1,
#                              APIServer_0/1)
#          --prefix CMD… --    run under a wrapper that execs its command (same pid), e.g.
#                              --prefix .build/debug/ms-service-metric exec --
#                              (the prefix is every word up to and including the next `--`)
#          --log FILE          server output (default WORKDIR/server.log)
#          --workdir DIR       VLLM_CACHE_ROOT/TMPDIR/cwd (default /tmp/msm-vllm-run/PORT)
#          --timeout S         seconds to wait for /health (default 240)
#          -- ARGS…            extra arguments for `vllm serve`
# Env:     VLLM_VENV (default /opt/msm-vllm/venv), VLLM_MODEL_DIR (default /opt/msm-vllm/model),
#          VLLM_CPU_KVCACHE_SPACE (GiB, default 1 unless --small-kv).
# Both made by scripts/vllm-setup.sh. The printed pid is the `vllm serve` process itself (the
# API server, or the wrapper's pid that exec'd into it): it is exec'd, never a shell. It runs in
# its own session/process group, so scripts/vllm-stop.sh can stop the whole tree. On failure
# (process died or timeout) the log tail goes to stderr, the tree is stopped, exit 1.
# Typical start here: ~35 s (2-core VM, --enforce-eager).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

VENV=${VLLM_VENV:-/opt/msm-vllm/venv}
MODEL=${VLLM_MODEL_DIR:-/opt/msm-vllm/model}
PORT=8000 MAX_SEQS= SMALL_KV=0 DP=1 LOG= WORKDIR= TIMEOUT=240
PREFIX=() EXTRA=()

die() { echo "vllm-serve: $*" >&2; exit 2; }
while (($#)); do
    case $1 in
        --port) PORT=${2:?}; shift 2 ;;
        --max-num-seqs) MAX_SEQS=${2:?}; shift 2 ;;
        --small-kv) SMALL_KV=1; shift ;;
        --dp) DP=${2:?}; shift 2 ;;
        --log) LOG=${2:?}; shift 2 ;;
        --workdir) WORKDIR=${2:?}; shift 2 ;;
        --timeout) TIMEOUT=${2:?}; shift 2 ;;
        --prefix)
            shift
            # the wrapper's words up to and including its `--` (e.g. `msm exec --`)
            while (($#)); do
                PREFIX+=("$1"); shift
                [[ ${PREFIX[-1]} == -- ]] && break
            done
            [[ ${PREFIX[-1]-} == -- ]] || die "--prefix: expected the wrapper command to end with --"
            ;;
        --) shift; EXTRA+=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ -x "$VENV/bin/vllm" ]] || die "no vLLM at $VENV/bin/vllm: run scripts/vllm-setup.sh (or set VLLM_VENV)"
[[ -f "$MODEL/config.json" ]] || die "no model at $MODEL: run scripts/vllm-setup.sh (or set VLLM_MODEL_DIR)"
WORKDIR=${WORKDIR:-/tmp/msm-vllm-run/$PORT}
mkdir -p "$WORKDIR/cache" "$WORKDIR/tmp"
LOG=${LOG:-$WORKDIR/server.log}
mkdir -p "$(dirname "$LOG")"
: > "$LOG"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT on 127.0.0.1 is already in use"
fi

args=(serve "$MODEL" --host 127.0.0.1 --port "$PORT" --load-format dummy --dtype float32
      --max-model-len 512 --enforce-eager --served-model-name tiny-llama)
[[ -n $MAX_SEQS ]] && args+=(--max-num-seqs "$MAX_SEQS")
((DP > 1)) && args+=(--data-parallel-size "$DP")
((SMALL_KV)) && args+=(--kv-cache-memory-bytes 8388608)
args+=("${EXTRA[@]}")

export VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       DO_NOT_TRACK=1 VLLM_CACHE_ROOT="$WORKDIR/cache" TMPDIR="$WORKDIR/tmp" \
       PATH="$VENV/bin:$PATH"
if ((SMALL_KV)); then unset VLLM_CPU_KVCACHE_SPACE; else export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}; fi

echo "vllm-serve: ${PREFIX[*]} $VENV/bin/vllm ${args[*]} (log $LOG)" >&2
t0=$(date +%s.%N)
# A background subshell is never a process-group leader here, so setsid calls setsid()
# without forking: `exec setsid … exec vllm` keeps $! as the server's pid.
( cd "$WORKDIR" && exec setsid "${PREFIX[@]}" "$VENV/bin/vllm" "${args[@]}" ) \
    </dev/null >>"$LOG" 2>&1 &
pid=$!

fail() {
    echo "vllm-serve: $* — last lines of $LOG:" >&2
    tail -n 40 "$LOG" | sed 's/^/  | /' >&2
    "$HERE/vllm-stop.sh" "$pid" >&2 || true
    exit 1
}

deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    if ! kill -0 "$pid" 2>/dev/null || [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
        wait "$pid" 2>/dev/null && rc=0 || rc=$?
        fail "server (pid $pid) exited with status $rc before answering /health"
    fi
    if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/health" 2>/dev/null; then break; fi
    (( $(date +%s) < deadline )) || fail "no answer on http://127.0.0.1:$PORT/health after ${TIMEOUT} s"
    sleep 0.5
done
ps -o args= -p "$pid" | grep -q vllm || echo "vllm-serve: warning: pid $pid is '$(ps -o args= -p "$pid")'" >&2
printf 'vllm-serve: healthy on http://127.0.0.1:%s after %s s, pid %s\n' "$PORT" \
    "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" "$pid" >&2
echo "$pid"
