"""Hot-path cost of an instrumented call (no uprobe attached: msm_emit is a nop).

    python3 Tests/provider/bench_hotpath.py [path/to/dir/with/_msm_probe.abi3.so]

Builds the extension into a temp dir when no directory is given. Prints ns per
call: plain, timer-only probe, static (timer + counter), and a probe with one
histogram expression and one label expression; then ns per with-block of a
factory returning a nullcontext (as vLLM's record_function_or_nullcontext):
plain, scope call (times the factory), scope block timer-only, and scope block
with Config/default.yaml's labels.
"""

import json
import os
import sys
import tempfile
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    from conftest import PROVIDER, build_native  # noqa: E402
except ImportError:  # no pytest in this interpreter: pass a prebuilt directory
    PROVIDER = os.path.join(HERE, "..", "..", "provider")

    def build_native(d):
        raise SystemExit("pytest missing: pass a directory containing _msm_probe.abi3.so")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    if not os.path.exists(os.path.join(d, "_msm_probe.abi3.so")):
        build_native(d)
    sys.path[:0] = [d, PROVIDER]
    import _msm_probe
    from msm_provider import Provider

    ns = {}
    exec("import contextlib\n"
         "class Engine:\n"
         "    def __init__(self):\n        self.running = [1, 2, 3]\n"
         "    def step(self, n):\n        return n\n"
         "def plain(n):\n    return n\n"
         "def section(name):\n    return contextlib.nullcontext()\n", ns)
    mod = type(sys)("benchtarget")
    mod.__dict__.update(ns)
    for v in ns.values():
        if hasattr(v, "__module__"):
            v.__module__ = "benchtarget"
    sys.modules["benchtarget"] = mod

    cdir = tempfile.mkdtemp()
    os.chmod(cdir, 0o755)
    path = os.path.join(cdir, "control.json")
    p = Provider(native=_msm_probe, control_path=path, semaphore=lambda: 1, vllm_version=None)
    e = mod.Engine()
    n = 2_000_000
    out = {}

    def bench(label, stmt):
        best = min(timeit.repeat(stmt, globals={"e": e, "plain": mod.plain}, number=n, repeat=5))
        out[label] = best / n * 1e9

    bench("plain function", "plain(1)")
    bench("plain method", "e.step(1)")
    configs = {
        "timer-only": [{"name": "d", "type": "timer", "labels": []}],
        "timer+counter (static)": [{"name": "d", "type": "timer", "labels": []},
                                   {"name": "c", "type": "counter", "labels": []}],
        "timer+histogram expr+label expr": [
            {"name": "d", "type": "timer", "labels": [{"name": "phase", "expr": "'a' if n else 'b'"}]},
            {"name": "h", "type": "histogram", "expr": "len(self.running)", "labels": []}],
    }
    def for_function(metrics):
        """The same metrics for the plain function, which has no `self`."""
        return [dict(m, expr=m["expr"].replace("self.running", "[n]")) if "expr" in m else m
                for m in metrics]

    gen = 0
    for label, metrics in configs.items():
        gen += 1
        with open(path, "w") as f:
            json.dump({"abi": 1, "generation": gen, "enabled": True, "probes": [
                {"id": 0, "symbol": "benchtarget:Engine.step", "metrics": metrics},
                {"id": 1, "symbol": "benchtarget:plain", "metrics": for_function(metrics)}]}, f)
        p.poll_once()
        states = [state for state, _ in p.status()["probes"].values()]
        assert states == ["active", "active"], p.status()
        bench(label + " (method)", "e.step(1)")
        bench(label + " (function)", "plain(1)")
    blocks = {}

    def bench_block(label):
        best = min(timeit.repeat("with section('gpu_model_runner: forward'):\n    pass",
                                 globals={"section": mod.section}, number=n // 4, repeat=5))
        blocks[label] = best / (n // 4) * 1e9

    role = ("'worker' if str(name).startswith('gpu_model_runner') else "
            "'scheduler' if str(name).startswith('schedule') else "
            "'engine' if str(name).startswith('llm_engine') else 'unknown'")
    bench_block("with-block, no probe")
    for label, scope, metrics in (
            ("scope call, timer-only (the factory call)", "call", configs["timer-only"]),
            ("scope block, timer-only", "block", configs["timer-only"]),
            ("scope block, timer name/phase/role (default)", "block", [
                {"name": "d", "type": "timer", "labels": [
                    {"name": "name", "expr": "name"}, {"name": "phase", "expr": "'unknown'"},
                    {"name": "role", "expr": role}]}])):
        gen += 1
        with open(path, "w") as f:
            json.dump({"abi": 1, "generation": gen, "enabled": True, "probes": [
                {"id": 0, "symbol": "benchtarget:section", "scope": scope, "metrics": metrics}]}, f)
        p.poll_once()
        assert p.status()["probes"][0][0] == "active", p.status()
        bench_block(label)
    p.stop()
    print("Python %s" % sys.version.split()[0])
    for k, v in out.items():
        print("  %-48s %7.0f ns/call" % (k, v))
    for k, v in blocks.items():
        print("  %-48s %7.0f ns/block" % (k, v))


if __name__ == "__main__":
    main()
