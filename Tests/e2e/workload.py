"""Known workloads for a real `vllm serve` and the ground truth they produce.

Every request goes through the OpenAI API with ``ignore_eos`` and ``temperature 0``, so
each one generates exactly ``max_tokens`` tokens; the ``usage`` block of every answer is
kept so tests can compare the agent's token histograms with what the API reported.
Also: vLLM's own ``/metrics`` scraped and parsed, and a streaming request abandoned
mid-stream (the client closes the connection).
"""

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vllm_harness import http_json

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """[(name, {labels}, value)] of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                v = float(m.group(3))
            except ValueError:
                continue
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), v))
    return samples


def total(samples, name, **labels):
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for n, l, v in samples
               if n == name and all(l.get(k) == str(x) for k, x in labels.items()))


def present(samples, name, **labels):
    return any(n == name and all(l.get(k) == str(x) for k, x in labels.items())
               for n, l, _ in samples)


def label_values(samples, name, label):
    return sorted({l.get(label) for n, l, _ in samples if n == name and label in l})


def buckets(samples, name, **labels):
    """{le: cumulative count} of histogram ``name`` (summed over matching series)."""
    out = {}
    for n, l, v in samples:
        if n == name + "_bucket" and all(l.get(k) == str(x) for k, x in labels.items()):
            le = float(l["le"])
            out[le] = out.get(le, 0) + v
    return out


def delta(after, before, name, **labels):
    return total(after, name, **labels) - total(before, name, **labels)


def vllm_metrics(server):
    """vLLM's own /metrics, parsed."""
    import urllib.request
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as resp:
        return parse_prometheus(resp.read().decode())


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------

@dataclass
class Sent:
    """Ground truth of what a workload sent and what the API answered."""
    completions: int = 0
    chats: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    per_request: list = field(default_factory=list)   # (kind, prompt_tokens, completion_tokens)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self):
        return self.completions + self.chats

    def add(self, kind, usage):
        with self.lock:
            if kind == "chat":
                self.chats += 1
            else:
                self.completions += 1
            self.prompt_tokens += usage["prompt_tokens"]
            self.completion_tokens += usage["completion_tokens"]
            self.per_request.append((kind, usage["prompt_tokens"], usage["completion_tokens"]))


def prompt_text(i, words=6):
    """A prompt of about ``words`` words, different for every ``i``."""
    base = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
            "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
    return "request %d: " % i + " ".join(base[(i + k) % len(base)] for k in range(words))


def completion(server, i, max_tokens=8, words=6, sent=None, timeout=300):
    status, body, _ = http_json(server.base_url + "/v1/completions", {
        "model": server.model, "prompt": prompt_text(i, words), "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True}, timeout=timeout)
    assert status == 200, "completion %d: HTTP %d %s" % (i, status, body)
    assert body["usage"]["completion_tokens"] == max_tokens, body["usage"]
    if sent is not None:
        sent.add("completion", body["usage"])
    return body["usage"]


def chat(server, i, max_tokens=8, words=6, sent=None, timeout=300):
    status, body, _ = http_json(server.base_url + "/v1/chat/completions", {
        "model": server.model, "messages": [{"role": "user", "content": prompt_text(i, words)}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}, timeout=timeout)
    assert status == 200, "chat %d: HTTP %d %s" % (i, status, body)
    assert body["usage"]["completion_tokens"] == max_tokens, body["usage"]
    if sent is not None:
        sent.add("chat", body["usage"])
    return body["usage"]


def sequential(server, n_completions, n_chats, sent, max_tokens=8, first=0):
    for i in range(n_completions):
        completion(server, first + i, max_tokens, sent=sent)
    for i in range(n_chats):
        chat(server, first + n_completions + i, max_tokens, sent=sent)


def concurrent(server, n_completions, n_chats, sent, max_tokens=8, words=6, first=0, workers=None):
    """n_completions + n_chats requests in flight at once (one thread each)."""
    jobs = [("completion", first + i) for i in range(n_completions)] + \
           [("chat", first + n_completions + i) for i in range(n_chats)]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        kind, i = job
        barrier.wait(timeout=60)
        fn = chat if kind == "chat" else completion
        return fn(server, i, max_tokens, words=words, sent=sent)

    with ThreadPoolExecutor(max_workers=workers or len(jobs)) as pool:
        for f in [pool.submit(run, j) for j in jobs]:
            f.result(timeout=600)


def abandoned_stream(server, max_tokens=400, chunks=3):
    """Starts a streaming completion, reads ``chunks`` SSE events and closes the
    connection while the request is still generating. Returns the events read."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": server.model, "prompt": prompt_text(999, 6),
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    events = []
    while len(events) < chunks:
        line = resp.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
    conn.sock.close()   # the client goes away mid-stream
    conn.close()
    return events


def settle_events(agent, timeout=30):
    """Waits until the agent's event counter stands still for a second (everything in
    flight was ingested): an exact count asserted afterwards also sees late duplicates."""
    last = {}

    def still():
        value = total(agent.scrape(), "ms_service_metric_events_total")
        now = time.monotonic()
        if last.get("value") != value:
            last.update(value=value, since=now)
        return now - last["since"] >= 1.0

    wait_until(still, timeout, "the agent's event counter to stand still", interval=0.2)


def wait_until(cond, timeout, what, interval=0.2):
    """Polls ``cond`` until it returns a true value (returned); AssertionError with the
    last value seen after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s; last: %r" % (timeout, what, last))
