#!/usr/bin/env python3
"""Throughput of a real `vllm serve` with the agent off and with every built-in metric on.

Driven by scripts/bench-vllm.sh (which starts the server). Rounds alternate
off / on so that drift of the machine (other load, thermal, caches) hits both sides alike;
each round sends the same closed-loop workload: CONCURRENCY clients, each sending
completions with a fixed output length (ignore_eos) until REQUESTS have been answered.
Printed: requests/s and output tokens/s per round, the median of each side, and the
difference beside the target (on at most 1 % lower).
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def completion(base, model, i, max_tokens):
    body = json.dumps({"model": model, "prompt": "benchmark request %d: the quick brown fox" % i,
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.load(r)
    return answer["usage"]["completion_tokens"]


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
                n = completion(base, model, i, max_tokens)
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
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()

    with urllib.request.urlopen(a.base + "/v1/models", timeout=10) as r:
        model = json.load(r)["data"][0]["id"]
    workload(a.base, model, 2 * a.concurrency, a.concurrency, a.max_tokens)  # warm-up

    results = {"off": [], "on": []}
    print("%-6s %-4s %10s %12s %10s" % ("round", "side", "req/s", "out tok/s", "seconds"))
    for r in range(a.rounds):
        for side in ("off", "on"):
            if side == "on":
                agent(a.bin, "on", "--pid", str(a.pid), "--listen", a.listen)
            try:
                secs, done, tokens = workload(a.base, model, a.requests, a.concurrency, a.max_tokens)
            finally:
                if side == "on":
                    status = agent(a.bin, "status")
                    agent(a.bin, "off")
            results[side].append((done / secs, tokens / secs))
            print("%-6d %-4s %10.2f %12.1f %10.2f" % (r + 1, side, done / secs, tokens / secs, secs))
    errors = [l for l in status.splitlines() if "error" in l.lower()]
    off_rps = statistics.median(x[0] for x in results["off"])
    on_rps = statistics.median(x[0] for x in results["on"])
    off_tps = statistics.median(x[1] for x in results["off"])
    on_tps = statistics.median(x[1] for x in results["on"])
    change = (on_rps - off_rps) / off_rps * 100
    print()
    print("median requests/s: off %.2f, on (all built-ins) %.2f -> %+.2f %%   (target: no more than 1 %% lower)"
          % (off_rps, on_rps, change))
    print("median output tokens/s: off %.1f, on %.1f -> %+.2f %%"
          % (off_tps, on_tps, (on_tps - off_tps) / off_tps * 100))
    print("spread within a side (max-min)/median: off %.1f %%, on %.1f %%"
          % tuple(100 * (max(x[0] for x in v) - min(x[0] for x in v)) / statistics.median(x[0] for x in v)
                  for v in (results["off"], results["on"])))
    if errors:
        print("status lines mentioning errors during the last 'on' round:")
        for l in errors:
            print("  " + l)


if __name__ == "__main__":
    sys.exit(main())
