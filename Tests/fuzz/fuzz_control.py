#!/usr/bin/env python3
"""Mutation fuzzer for the provider's control-file reader (no third-party library).

Seeds are control files as the agent writes them (Sources/MSMCore/ControlFile.swift:
compact JSON, sorted keys): the built-in config (Config/default.yaml, read with
Tests/provider/yaml_subset.py), probes on a small in-memory target module with
expressions, labels, dict results, a handler and a block scope, a disabled file, an empty
one, another abi. Each input is one to four stacked mutations of a seed: bit flips,
random bytes, insertions, deletions, duplications, truncations, splices of two seeds,
interesting tokens (NaN, 1e999, lone surrogate escapes, deep nesting ...), and mutations
of the JSON structure (a key removed or added, a value replaced by a value of another type
or a hostile expression, a probe duplicated, a value nested thousands of levels deep),
serialised in several ways.

Every input goes to ``control.parse_control``: it must return a document or raise
``ControlError``; anything else is a crash. Then (unless --no-apply) a provider with a
pure-Python stand-in for the native library checks the runtime side:

* an accepted document is applied (``Provider.apply``) and every function of the target
  module is called: nothing may raise out of ``apply`` or into the target's calls, every
  message the provider emits must be valid UTF-8 JSON within the 2048-byte payload, the
  samples well formed, and the provider must count no internal error;
* an input that is JSON but rejected is also given to ``Provider.apply`` directly: it must
  be refused and the configuration applied last must stay (generation, probe states,
  patched functions).

A crash writes the input to /tmp/fuzz_control-crash-SEED-N.bin (and the traceback next to
it, .txt), and the fuzzer exits 1. The last line printed is always
``fuzz_control: N inputs, C crashes (T s)``.

    python3 Tests/fuzz/fuzz_control.py --seconds 60
    python3 Tests/fuzz/fuzz_control.py --count 3000 --seed 1
    python3 Tests/fuzz/fuzz_control.py --replay /tmp/fuzz_control-crash-1-42.bin
"""

import argparse
import copy
import json
import os
import random
import struct
import sys
import textwrap
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "provider"))
sys.path.insert(0, os.path.join(REPO, "Tests", "provider"))

from msm_provider import control  # noqa: E402

MAX_PAYLOAD = 2048
TARGET = "fuzz_control_target"
TARGET_SRC = textwrap.dedent('''
    import contextlib

    class Sched:
        def __init__(self):
            self.running = [1, 2, 3]
            self.waiting = {"a": 1}

        def schedule(self, budget, *extra, phase="decode", **kw):
            return {"n": budget, "items": [1.5, 2.5], "none": None}

    def plain(x, key=None):
        return x

    def gen(n):
        yield from range(n)

    async def coro(x):
        return x

    @contextlib.contextmanager
    def block(name):
        yield name

    def handler(ctx):
        ctx.record("h:calls", 1)
        ctx.record("h:hist", [1, 2], {"phase": "p"})
        ctx.record("h:last", ctx.duration or 0)
''')


# ---------------------------------------------------------------- seeds

def encode(doc, sort_keys=True, indent=None, ensure_ascii=False):
    """As the agent writes it: compact, sorted keys, UTF-8 (surrogates passed through so a
    lone one becomes invalid UTF-8, as a hostile writer could do)."""
    seps = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(doc, sort_keys=sort_keys, indent=indent, ensure_ascii=ensure_ascii,
                      separators=seps)
    return text.encode("utf-8", "surrogatepass")


def control_doc(entries, generation=1, enabled=True):
    """ControlFile(config:generation:enabled:agentPid:) of Sources/MSMCore/ControlFile.swift."""
    probes = []
    for i, e in enumerate(entries):
        probes.append({
            "id": i, "symbol": e["symbol"],
            "min_version": e.get("min_version"), "max_version": e.get("max_version"),
            "handler": e.get("handler"), "scope": e.get("scope", "call"),
            "metrics": [{"name": m["name"], "type": m["type"], "expr": m.get("expr"),
                         "labels": [{"name": lab["name"], "expr": lab.get("expr")}
                                    for lab in m.get("labels") or []]}
                        for m in e.get("metrics") or []],
        })
    return {"abi": 1, "agent_pid": 4242, "enabled": enabled, "generation": generation,
            "probes": probes}


