"""The function timed by scripts/bench_overhead.py (symbol bench_target:work)."""


def work(x):
    return x + 1
