"""Results beyond one value per call, with the real agent and the fixture service:
a value expression returning a dict (labelled results, `key`)."""

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