def target_entries():
    t = TARGET
    return [
        {"symbol": t + ":Sched.schedule", "min_version": "0.9.1", "metrics": [
            {"name": "sched:duration", "type": "timer",
             "labels": [{"name": "phase", "expr": "phase"}]},
            {"name": "sched:batch", "type": "histogram", "expr": "len(self.running)"},
            {"name": "sched:items", "type": "histogram", "expr": "ret['items']"},
            {"name": "sched:parts", "type": "histogram",
             "expr": "{'a': budget, 'b': [1, 2], 'c': None}",
             "labels": [{"name": "part", "expr": "key"}, {"name": "p", "expr": "phase"}]},
            {"name": "sched:calls", "type": "counter"},
            {"name": "sched:budget", "type": "gauge", "expr": "budget * 2 if duration >= 0 else 0"},
        ]},
        {"symbol": t + ":plain", "handler": t + ":handler", "metrics": [
            {"name": "h:duration", "type": "timer"},
            {"name": "h:calls", "type": "counter"},
            {"name": "h:hist", "type": "histogram", "labels": [{"name": "phase"}]},
            {"name": "h:last", "type": "gauge"},
        ]},
        {"symbol": t + ":gen", "max_version": "99", "metrics": [
            {"name": "gen:duration", "type": "timer"},
            {"name": "gen:n", "type": "gauge", "expr": "n"}]},
        {"symbol": t + ":coro", "metrics": [{"name": "coro:duration", "type": "timer"}]},
        {"symbol": t + ":block", "scope": "block", "metrics": [
            {"name": "block:duration", "type": "timer", "labels": [
                {"name": "name", "expr": "name"},
                {"name": "outcome", "expr": "'raised' if exc is not None else 'ok'"}]}]},
        {"symbol": "not_installed_pkg.mod:f", "metrics": [{"name": "x", "type": "timer"}]},
        # a class: wrapped through the module attribute (its construction is timed)
        {"symbol": t + ":Sched", "metrics": [{"name": "sched:new", "type": "timer"}]},
    ]


def make_seeds():
    import yaml_subset
    default = yaml_subset.load_file(os.path.join(REPO, "Config", "default.yaml"))
    docs = [
        control_doc(target_entries(), 7),
        control_doc(default, 3),
        control_doc(default[:5] + target_entries()[:2], 9),
        control_doc(target_entries(), 8, enabled=False),
        control_doc([], 2),
        {"abi": 2, "agent_pid": 1, "enabled": True, "generation": 4, "probes": [{"x": 1}]},
    ]
    return docs, [encode(d) for d in docs]


# ---------------------------------------------------------------- mutations

TOKENS = [b"null", b"true", b"false", b"0", b"-1", b"1e999", b"-1e999", b"NaN", b"Infinity",
          b"-0", b"18446744073709551616", b"18446744073709551615", b"1.5", b'""', b"{}",
          b"[]", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b'"\\ud800"',
          b'"\\udfff\\ud800"', b'"\\u0000"', b"\xff", b"\xc3", b"\xed\xa0\x80",
          b"\xef\xbb\xbf", b" ", b"\n", b"1" * 5000, b'"id":', b'"probes":', b'"metrics":',
          b'"labels":', b'"expr":', b'"generation":', b'"abi":', b'"symbol":']

EXPRS = ["len(self.running)", "ret['items']", "{'a': 1, 'b': None}", "key", "x", "budget * 2",
         "exc", "duration", "ret.__class__", "'{0.__class__}'.format(ret)", "1/0", "[1, 2, 3]",
         "None", "self.running[10]", "'x' * 1000", "str(ret) * 100", "f'{x!r:>{x}}'",
         "{str(i): i for i in range(5)}", "(lambda: 1)()", "\ud800", "\x00", "\u00e9\u540d",
         "a" * 3000, "-" * 1990 + "x", "[" * 150 + "]" * 150, "self.gi_frame", "ret.f_globals",
         "{'k%d' % i: i for i in x}", "[str(i) for i in range(2000)]", "x if x else",
         "ret['n'] + 'a'", "phase", "name", "n", "budget", "[ret['n']] * 3", "{1: 1, 2: 2}",
         "float('nan')", "10 ** 400", "str(10 ** 5000)"]

