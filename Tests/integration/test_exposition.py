"""The HTTP side: Prometheus text, OpenMetrics, landing page, promtool."""

import re
import shutil
import subprocess

import pytest

from conftest import http_get, metric

ALLOWED_PROMTOOL_LINT = re.compile(r"^vllm_profiling_\S+ metric names should not contain ':'$")


def generate_samples(agent, svc):
    svc.call("sync", n=3)
    svc.call("process", n=2, len=3, scale=2)
    svc.call("process", n=1, len=3, scale=1)
    svc.call("raises", n=2)
    svc.call("summarize", n=1, len=2)
    agent.wait_histogram_count("fixture:sync:duration", 3)
    agent.wait_counter("fixture:process:calls", 1, kind="small")
    agent.wait_counter("fixture:raises:calls", 2)
    agent.wait_histogram_count("fixture:summarize:total", 1)


def test_promtool_check_metrics_is_clean(agent, instrumented):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    generate_samples(agent, instrumented)
    text = agent.scrape().text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [l for l in (proc.stdout + proc.stderr).splitlines()
                if l.strip() and not ALLOWED_PROMTOOL_LINT.match(l.strip())]
    # colons in vllm_profiling_ names are by design (the reference dashboards use them)
    assert proc.returncode in (0, 3) and not problems, "promtool rc=%d:\n%s" % (
        proc.returncode, "\n".join(problems))


def test_metrics_text_format(agent, instrumented):
    generate_samples(agent, instrumented)
    scrape = agent.scrape()
    assert scrape.content_type.startswith("text/plain"), scrape.content_type
    assert "version=0.0.4" in scrape.content_type, scrape.content_type
    # one # TYPE per family, families sorted
    assert len(scrape.family_order) == len(set(scrape.family_order)), "duplicate families"
    assert scrape.family_order == sorted(scrape.family_order), scrape.family_order
    for family in scrape.family_order:
        assert family in scrape.helps, "family %s without # HELP" % family
    # histograms expose _bucket/_sum/_count and +Inf
    for family, kind in scrape.types.items():
        if kind == "histogram" and family.startswith("vllm_profiling_"):
            for _, labels, value in scrape.find(family + "_count"):
                inf = scrape.get(family + "_bucket", le="+Inf",
                                 **{k: v for k, v in labels.items()})
                assert inf == value, (family, labels)
    assert scrape.types[metric("fixture:process:scale2")] == "gauge"
    assert scrape.types.get(metric("fixture:process:calls")) == "counter" or \
        scrape.types.get(metric("fixture:process:calls") + "_total") == "counter"
    assert any(n.startswith("ms_service_metric_") for n in scrape.names()), "no self metrics"


def test_openmetrics_on_accept(agent, instrumented):
    generate_samples(agent, instrumented)
    scrape = agent.scrape(accept="application/openmetrics-text; version=1.0.0")
    assert scrape.content_type.startswith("application/openmetrics-text"), scrape.content_type
    assert scrape.text.endswith("# EOF\n")


def test_landing_page(agent, instrumented):
    status, headers, body = http_get(agent.url + "/")
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert status == 200
    assert ctype.startswith("text/html"), ctype
    assert b"/metrics" in body
