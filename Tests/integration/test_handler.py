"""Results beyond one value per call, with the real agent and the fixture service:
a value expression returning a dict (labelled results, `key`), and `handler:`
functions (Tests/fixtures/handler_funcs.py) that record declared metrics."""

from pathlib import Path

from conftest import FIXTURES, metric, wait_for

CONFIG = FIXTURES / "handler_symbols.yaml"
assert Path(CONFIG).is_file()


def test_dict_result_gives_one_series_per_key(agent, service, baseline):
    agent.on(service.pid, config=CONFIG)
    got = service.call("process", n=3, len=4, scale=2)
    assert got["results"] == baseline.call("process", n=3, len=4, scale=2)["results"]
    service.call("process", n=2, len=1, scale=7)

    items = agent.wait_histogram_count("handler:process:parts", 5, part="items")
    assert items["sum"] == 3 * 4 + 2 * 1
    scale = agent.wait_histogram_count("handler:process:parts", 5, part="scale")
    assert scale["sum"] == 3 * 2 + 2 * 7
    assert scale["buckets"][2.0] == 3 and scale["buckets"][5.0] == 3 and scale["buckets"][10.0] == 5
    scrape = agent.scrape()
    parts = {l["part"] for _, l, _ in scrape.find(metric("handler:process:parts") + "_count")}
    assert parts == {"items", "scale"}, "a None entry must not make a series: %r" % parts

    agent.wait_counter("handler:process:part_total", 3 * 4 + 2 * 1, part="items")
    agent.wait_counter("handler:process:part_total", 3 * 2 + 2 * 7, part="scale")
    assert scrape.get(metric("handler:process:part_last"), part="items", dp="-1") == 1
    assert scrape.get(metric("handler:process:part_last"), part="scale", dp="-1") == 7
    status = agent.status()
    assert status["expression_errors"] == 0, status["notes"]


# --- handler: module:function ---------------------------------------------------

def test_handler_records_declared_metrics_with_labels(agent, service, baseline):
    agent.on(service.pid, config=CONFIG)
    got = service.call("method", n=5)  # Worker(base=10).method(i), i = 0..4
    assert got["results"] == baseline.call("method", n=5)["results"]

    agent.wait_histogram_count("handler:method:duration", 5)
    even = agent.wait_histogram_count("handler:method:x", 3, parity="even")
    odd = agent.wait_histogram_count("handler:method:x", 2, parity="odd")
    assert even["sum"] == 0 + 2 + 4 and odd["sum"] == 1 + 3
    assert odd["buckets"][1.0] == 1 and odd["buckets"][5.0] == 2
    agent.wait_counter("handler:method:calls", 5, base=10)
    scrape = agent.scrape()
    assert scrape.get(metric("handler:method:last_ret"), dp="-1") == 10 + 4
    probe = agent.probe(agent.status(), service.pid, "fixture_target:Worker.method")
    assert probe["state"] == "active", probe
    assert agent.status()["expression_errors"] == 0


def test_raising_handler_is_counted_and_results_unchanged(agent, service, baseline):
    agent.on(service.pid, config=CONFIG)
    got = service.call("sync", n=7)
    assert got["results"] == baseline.call("sync", n=7)["results"] and got["errors"] == []
    agent.wait_histogram_count("handler:sync:duration", 7)
    status = wait_for(lambda: (lambda s: s if s["expression_errors"] >= 7 else None)(agent.status()),
                      timeout=10, what="7 expression errors reported")
    assert status["expression_errors"] == 7, status["notes"]
    assert any("handler handler_funcs:broken" in n and "RuntimeError: broken handler" in n
               for n in status["notes"]), status["notes"]


def test_missing_handler_module_in_status_and_reference_handler_not_an_error(agent, service, baseline):
    agent.on(service.pid, config=CONFIG)
    status = agent.status()
    missing = agent.probe(status, service.pid, "fixture_target:Worker.static_method")
    assert missing["state"] == "error", missing
    assert "handler handler_missing_module:on_call: cannot import module handler_missing_module" \
        in missing["detail"], missing
    builtin = agent.probe(status, service.pid, "fixture_target:Worker.class_method")
    assert builtin["state"] == "builtin_handler_unavailable", builtin
    assert "Config/default.yaml" in builtin["detail"]

    # the target keeps running, unmeasured where the handler is missing
    got = service.call("staticmethod", n=3)
    assert got["results"] == baseline.call("staticmethod", n=3)["results"]
    got = service.call("classmethod", n=4)
    assert got["results"] == baseline.call("classmethod", n=4)["results"]
    agent.wait_histogram_count("handler:classmethod:duration", 4)
    service.call("method", n=2)
    agent.wait_histogram_count("handler:method:duration", 2)
    scrape = agent.scrape()
    static = scrape.histogram(metric("handler:static:duration"), dp="-1")
    assert static is None or static["count"] == 0, static  # not patched: nothing measured
    assert not scrape.find(metric("handler:classmethod:by_handler") + "_count")
