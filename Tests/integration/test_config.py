"""Config handling: check-config, invalid configs on `on`/`restart`, reloads."""

import re
import textwrap

from conftest import BROKEN, FIXTURES, SYMBOLS, count_config, metric, wait_for

# line -> (field the message must name, text on that line of broken_symbols.yaml)
BROKEN_ERRORS = {
    11: ("name", '"bad name!"'),              # not a Prometheus metric name
    17: ("type", "stopwatch"),                # unknown metric type
    19: ("symbol", "fixture_target.sync_fn"),  # no ':' between module and attribute
    24: ("symbol", "- metrics:"),             # entry without symbol
    32: ("buckets", "[0.5, 0.1, 1]"),         # buckets not increasing
}

ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<field>[^:]+?): (?P<problem>.+)$")


def error_lines(stderr, path):
    """Parse 'FILE:LINE: field: problem' lines that name path."""
    found = {}
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("ms-service-metric: "):
            line = line[len("ms-service-metric: "):]
        m = ERROR_LINE.match(line)
        if m and m.group("file") == str(path):
            found.setdefault(int(m.group("line")), []).append(m.group("field"))
    return found


def assert_names_field(found, lineno, field):
    fields = found.get(lineno, [])
    assert any(field in f for f in fields), (
        "line %d: expected field %r in %r" % (lineno, field, fields))


def write_config(path, entries):
    """entries: list of (symbol, [(metric name, type)])"""
    out = []
    for symbol, metrics in entries:
        out.append("- symbol: %s\n  metrics:\n" % symbol)
        for name, kind in metrics:
            out.append("    - name: %s\n      type: %s\n" % (name, kind))
    path.write_text("".join(out))
    return path


CONFIG_A = [
    ("fixture_target:sync_fn", [("fixture:sync:duration", "timer")]),
    ("fixture_target:Worker.method", [("fixture:method:duration", "timer")]),
]
CONFIG_B = CONFIG_A + [
    ("fixture_target:Worker.static_method", [("fixture:staticmethod:duration", "timer")]),
]


# --- check-config ---------------------------------------------------------

