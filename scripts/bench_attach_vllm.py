#!/usr/bin/env python3
"""Time from `ms-service-metric on --pid` to the first sample, on a real `vllm serve`.

Driven by scripts/bench-vllm.sh (which starts the server). Each round: a client keeps one
completion in flight (the server is busy, as in production), the clock starts, `on --pid`
runs, and /metrics is polled every 10 ms until the first sample of the API server
(`engine:generate:duration`) and of the engine core (`engine_core:engine_core_step:duration`)
are there; then `off`. The first round also injects the provider (a cold attach); later
rounds find it loaded and only revive it. Printed: both times per round, the medians, and
the target (3 s) beside them.
"""

import argparse
import statistics
import subprocess
import threading
import time
import urllib.request

from vllm_client import completion, served_model

TARGET_S = 3.0


def has_sample(text, metric):
    prefix = "vllm_profiling_%s_count{" % metric
    return any(line.startswith(prefix) and float(line.rsplit(" ", 1)[1]) > 0
               for line in text.splitlines())


def scrape(listen):
    try:
        with urllib.request.urlopen("http://%s/metrics" % listen, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--listen", default="127.0.0.1:9478")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    model = served_model(a.base)

    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                completion(a.base, model, "attach benchmark", 8, ignore_eos=False)
            except OSError:
                time.sleep(0.1)

    client = threading.Thread(target=traffic, daemon=True)
    client.start()
    rows = []
    print("%-6s %12s %14s %14s" % ("round", "on returns", "API server", "engine core"))
    try:
        for r in range(a.rounds):
            t0 = time.monotonic()
            on = subprocess.run([a.bin, "on", "--pid", str(a.pid), "--listen", a.listen],
                                capture_output=True, text=True, timeout=120)
            t_on = time.monotonic() - t0
            if on.returncode != 0:
                raise SystemExit("bench: on failed: %s%s" % (on.stdout, on.stderr))
            first = {}
            deadline = t0 + 60
            while len(first) < 2 and time.monotonic() < deadline:
                text = scrape(a.listen)
                for key, metric in (("api", "engine:generate:duration"),
                                    ("core", "engine_core:engine_core_step:duration")):
                    if key not in first and has_sample(text, metric):
                        first[key] = time.monotonic() - t0
                time.sleep(0.01)
            subprocess.run([a.bin, "off"], capture_output=True, timeout=60)
            rows.append((t_on, first.get("api"), first.get("core")))
            fmt = lambda v: "%12.2f s" % v if v is not None else "%14s" % "none in 60 s"
            print("%-6d %10.2f s %s %s" % (r + 1, t_on, fmt(first.get("api")), fmt(first.get("core"))))
    finally:
        stop.set()
    for i, name in ((1, "API server"), (2, "engine core")):
        got = [row[i] for row in rows if row[i] is not None]
        if got:
            print("first sample, %s: cold %.2f s, median %.2f s   (target: <= %.0f s)"
                  % (name, rows[0][i] if rows[0][i] is not None else float("nan"),
                     statistics.median(got), TARGET_S))


if __name__ == "__main__":
    main()
