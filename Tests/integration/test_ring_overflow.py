"""A full ring buffer loses series announcements like any other record; the series must come
back without a restart (issue 8, item 9): the agent sees samples of series ids a target
never announced and asks its provider, through the control file, to announce again.

The agent runs with a 64 KiB ring buffer ($MS_SERVICE_METRIC_RING_BYTES): 600 new series in
one burst (an announcement takes a 2 KiB record) overflow it many times over.
"""

import time

from conftest import metric, wait_for

CONFIG = """\
- symbol: fixture_target:sync_fn
  metrics:
    - name: overflow:calls
      type: counter
      expr: "1"
      labels:
        - {name: x, expr: "str(x)"}
"""
N = 600


def series(agent):
    return {l["x"] for _, l, _ in agent.scrape().find(metric("overflow:calls") + "_total")}


def test_series_whose_announcement_was_lost_come_back(agent, service, tmp_path):
    config = tmp_path / "overflow.yaml"
    config.write_text(CONFIG)
    agent.on(service.pid, config=config, env=agent.env(MS_SERVICE_METRIC_RING_BYTES="65536"))
    assert service.call("sync", n=N)["errors"] == []
    # The burst is ingested once the event counter stands still.
    seen = []

    def still():
        seen.append(agent.scrape().counter("ms_service_metric_events", 0))
        return len(seen) > 2 and seen[-1] == seen[-2] == seen[-3]

    wait_for(still, 10, interval=0.2, what="the event counter still")
    drops = agent.scrape().counter("ms_service_metric_drops", 0)
    first = series(agent)
    assert drops > 0 and len(first) < N, "the burst did not overflow the ring (drops %r, %d series)" % (drops, len(first))
    print("\nafter the burst: %d of %d series, %d records dropped" % (len(first), N, drops))

    # Calls go on (the kind of traffic that made the orphans); each x is called again.
    def all_back():
        service.call("sync", n=N)
        return len(series(agent)) == N

    t0 = time.monotonic()
    wait_for(all_back, 60, interval=0.5, what="every series back")
    print("all %d series back after %.1f s" % (N, time.monotonic() - t0))
    assert "asked the provider to announce its series again" in agent.log()