def test_check_config_accepts_fixture_config(agent):
    entries, metrics = count_config(SYMBOLS)
    proc = agent.run("check-config", SYMBOLS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "%s: OK (%d symbols, %d metrics)" % (SYMBOLS, entries, metrics)


def test_check_config_reports_every_error_with_exact_line(agent):
    proc = agent.run("check-config", BROKEN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = error_lines(proc.stderr, BROKEN)
    assert sorted(found) == sorted(BROKEN_ERRORS), (
        "error lines %s, expected %s\nstderr:\n%s" % (sorted(found), sorted(BROKEN_ERRORS), proc.stderr))
    for lineno, (field, _text) in BROKEN_ERRORS.items():
        assert_names_field(found, lineno, field)


def test_check_config_yaml_syntax_error(agent, tmp_path):
    bad = tmp_path / "syntax.yaml"
    bad.write_text(textwrap.dedent("""\
        - symbol: fixture_target:sync_fn
          metrics:
            - name: fixture:sync:duration
              type: timer
            labels: [unclosed
        """))
    proc = agent.run("check-config", bad)
    assert proc.returncode == 1
    assert re.search(r"^(ms-service-metric: )?%s:\d+: " % re.escape(str(bad)), proc.stderr, re.M), proc.stderr


def test_check_config_missing_file(agent, tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = agent.run("check-config", missing)
    assert proc.returncode == 1
    assert str(missing) in proc.stderr


def test_check_config_handler_entries(agent, tmp_path):
    handler_config = FIXTURES / "handler_symbols.yaml"
    entries, metrics = count_config(handler_config)
    proc = agent.run("check-config", handler_config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "%s: OK (%d symbols, %d metrics)" % (handler_config, entries, metrics)

    bad = tmp_path / "bad_handler.yaml"
    bad.write_text(textwrap.dedent("""\
        - symbol: fixture_target:sync_fn
          handler: handler_funcs.on_method
          metrics:
            - name: fixture:sync:duration
              type: timer
        - symbol: fixture_target:process
          metrics:
            - name: fixture:process:items
              type: histogram
              expr: len(items)
              labels:
                - name: phase
        """))
    proc = agent.run("check-config", bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = error_lines(proc.stderr, bad)
    assert sorted(found) == [2, 12], proc.stderr
    assert_names_field(found, 2, "handler")
    assert_names_field(found, 12, "labels[0].expr")
    assert "expected module.path:function" in proc.stderr


def test_check_config_prints_warnings_with_line(agent, tmp_path):
    """A label expr on a metric the handler records is ignored: said, with its line."""
    cfg = tmp_path / "warn.yaml"
    cfg.write_text(textwrap.dedent("""\
        - symbol: fixture_target:sync_fn
          handler: handler_funcs:on_call
          metrics:
            - name: fixture:handler:items
              type: counter
              labels:
                - name: kind
                  expr: "'x'"
        """))
    proc = agent.run("check-config", cfg)
    assert proc.returncode == 0, proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning: ")]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("warning: %s:7: " % cfg), warnings  # the label
    assert "ignored" in warnings[0]


# --- on / restart with configs ----------------------------------------------

def test_on_with_broken_config_fails_with_file_and_line(agent, service):
    proc = agent.run("on", "--pid", service.pid, "--config", BROKEN, "--listen", agent.listen)
    assert proc.returncode == 1
    found = error_lines(proc.stderr, BROKEN)
    assert 11 in found, proc.stderr


def test_on_uses_config_from_environment(agent, service):
    env = agent.env(MS_SERVICE_METRIC_VLLM_CONFIG=str(SYMBOLS))
    agent.on(service.pid, config=None, env=env)
    assert agent.status()["config"] == str(SYMBOLS)
    service.call("sync", n=3)
    agent.wait_histogram_count("fixture:sync:duration", 3)


def test_restart_keeps_unchanged_counters_and_adds_new_series(agent, service, tmp_path):
    a = write_config(tmp_path / "a.yaml", CONFIG_A)
    b = write_config(tmp_path / "b.yaml", CONFIG_B)
    agent.on(service.pid, config=a)
    generation = agent.status()["generation"]
    service.call("sync", n=10)
    service.call("method", n=4)
    agent.wait_histogram_count("fixture:sync:duration", 10)
    agent.wait_histogram_count("fixture:method:duration", 4)
    assert agent.scrape().histogram(metric("fixture:staticmethod:duration"), dp="-1") is None

    proc = agent.restart(b)
    assert proc.returncode == 0, proc.stderr
    status = agent.status()
    assert status["config"] == str(b)
    assert status["generation"] > generation
    # unchanged series keep their counts across the reload
    scrape = agent.scrape()
    assert scrape.histogram(metric("fixture:sync:duration"), dp="-1")["count"] == 10
    assert scrape.histogram(metric("fixture:method:duration"), dp="-1")["count"] == 4

    service.call("sync", n=5)
    service.call("staticmethod", n=3)
    agent.wait_histogram_count("fixture:sync:duration", 15)
    agent.wait_histogram_count("fixture:staticmethod:duration", 3)
    assert agent.scrape().histogram(metric("fixture:method:duration"), dp="-1")["count"] == 4


def test_restart_without_config_rereads_the_same_file(agent, service, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", CONFIG_A)
    agent.on(service.pid, config=cfg)
    write_config(cfg, CONFIG_B)
    proc = agent.restart()
    assert proc.returncode == 0, proc.stderr
    service.call("staticmethod", n=6)
    agent.wait_histogram_count("fixture:staticmethod:duration", 6)


def test_restart_with_broken_config_fails_and_keeps_old_config(agent, service, tmp_path):
    a = write_config(tmp_path / "a.yaml", CONFIG_A)
    agent.on(service.pid, config=a)
    service.call("sync", n=10)
    agent.wait_histogram_count("fixture:sync:duration", 10)
    generation = agent.status()["generation"]

    proc = agent.restart(BROKEN)
    assert proc.returncode == 1
    found = error_lines(proc.stderr, BROKEN)
    assert sorted(found) == sorted(BROKEN_ERRORS), proc.stderr

    status = agent.status()
    assert status["config"] == str(a)
    assert status["generation"] == generation
    target = agent.target(status, service.pid)
    assert target["state"] == "attached"
    service.call("sync", n=5)
    agent.wait_histogram_count("fixture:sync:duration", 15)
