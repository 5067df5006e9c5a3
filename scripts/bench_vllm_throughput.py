#!/usr/bin/env python3
"""Throughput of a real `vllm serve` with the agent off and with every built-in metric on.

Driven by scripts/bench-vllm.sh (which starts the server). Rounds alternate
off / on so that drift of the machine (other load, thermal, caches) hits both sides alike;
each round sends the same closed-loop workload: CONCURRENCY clients, each sending
completions with a fixed output length (ignore_eos) until REQUESTS have been answered.
Printed per round: requests/s, output tokens/s, and the CPU time per request of the vLLM
process tree (API server, engine core, workers: user + system from /proc, which includes
the provider and the BPF programs, both run in the target's threads) and of the agent's
own process. Then the median of each side and the differences beside the target (on at
most 1 % lower). CPU per request is the steadier figure on a small, noisy machine: a
wall-clock round also pays for whatever else ran on the cores meanwhile. Rounds are long
(1000 requests, about 10 s here) and start after a pause (--settle): with 200-request rounds
(2 s) started right after `on`, the agent's and providers' start-up fell inside the "on"
rounds and showed as a 12-20 % slowdown even with a single probe configured.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

from vllm_client import completion, process_cpu_seconds, served_model, tree_cpu_seconds

RUNTIME_DIR = os.environ.get("MS_SERVICE_METRIC_RUNTIME_DIR", "/run/ms-service-metric")


def agent_pid():
    try:
        with open(os.path.join(RUNTIME_DIR, "agent.pid")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def workload(base, model, requests, concurrency, max_tokens):
    """Closed loop; returns (seconds, requests answered, output tokens)."""
    lock = threading.Lock()
    state = {"next": 0, "tokens": 0, "done": 0, "errors": []}

    def client():
        while True:
            with lock:
                if state["next"] >= requests:
                    return
                i = state["next"]
                state["next"] += 1
            try:
                n = completion(base, model, "benchmark request %d: the quick brown fox" % i, max_tokens)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    state["errors"].append(repr(e))
                continue
            with lock:
                state["tokens"] += n
                state["done"] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if state["errors"]:
        raise SystemExit("bench: %d requests failed, first: %s" % (len(state["errors"]), state["errors"][0]))
    return elapsed, state["done"], state["tokens"]


def agent(binary, *args):
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise SystemExit("bench: ms-service-metric %s failed (%d): %s%s"
                         % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="http://127.0.0.1:PORT of vllm serve")
    ap.add_argument("--pid", type=int, required=True, help="pid of vllm serve")
    ap.add_argument("--bin", required=True, help="ms-service-metric binary")
    ap.add_argument("--listen", default="127.0.0.1:9479")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per side")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds of pause after switching, before each round's workload")
    ap.add_argument("--config", help="symbol config for the 'on' rounds (default: the built-in one)")
    a = ap.parse_args()

    model = served_model(a.base)
    workload(a.base, model, 2 * a.concurrency, a.concurrency, a.max_tokens)  # warm-up

    # per round: requests/s, output tokens/s, vLLM CPU ms per request, agent CPU ms per request
    results = {"off": [], "on": []}
    print("%-6s %-4s %8s %10s %8s %14s %14s" % ("round", "side", "req/s", "out tok/s", "seconds",
                                              "vLLM CPU/req", "agent CPU/req"))
    status = ""
    for r in range(a.rounds):
        for side in ("off", "on"):
            daemon = None
            if side == "on":
                agent(a.bin, "on", "--pid", str(a.pid), "--listen", a.listen,
                      *(["--config", a.config] if a.config else []))
                daemon = agent_pid()
            # Both sides start the same way: a quiet pause after the switch (on: the agent
            # finishing its start-up, the providers their first announcements).
            time.sleep(a.settle)
            cpu0 = tree_cpu_seconds(a.pid)
            agent0 = process_cpu_seconds(daemon) if daemon else 0.0
            try:
                secs, done, tokens = workload(a.base, model, a.requests, a.concurrency, a.max_tokens)
                cpu_ms = (tree_cpu_seconds(a.pid) - cpu0) * 1000 / done
                agent_ms = ((process_cpu_seconds(daemon) - agent0) * 1000 / done) if daemon else 0.0
            finally:
                if side == "on":
                    status = agent(a.bin, "status")
                    agent(a.bin, "off")
            results[side].append((done / secs, tokens / secs, cpu_ms, agent_ms))
            print("%-6d %-4s %8.2f %10.1f %8.2f %11.2f ms %11.2f ms"
                  % (r + 1, side, done / secs, tokens / secs, secs, cpu_ms, agent_ms))

    def med(side, i):
        return statistics.median(x[i] for x in results[side])

    def spread(side, i):
        v = [x[i] for x in results[side]]
        return 100 * (max(v) - min(v)) / statistics.median(v)

    print()
    print("median requests/s: off %.2f, on (%s) %.2f -> %+.2f %%   (target: no more than 1 %% lower)"
          % (med("off", 0), a.config or "all built-ins", med("on", 0),
             (med("on", 0) - med("off", 0)) / med("off", 0) * 100))
    print("median output tokens/s: off %.1f, on %.1f -> %+.2f %%"
          % (med("off", 1), med("on", 1), (med("on", 1) - med("off", 1)) / med("off", 1) * 100))
    print("median vLLM CPU per request (all its processes): off %.2f ms, on %.2f ms -> %+.2f %%"
          "   (the same target, less sensitive to scheduling noise than wall-clock throughput)"
          % (med("off", 2), med("on", 2), (med("on", 2) - med("off", 2)) / med("off", 2) * 100))
    print("median agent CPU per request (its own process, when on): %.3f ms" % med("on", 3))
    print("spread within a side (max-min)/median: requests/s off %.1f %%, on %.1f %%; "
          "vLLM CPU/request off %.1f %%, on %.1f %%"
          % (spread("off", 0), spread("on", 0), spread("off", 2), spread("on", 2)))
    errors = [line for line in status.splitlines() if "error" in line.lower()]
    if errors:
        print("status lines mentioning errors during the last 'on' round:")
        for line in errors:
            print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