STRINGS = EXPRS + ["", "x", "call", "block", "loop", "timer", "histogram", "counter", "gauge",
                   "summary", TARGET + ":plain", TARGET + ":Sched.schedule", TARGET + ":handler",
                   TARGET + ":block", TARGET + ":gen", TARGET + ":coro", TARGET + ":missing",
                   TARGET + ":Sched", TARGET + ":Sched.running", "no.such.module:f", ":", "a:b:c",
                   TARGET, "0.9.1", "v1", "not a version", "999999999999999999999.1", "0.0.0",
                   "le", "dp", "__x", "phase", "name", "h:calls", "h:hist", "sched:duration",
                   "ms_service_metric.handlers:h", TARGET + ":plain.x"]

DEEP = "\x00msm-fuzz-deep\x00"


def rand_value(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.45:
        return rng.choice([None, True, False, 0, -1, 1, 7, 2 ** 63, 2 ** 64, 2 ** 64 - 1,
                           -2 ** 63, 1.5, -0.0, 1e308, rng.randrange(-10, 1000),
                           rng.choice(STRINGS), rng.choice(STRINGS), DEEP])
    if r < 0.7:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["id", "symbol", "metrics", "labels", "name", "type", "expr", "handler", "scope",
            "min_version", "max_version", "generation", "abi", "enabled", "probes", "extra"]
    return {rng.choice(keys): rand_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _nodes(doc):
    """(container, key) of every value in doc."""
    out = []
    stack = [doc]
    while stack:
        c = stack.pop()
        items = c.items() if isinstance(c, dict) else enumerate(c)
        for k, v in items:
            out.append((c, k))
            if isinstance(v, (dict, list)):
                stack.append(v)
    return out


def mutate_structure(rng, doc):
    doc = copy.deepcopy(doc)
    for _ in range(rng.randrange(1, 4)):
        nodes = _nodes(doc)
        if not nodes:
            return rand_value(rng)
        c, k = rng.choice(nodes)
        v = c[k]
        op = rng.randrange(10)
        if op == 0:
            c[k] = rand_value(rng)
        elif op == 1:
            del c[k]
        elif op == 2:
            if isinstance(v, dict):
                v[rng.choice(["id", "symbol", "metrics", "labels", "name", "type", "expr",
                              "handler", "scope", "min_version", "x"])] = rand_value(rng)
            elif isinstance(v, list):
                v.append(copy.deepcopy(rng.choice(v)) if v and rng.random() < 0.6
                         else rand_value(rng))
            else:
                c[k] = [v]
        elif op == 3:
            c[k] = rng.choice(EXPRS) if isinstance(v, str) or v is None else rand_value(rng)
        elif op == 4 and isinstance(v, str):
            c[k] = rng.choice([v + rng.choice(STRINGS), v[:rng.randrange(len(v) + 1)],
                               v.upper(), v * rng.randrange(2, 50), v + "\ud800", "\x00" + v])
        elif op == 5 and isinstance(v, (int, float)) and not isinstance(v, bool):
            c[k] = rng.choice([v + 1, v - 1, -v, v * 2 ** 64, float(v), str(v), bool(v)])
        elif op == 6:
            c[k] = {"v": v} if rng.random() < 0.5 else [v, v]
        elif op == 7:
            c[k] = DEEP
        elif op == 8 and isinstance(c, list) and v is not None:
            c.insert(k, copy.deepcopy(v))  # duplicate (probes with the same id ...)
        else:
            c[k] = rng.choice(STRINGS)
    text = encode(doc, sort_keys=rng.random() < 0.8, indent=rng.choice([None, None, 1]),
                  ensure_ascii=rng.random() < 0.2)
    deep = json.dumps(DEEP).encode()
    while deep in text:
        d = rng.choice([50, 500, 990, 3000, 100000])
        text = text.replace(deep, b"[" * d + b"0" + b"]" * d, 1) if rng.random() < 0.7 \
            else text.replace(deep, b'{"a":' * d + b"0" + b"}" * d, 1)
    return text


def mutate_bytes(rng, data, seeds):
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        n = len(b)
        op = rng.randrange(9)
        if op == 0 and n:
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            i = rng.randrange(n + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 3 and n:
            i = rng.randrange(n)
            del b[i:i + rng.randrange(1, 64)]
        elif op == 4 and n:
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 256))
            k = rng.randrange(n + 1)
            b[k:k] = b[i:j]
        elif op == 5 and n:
            del b[rng.randrange(n):]
        elif op == 6:
            i = rng.randrange(n + 1)
            b[i:i] = rng.choice(TOKENS)
        elif op == 7:
            other = rng.choice(seeds)
            i, j = rng.randrange(n + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 8 and n:
            # replace one number by another interesting one
            digits = [i for i in range(n) if 48 <= b[i] <= 57]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and 48 <= b[j] <= 57:
                    j += 1
                b[i:j] = rng.choice([b"0", b"-1", b"1e999", b"18446744073709551616", b"1.5",
                                     b"99999999999999999999999999", b"true", b"null"])
    return bytes(b)


def generate(rng, seed_docs, seed_bytes):
    r = rng.random()
    if r < 0.45:
        return mutate_structure(rng, rng.choice(seed_docs))
    if r < 0.9:
        return mutate_bytes(rng, rng.choice(seed_bytes), seed_bytes)
    return mutate_bytes(rng, mutate_structure(rng, rng.choice(seed_docs)), seed_bytes)


# ---------------------------------------------------------------- runtime side

class StubNative:
    """Pure-Python stand-in for _msm_probe that checks what the provider sends."""

    def __init__(self):
        self.problems = []
        self.now_ns = time.monotonic_ns

    def semaphore(self):
        return 1

    def _problem(self, msg):
        if len(self.problems) < 10:
            self.problems.append(msg)

    def emit(self, payload):
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD:
            self._problem("payload of %d bytes > %d" % (len(payload), MAX_PAYLOAD))
        kind, count, probe = struct.unpack_from("<HHI", payload, 0)
        if kind != 2 or count or probe:
            self._problem("bad JSON header %r" % (payload[:8],))
            return
        try:
            json.loads(payload[8:].decode("utf-8"))
        except Exception as e:
            self._problem("emitted JSON does not decode: %s: %r" % (e, payload[8:80]))

    def timer(self, probe_id, series_id, start_ns, status):
        if type(probe_id) is not int or type(series_id) is not int or status not in (0, 1):
            self._problem("bad timer(%r, %r, %r, %r)" % (probe_id, series_id, start_ns, status))

    def sample(self, probe_id, start_ns, status, values):
        values = tuple(values)
        if type(probe_id) is not int or status not in (0, 1) or len(values) % 3:
            self._problem("bad sample(%r, %r, %r)" % (probe_id, status, values[:6]))
            return
        for i in range(0, len(values), 3):
            sid, op, v = values[i:i + 3]
            if type(sid) is not int or op not in (1, 2, 3, 4) or type(v) is not float:
                self._problem("bad value triple %r" % ((sid, op, v),))
                return


class Runtime:
    def __init__(self):
        from msm_provider import Provider, handlers
        mod = types.ModuleType(TARGET)
        mod.__file__ = "<fuzz target>"
        sys.modules[TARGET] = mod
        exec(compile(TARGET_SRC, "<%s>" % TARGET, "exec"), mod.__dict__)
        self.target = mod
        self.sched_cls = mod.Sched  # the class itself, also when a probe wraps mod.Sched
        self.native = StubNative()
        # Handlers: only modules already imported (the target); never import what a
        # mutation names (the refusal is a normal error state of that probe).
        real_load = handlers.load_handler

        def load_handler(path):
            modname = handlers.split_path(path)[0]
            if modname not in sys.modules:
                raise ValueError("fuzz: not importing %s" % modname)
            return real_load(path)
        handlers.load_handler = load_handler
        self.prov = Provider(native=self.native, control_path="/nonexistent/msm-fuzz.json",
                             semaphore=lambda: 1, vllm_version="0.10.0", log=lambda line: None)
        self.generation = 1 << 40

    def snapshot(self):
        """What a refused document must not change: the applied generation, probe states,
        every module attribute (a class or other callable is wrapped by attribute) and
        every function's code (patched in place)."""
        p = self.prov
        attrs = tuple(sorted((k, id(v), getattr(v, "__code__", None))
                             for k, v in vars(self.target).items() if not k.startswith("__")))
        methods = tuple(sorted((k, id(v), getattr(v, "__code__", None))
                               for k, v in vars(self.sched_cls).items()))
        return (p._applied_generation, p._instrumented,
                tuple((q.id, q.state, q.detail) for q in p._probes), attrs, methods)

    def exercise(self):
        """Call every target function as the target would: nothing may reach it."""
        t = self.target
        assert t.plain(3) == 3
        assert t.plain(4, key="k") == 4
        s = t.Sched()
        assert s.schedule(2, 9, phase="prefill", z=1)["n"] == 2
        assert list(t.gen(3)) == [0, 1, 2]
        c = t.coro(5)
        try:
            c.send(None)
        except StopIteration as e:
            assert e.value == 5
        else:
            raise AssertionError("coroutine did not finish")
        with t.block("x") as v:
            assert v == "x"
        try:
            with t.block("y"):
                raise KeyError("inside")
        except KeyError as e:
            assert e.args == ("inside",)

    def check(self, ok_before):
        errs = self.prov._internal_errors
        if errs != ok_before:
            raise AssertionError("the provider counted %d internal error(s)" % (errs - ok_before))
        if self.native.problems:
            raise AssertionError("; ".join(self.native.problems))

    def accepted(self, doc):
        doc = dict(doc)
        before = self.prov._internal_errors
        if not self.prov.apply(doc):
            raise AssertionError("apply refused a document parse_control accepted")
        self.exercise()
        self.check(before)

    def rejected(self, data):
        try:
            doc = json.loads(data.decode("utf-8", "surrogatepass"))
            control.validate_control(doc, "<fuzz>")
        except control.ControlError:
            pass  # JSON of the wrong shape: apply must refuse it too
        except Exception:
            return  # not JSON at all: nothing reaches apply
        else:
            return  # refused for its bytes (size, NaN, UTF-8), not its shape
        before = self.snapshot()
        errs = self.prov._internal_errors
        if self.prov.apply(doc):
            raise AssertionError("apply took a document parse_control refused")
        if self.snapshot() != before:
            raise AssertionError("a refused document changed the applied configuration")
        self.exercise()
        self.check(errs)

    def reset(self, doc):
        """Back to a known good configuration (a seed with a fresh generation)."""
        self.generation += 1
        doc = dict(doc, generation=self.generation)
        self.accepted(doc)

    def close(self):
        self.prov.stop()
        sys.modules.pop(TARGET, None)


# ---------------------------------------------------------------- driver

def run_one(data, runtime):
    """Feed one input. Returns None, or raises (a crash)."""
    try:
        doc = control.parse_control(data, "<fuzz>")
    except control.ControlError:
        if runtime is not None:
            runtime.rejected(data)
        return
    if not isinstance(doc, dict):
        raise AssertionError("parse_control returned %s" % type(doc).__name__)
    if runtime is not None:
        runtime.accepted(doc)


def save_crash(data, seed, n, tb):
    base = "/tmp/fuzz_control-crash-%d-%d" % (seed, n)
    with open(base + ".bin", "wb") as f:
        f.write(data)
    with open(base + ".txt", "w") as f:
        f.write(tb)
    return base + ".bin"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    ap.add_argument("--count", type=int, default=None, help="stop after N inputs")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from time)")
    ap.add_argument("--no-apply", action="store_true",
                    help="only parse_control, no provider (faster)")
    ap.add_argument("--replay", metavar="FILE", help="feed one saved input and report")
    args = ap.parse_args(argv)
    if args.seconds is None and args.count is None:
        args.seconds = 10.0
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % (1 << 31)
    rng = random.Random(seed)
    seed_docs, seed_bytes = make_seeds()
    runtime = None if args.no_apply else Runtime()
    t0 = time.monotonic()
    n = crashes = 0
    try:
        if runtime is not None:
            runtime.reset(seed_docs[0])
        if args.replay:
            with open(args.replay, "rb") as f:
                inputs = iter([f.read()])
        else:
            inputs = None
        while True:
            if args.count is not None and n >= args.count:
                break
            if args.seconds is not None and time.monotonic() - t0 >= args.seconds:
                break
            if inputs is not None:
                data = next(inputs, None)
                if data is None:
                    break
            elif n < len(seed_bytes):
                data = seed_bytes[n]  # the seeds themselves first
            else:
                data = generate(rng, seed_docs, seed_bytes)
            n += 1
            try:
                run_one(data, runtime)
                if runtime is not None and n % 64 == 0:
                    runtime.reset(rng.choice(seed_docs[:3]))
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                crashes += 1
                tb = traceback.format_exc()
                path = save_crash(data, seed, n, tb)
                sys.stderr.write(tb)
                print("fuzz_control: crash at input %d (seed %d): %s: %s; input saved to %s"
                      % (n, seed, type(e).__name__, str(e)[:300], path))
                break
    finally:
        if runtime is not None:
            runtime.close()
        print("fuzz_control: %d inputs, %d crashes (%.1f s)" % (n, crashes, time.monotonic() - t0))
        sys.stdout.flush()
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
