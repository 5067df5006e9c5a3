#!/usr/bin/env bash
# vllm-stop.sh — stops a server started by scripts/vllm-serve.sh, with all its processes.
#
# Usage:   bash scripts/vllm-stop.sh PID [TIMEOUT_SECONDS]     (default timeout 30)
# Sends SIGINT to PID (vLLM's clean shutdown: the API server stops its engine cores and
# workers), waits up to TIMEOUT for PID, its descendants and the members of its session
# (vllm-serve.sh starts it with setsid, so re-parented leftovers are found too) to exit,
# then SIGKILLs whatever is left. Exit 0 when nothing is left; a PID that no longer
# exists is not an error. Prints what it did on stderr.
set -uo pipefail
pid=${1:?usage: vllm-stop.sh PID [TIMEOUT_SECONDS]}
timeout=${2:-30}
[[ $pid =~ ^[0-9]+$ && $pid -gt 1 ]] || { echo "vllm-stop: bad pid '$pid'" >&2; exit 2; }

# Prints the live (non-zombie) processes that belong to the tree: PID, its descendants,
# and every process whose session id is PID.
members() {
    local f line rest p state ppid sid
    declare -A parent=() alive=() insession=()
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null < "$f" || continue
        p=${f#/proc/}; p=${p%/stat}
        rest=${line##*) }
        read -r state ppid _ sid _ <<< "$rest"
        [[ $state == Z || $state == X ]] && continue
        alive[$p]=1; parent[$p]=$ppid
        [[ $sid == "$pid" ]] && insession[$p]=1
    done
    local -A tree=()
    [[ -n ${alive[$pid]-} ]] && tree[$pid]=1
    local changed=1
    while ((changed)); do
        changed=0
        for p in "${!parent[@]}"; do
            if [[ -z ${tree[$p]-} && -n ${tree[${parent[$p]}]-} ]]; then tree[$p]=1; changed=1; fi
        done
    done
    for p in "${!insession[@]}"; do tree[$p]=1; done
    echo "${!tree[@]}"
}

procs=$(members)
if [[ -z $procs ]]; then echo "vllm-stop: no process $pid (already stopped)" >&2; exit 0; fi
echo "vllm-stop: SIGINT to $pid (tree: $(echo "$procs" | wc -w) processes)" >&2
t0=$(date +%s.%N)
kill -INT "$pid" 2>/dev/null
deadline=$(( $(date +%s) + timeout ))
while :; do
    procs=$(members)
    [[ -z $procs ]] && break
    (( $(date +%s) < deadline )) || break
    sleep 0.2
done
if [[ -n $procs ]]; then
    echo "vllm-stop: still alive after ${timeout} s: $procs — SIGKILL" >&2
    kill -KILL $procs 2>/dev/null
    for _ in $(seq 50); do procs=$(members); [[ -z $procs ]] && break; sleep 0.1; done
    if [[ -n $procs ]]; then echo "vllm-stop: could not stop: $procs" >&2; exit 1; fi
fi
printf 'vllm-stop: stopped in %s s\n' "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" >&2
