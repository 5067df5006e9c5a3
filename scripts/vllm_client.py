"""The few calls the vLLM benchmarks make: the served model's name, one completion,
and the CPU time a process tree has used (from /proc, in seconds).

Imported by scripts/bench_attach_vllm.py and scripts/bench_vllm_throughput.py.
"""

import json
import os
import urllib.request

_TICKS = os.sysconf("SC_CLK_TCK")


def served_model(base):
    """The id of the first model `vllm serve` at ``base`` (http://host:port) serves."""
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def completion(base, model, prompt, max_tokens, ignore_eos=True, timeout=120):
    """One /v1/completions request at temperature 0; returns the completion tokens."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": ignore_eos}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)["usage"]["completion_tokens"]


def _stat(pid):
    """(ppid, utime + stime in ticks) of a live pid, else None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()   # after "pid (comm) "
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_cpu_seconds(root):
    """User + system CPU seconds used so far by ``root`` and its live descendants.
    (Children that exited are not counted: vLLM's processes live as long as the server.)"""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                stats[int(name)] = s
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in tree if p in stats) / _TICKS


def process_cpu_seconds(pid):
    """User + system CPU seconds used so far by one process (0 when it is gone)."""
    s = _stat(pid)
    return s[1] / _TICKS if s else 0.0
