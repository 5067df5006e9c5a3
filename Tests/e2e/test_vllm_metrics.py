"""The built-in config (Config/default.yaml) against real `vllm serve` processes.

For each server shape (plain; --max-num-seqs 4; --small-kv; --dp 2) one server is started
(class-scoped, so only one vLLM runs at a time), the agent attaches live with
`on --pid <api server> --config Config/default.yaml`, a known workload is sent and the
agent's numbers are checked against independent ground truth: the requests sent, the
`usage` the API returned, vLLM's own /metrics (vllm:*) and its cache configuration.

    python3 -m pytest -v -s Tests/e2e/test_vllm_metrics.py

Needs root, the agent binary ($MSM_BIN) and scripts/vllm-setup.sh (skipped otherwise).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from msm_agent import CONFIG, Agent, msm_bin
from vllm_harness import (STOP, VLLM_MODEL_DIR, format_process_tree, free_port, http_json,
                          start_vllm_server, vllm_missing_reason)
import workload as wl
from workload import Sent, buckets, delta, present, total, wait_until

P = "vllm_profiling_"
GENERATE = P + "engine:generate:duration_count"
CHAT = P + "server:create_chat_completion:duration_count"
STEP = P + "engine_core:engine_core_step:duration_count"


def _skip_reason():
    reason = vllm_missing_reason()
    if reason:
        return reason
    if not msm_bin().is_file():
        return "agent binary not found at %s (build it or set MSM_BIN)" % msm_bin()
    if os.geteuid() != 0:
        return "needs root (ptrace, BPF)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


# --------------------------------------------------------------------------
# one server + one attached agent per test class
# --------------------------------------------------------------------------

class Deployment:
    def __init__(self, server, agent, tree):
        self.server = server
        self.agent = agent
        self.tree = tree
        self.data = {}

    def pids(self, prefix):
        return [p for p, _, t in self.tree if t.startswith(prefix)]

    def snapshot(self):
        return self.agent.scrape(), wl.vllm_metrics(self.server)

    def settle(self, timeout=60):
        """Waits until the front end has finished accounting for every request (the
        agent's generate count and vLLM's request count are stable)."""
        self.agent.settle(GENERATE, timeout=timeout)
        self.agent.settle(P + "input_count", timeout=timeout)


def _deploy(request, *options, env=None, stop_timeout=30):
    work = tempfile.mkdtemp(prefix="msmm-", dir="/tmp")   # short: zmq ipc path limit
    server = start_vllm_server(work, *options, env=env)
    print("\nvllm serve %s: pid %d on %s, started in %.1f s" % (
        " ".join(options) or "(plain)", server.pid, server.base_url, server.start_seconds))
    agent = Agent()
    failed = request.session.testsfailed
    try:
        wl.completion(server, 0)   # answers before we attach
        tree = server.process_tree()
        print(format_process_tree(tree))
        expect = [p for p, _, t in tree
                  if t.startswith(("VLLM::EngineCore", "VLLM::Worker", "VLLM::APIServer"))]
        expect.append(server.pid)
        t0 = time.monotonic()
        agent.attach(server, expect)
        print("attached to %d processes in %.1f s" % (len(expect), time.monotonic() - t0))
        yield Deployment(server, agent, tree)
    finally:
        agent.off()
        if request.session.testsfailed > failed:
            print("\n==== agent commands ====\n" + "\n".join(agent.history[-12:]))
            print("==== agent.log (tail) ====\n" + agent.log()[-6000:])
            print("==== vllm log (tail) ====\n" + server.log_tail(30))
        agent.cleanup()
        server.stop(timeout=stop_timeout)
        shutil.rmtree(work, ignore_errors=True)


def _probe_problems(agent):
    """Probe states other than active / not_found / not_present / version_excluded, and
    expression errors, per process."""
    st = agent.status()
    bad = []
    for t in st["targets"]:
        for p in t.get("probes", []):
            if p["state"] not in ("active", "not_found", "not_present", "version_excluded"):
                bad.append("pid %d %s: %s %s" % (t["pid"], p["symbol"], p["state"], p.get("detail")))
    return st, bad


def _status_check(dep):
    st, bad = _probe_problems(dep.agent)
    assert not bad, "probes in error:\n" + "\n".join(bad)
    assert st["expression_errors"] == 0, "expression errors:\n" + dep.agent.status_text()
    return st


# ==========================================================================
# plain server: counts, tokens, latencies, KV blocks, exceptions
# ==========================================================================

@pytest.fixture(scope="class")
def plain(request):
    # VLLM_KEEP_ALIVE_ON_ENGINE_DEATH: the last test kills the engine core and asks /health.
    # Without it the API server's watchdog (a 5 s tick) shuts the server down once it sees
    # the dead engine, so a /health poll can land only on "connection refused" (CI, once).
    yield from _deploy(request, env={"VLLM_SERVER_DEV_MODE": "1",
                                     "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})


@pytest.fixture(scope="class")
def plain_workload(plain):
    """5 completions + 5 chats one after another, then 10 + 10 at once."""
    dep = plain
    dep.settle()
    before = dep.snapshot()
    sent = Sent()
    wl.sequential(dep.server, 5, 5, sent, max_tokens=8, first=100)
    wl.concurrent(dep.server, 10, 10, sent, max_tokens=12, first=200)
    dep.settle()
    after = dep.snapshot()
    print("sent %d requests (%d chat), %d prompt + %d completion tokens" % (
        sent.requests, sent.chats, sent.prompt_tokens, sent.completion_tokens))
    return dep, before, after, sent


class TestPlainServer:
    def test_status_has_no_errors_and_ascend_symbols_not_present(self, plain):
        st = _status_check(plain)
        ascend = [p for p in st["probes"] if p["symbol"].startswith("vllm_ascend.")]
        assert ascend, "no vllm_ascend symbols in the default config"
        for p in ascend:
            assert set(p["states"]) == {"not_present"}, p
        print(plain.agent.status_text())

    def test_request_counts(self, plain_workload):
        dep, (a0, v0), (a1, v1), sent = plain_workload
        n = sent.requests
        assert delta(a1, a0, GENERATE, dp=-1) == n
        assert delta(a1, a0, CHAT, dp=-1) == sent.chats
        assert delta(a1, a0, P + "engine:async_add_request:duration_count", dp=-1) == n
        assert delta(a1, a0, P + "engine:tokenizer_encode_count", dp=-1) == n
        assert delta(a1, a0, P + "scheduler:add_request:duration_count", dp=0) == n
        # vLLM agrees on the number of finished requests
        assert delta(v1, v0, "vllm:request_success_total") == n

    def test_token_histograms_equal_api_usage(self, plain_workload):
        dep, (a0, v0), (a1, v1), sent = plain_workload
        assert delta(a1, a0, P + "input_count", engine=0) == sent.requests
        assert delta(a1, a0, P + "output_count", engine=0) == sent.requests
        assert delta(a1, a0, P + "input_sum", engine=0) == sent.prompt_tokens
        assert delta(a1, a0, P + "output_sum", engine=0) == sent.completion_tokens
        # all input/output series come from the API server
        assert wl.label_values(a1, P + "input_count", "dp") == ["-1"]
        # per iteration: prompt tokens (once, at the first token) + generated tokens
        assert delta(a1, a0, P + "total_tokens_sum", engine=0) == sent.prompt_tokens + sent.completion_tokens

    def test_scheduled_tokens_match_vllm_token_counters(self, plain_workload):
        """Every scheduled token is either a computed prompt token or the input of a
        decode step (each request's first token comes from its prefill step)."""
        dep, (a0, v0), (a1, v1), sent = plain_workload
        computed = delta(v1, v0, "vllm:prompt_tokens_by_source_total", source="local_compute")
        generated = delta(v1, v0, "vllm:generation_tokens_total")
        assert generated == sent.completion_tokens
        scheduled = delta(a1, a0, P + "scheduler:phase_scheduled_token_counter_total", dp=0)
        assert scheduled == computed + generated - sent.requests, (scheduled, computed, generated)
        per_phase = {ph: delta(a1, a0, P + "scheduler:phase_scheduled_token_counter_total", req_phase=ph)
                     for ph in ("prefill", "decode", "mixed")}
        print("scheduled tokens per batch phase:", per_phase)
        assert per_phase["prefill"] > 0 and per_phase["decode"] > 0
        # one observation per non-empty schedule, in each per-phase histogram
        batches = delta(a1, a0, P + "scheduler:phase_batch_size_count", dp=0)
        assert batches == delta(a1, a0, P + "scheduler:phase_scheduled_tokens_count", dp=0) > 0
        assert delta(a1, a0, P + "scheduler:phase_batch_size_sum", dp=0) == \
            delta(a1, a0, P + "scheduler:batch_size_sum", dp=0)
        # every schedule() is timed and observed once
        assert delta(a1, a0, P + "scheduler:duration_count", dp=0) == \
            delta(a1, a0, P + "scheduler:batch_size_count", dp=0) >= batches

    def test_ttft_tpot_agree_with_vllm_histograms(self, plain_workload):
        dep, (a0, v0), (a1, v1), sent = plain_workload
        n = sent.requests
        for ours, theirs in ((P + "fine_grained_ttft", "vllm:time_to_first_token_seconds"),
                             (P + "fine_grained_tpot", "vllm:request_time_per_output_token_seconds")):
            assert delta(a1, a0, ours + "_count", engine=0) == n, ours
            assert delta(v1, v0, theirs + "_count", engine=0) == n, theirs
            s_ours = delta(a1, a0, ours + "_sum", engine=0)
            s_theirs = delta(v1, v0, theirs + "_sum", engine=0)
            assert math.isclose(s_ours, s_theirs, rel_tol=1e-6, abs_tol=1e-6), (ours, s_ours, s_theirs)
            # same bucket bounds as vLLM: identical cumulative counts per bucket
            b_ours = {k: buckets(a1, ours, engine=0).get(k, 0) - buckets(a0, ours, engine=0).get(k, 0)
                      for k in buckets(a1, ours, engine=0)}
            b_theirs = {k: buckets(v1, theirs, engine=0).get(k, 0) - buckets(v0, theirs, engine=0).get(k, 0)
                        for k in buckets(v1, theirs, engine=0)}
            assert b_ours == b_theirs, (ours, b_ours, b_theirs)
        # slow-token counters = vLLM's observations above the same bounds
        itl = "vllm:inter_token_latency_seconds"
        over_1s = delta(v1, v0, itl + "_count") - (buckets(v1, itl).get(1.0, 0) - buckets(v0, itl).get(1.0, 0))
        assert delta(a1, a0, P + "decode_over_1s_count_total", dp=-1) == over_1s
        ttft = "vllm:time_to_first_token_seconds"
        for threshold in (5, 10, 20):
            over = delta(v1, v0, ttft + "_count") - (buckets(v1, ttft).get(float(threshold), 0)
                                                     - buckets(v0, ttft).get(float(threshold), 0))
            assert delta(a1, a0, P + "prefill_over_threshold_count_total", threshold=threshold) == over
        # every request generated >= 2 tokens: one second-token gap each
        assert delta(a1, a0, P + "second_token_latency_count", dp=-1) == n
        itl_sum = delta(v1, v0, "vllm:inter_token_latency_seconds_sum")
        assert 0 < delta(a1, a0, P + "second_token_latency_sum", dp=-1) < itl_sum

    def test_stage_timers_count_engine_steps(self, plain_workload):
        dep, (a0, v0), (a1, v1), sent = plain_workload
        steps = delta(a1, a0, STEP, dp=0)
        assert steps >= max(r[2] for r in sent.per_request)
        assert delta(a1, a0, P + "engine_core:process_engine_step:duration_count", dp=0) == steps
        assert delta(a1, a0, P + "scheduler:update_from_output:duration_count", dp=0) == steps
        assert delta(a1, a0, P + "executor:execute_model:duration_count", dp=0) == steps
        # the worker's execute_model runs for every step (also for an empty schedule),
        # inputs are prepared only when something was scheduled
        assert delta(a1, a0, P + "executor:model_runner_execute_model:duration_count", dp=0) == steps
        assert delta(a1, a0, P + "executor:prepare_inputs:duration_count", dp=0) == \
            steps - delta(a1, a0, STEP, dp=0, phase="idle")
        # vLLM's own iteration count: one vllm:iteration_tokens observation per output batch
        assert delta(a1, a0, P + "async_llm:record_stats:duration_count", dp=-1) >= \
            delta(v1, v0, "vllm:iteration_tokens_total_count")
        assert delta(a1, a0, P + "output_processor_duration_count", dp=-1) == \
            delta(a1, a0, P + "engine_core_outputs_len_count", dp=-1) > 0
        phases = wl.label_values(a1, STEP, "phase")
        assert {"prefill", "decode"} <= set(phases), phases
        names = wl.label_values(a1, P + "record_function_or_nullcontext_count", "name")
        assert {"gpu_model_runner: preprocess", "gpu_model_runner: forward", "gpu_model_runner: postprocess",
                "gpu_model_runner: sample", "schedule: update_after_schedule"} <= set(names), names
        # the model runs once per step that scheduled something, like prepare_inputs
        def forward(samples):   # `name` is a label here, not delta's argument
            return sum(v for n, l, v in samples if n == P + "record_function_or_nullcontext_count"
                       and l.get("name") == "gpu_model_runner: forward" and l.get("role") == "worker"
                       and l.get("dp") == "0")
        assert forward(a1) - forward(a0) == delta(a1, a0, P + "executor:prepare_inputs:duration_count", dp=0)

    def test_kv_blocks_agree_with_vllm(self, plain_workload):
        dep, _, _, _ = plain_workload
        a, v = dep.snapshot()
        info = [l for n, l, _ in v if n == "vllm:cache_config_info"]
        num_gpu_blocks = int(info[0]["num_gpu_blocks"])
        # the null block (block 0) is counted by vLLM but never allocatable
        assert total(a, P + "total_kvcache_blocks", dp=0) == num_gpu_blocks - 1
        free = total(a, P + "free_kvcache_blocks", dp=0)
        alloc = total(a, P + "allocated_kvcache_blocks", dp=0)
        assert free + alloc == num_gpu_blocks - 1
        usage = 1 - free / (num_gpu_blocks - 1)
        assert math.isclose(usage, total(v, "vllm:kv_cache_usage_perc"), abs_tol=1e-9), \
            (usage, total(v, "vllm:kv_cache_usage_perc"))

    def test_seqlen_of_a_lone_request(self, plain_workload):
        """The last schedule of a lone request is its last decode step: context =
        prompt + generated - 1 tokens."""
        dep = plain_workload[0]
        usage = wl.completion(dep.server, 777, max_tokens=10)
        expect = usage["prompt_tokens"] + usage["completion_tokens"] - 1
        wait_until(lambda: total(dep.agent.scrape(), P + "scheduler:seqlen:sum", dp=0) == expect,
                   20, "scheduler:seqlen:sum == %d" % expect)
        assert total(dep.agent.scrape(), P + "scheduler:seqlen:avg", dp=0) == expect

    def test_abandoned_stream_is_aborted(self, plain_workload):
        """A client that goes away mid-stream: vLLM aborts the request and the agent counts one
        more AsyncLLM.abort call and one more generate(). Ground truth from vLLM's own metrics
        (vLLM 0.32 does not count a client's abort in request_success_total): the request left
        the engine (nothing running or waiting) without being counted as finished, having
        generated fewer tokens than it asked for. A request the engine finished before the
        disconnect reached it (success +1) proves nothing about aborts: it is retried with a
        new one, at most 4 times."""
        dep = plain_workload[0]
        attempts = []
        max_tokens = 480  # as many as max-model-len 512 allows: the close comes far earlier
        for attempt in range(4):
            a0, v0 = dep.agent.scrape(), wl.vllm_metrics(dep.server)
            events = wl.abandoned_stream(dep.server, max_tokens=max_tokens, chunks=2)
            assert len(events) == 2, events

            def left_the_engine():
                v = wl.vllm_metrics(dep.server)
                busy = total(v, "vllm:num_requests_running") + total(v, "vllm:num_requests_waiting")
                return v if busy == 0 else None

            v1 = wait_until(left_the_engine, 60, "the abandoned request to leave the engine")
            finished = delta(v1, v0, "vllm:request_success_total")
            generated = delta(v1, v0, "vllm:generation_tokens_total")
            attempts.append({"finished": finished, "generated": generated})
            if finished == 0:
                assert 0 < generated < max_tokens, attempts
                break
        else:
            raise AssertionError("vLLM finished every abandoned stream before the disconnect "
                                 "reached it in %d attempts: %s" % (len(attempts), attempts))
        seen = []

        def counted():
            a = dep.agent.scrape()
            seen.append((delta(a, a0, GENERATE, dp=-1),
                         delta(a, a0, P + "async_llm:abort_requests:duration_count", dp=-1)))
            return seen[-1] == (1, 1)

        try:
            wait_until(counted, 30, "the abandoned generate() timed and one abort recorded")
        except AssertionError as e:
            raise AssertionError("%s; (generate, abort) deltas last seen: %s; vLLM side %s" % (
                e, seen[-1:], attempts)) from None
        # Nothing more arrives later (a duplicate would show here).
        wl.settle_events(dep.agent)
        assert seen[-1] == (delta(dep.agent.scrape(), a0, GENERATE, dp=-1),
                            delta(dep.agent.scrape(), a0, P + "async_llm:abort_requests:duration_count", dp=-1))

    def test_failing_rpc_counted_by_exception_type(self, plain_workload):
        dep = plain_workload[0]
        a0 = dep.agent.scrape()
        status, body, _ = http_json(dep.server.base_url + "/collective_rpc",
                                    {"method": "msm_no_such_method"}, timeout=60)
        assert status == 500, (status, body)
        a1 = wait_until(lambda: (lambda s: s if delta(s, a0, P + "rpc_errors_total", dp=0) == 1 else None)(
            dep.agent.scrape()), 20, "rpc_errors +1 in the engine core")
        types = wl.label_values(a1, P + "rpc_errors_total", "exception_type")
        print("rpc_errors exception types:", types)
        assert types and all(t and "(" not in t for t in types), types
        # the server still answers
        wl.completion(dep.server, 778)

    def test_no_expression_errors_after_the_workload(self, plain_workload):
        dep = plain_workload[0]
        _status_check(dep)

    def test_reference_tool_config_with_its_handler_maps_to_the_built_ins(self, plain_workload, tmp_path):
        """A reference-tool config naming that tool's own scheduler handler: `restart` maps it
        onto the built-in scheduler metrics, which then count; the default config comes back."""
        dep = plain_workload[0]
        ref = tmp_path / "reference.yaml"
        ref.write_text("- symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule\n"
                       "  handler: ms_service_metric.handlers.scheduler:schedule_handler\n"
                       "  metrics:\n"
                       "    - name: scheduler:phase_tokens\n"
                       "      type: histogram\n"
                       "      labels:\n"
                       "        - name: req_phase\n")
        try:
            proc = dep.agent.run("restart", "--config", ref)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "mapped to ms-service-metric's built-in metrics" in proc.stdout, proc.stdout
            st, bad = _probe_problems(dep.agent)
            assert not bad, bad
            b0 = total(dep.agent.scrape(), P + "scheduler:batch_size_count", dp=0)
            for i in range(3):
                wl.completion(dep.server, 880 + i)
            wait_until(lambda: total(dep.agent.scrape(), P + "scheduler:batch_size_count", dp=0) >= b0 + 3,
                       20, "scheduler:batch_size counted under the mapped config")
        finally:
            proc = dep.agent.run("restart", "--config", CONFIG)
            assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_health_check_failed_when_the_engine_dies(self, plain_workload):
        """Last test of the class: kills the engine core; /health must fail and count."""
        dep = plain_workload[0]
        engine = dep.pids("VLLM::EngineCore")
        assert engine, format_process_tree(dep.tree)
        a0 = dep.agent.scrape()
        os.kill(engine[0], signal.SIGKILL)
        codes = []

        def health_failed():
            try:
                status, _, _ = http_json(dep.server.base_url + "/health", timeout=5)
            except OSError as e:   # the API server may be shutting down
                codes.append(repr(e))
                return None
            codes.append(status)
            return status != 200

        wait_until(health_failed, 60, "/health failing after the engine core was killed", 0.5)
        print("/health answers after the kill:", codes[-5:])
        wait_until(lambda: delta(dep.agent.scrape(), a0, P + "health_check_failed_total", dp=-1) >= 1,
                   20, "health_check_failed counted")


# ==========================================================================
# --max-num-seqs 4: the waiting queue fills, running stays <= 4
# ==========================================================================

@pytest.fixture(scope="class")
def four_seqs(request):
    yield from _deploy(request, "--max-num-seqs", "4")


class TestMaxNumSeqs4:
    def test_waiting_fills_and_running_stays_at_most_4(self, four_seqs):
        dep = four_seqs
        dep.settle()
        a0, v0 = dep.snapshot()
        sent = Sent()
        wl.concurrent(dep.server, 10, 10, sent, max_tokens=16, first=300)
        dep.settle()
        a1, v1 = dep.snapshot()
        assert delta(a1, a0, GENERATE, dp=-1) == 20

        def observations(name, bound, **labels):
            n = delta(a1, a0, name + "_count", **labels)
            le = buckets(a1, name, **labels).get(bound, 0) - buckets(a0, name, **labels).get(bound, 0)
            return n, le

        # waiting: some observations above 0 (front end: engine label; scheduler: req_phase)
        n, zero = observations(P + "waiting_batch_size", 0.0, engine=0)
        assert n > 0 and zero < n, (n, zero)
        n, zero = observations(P + "waiting_phase_batch_size", 0.0, req_phase="prefill")
        assert n > 0 and zero < n, (n, zero)
        # running never above 4, and reaching 4
        for name, labels in ((P + "batch_size", {"engine": 0}),
                             (P + "scheduler:running_queue_size", {"dp": 0}),
                             (P + "scheduler:batch_size", {"dp": 0})):
            n, le4 = observations(name, 4.0, **labels)
            assert n > 0 and le4 == n, (name, n, le4)
            n, le2 = observations(name, 2.0, **labels)
            assert le2 < n, (name, "never more than 2 running", n, le2)
        running_total = sum(observations(P + "running_phase_batch_size", 4.0, req_phase=ph)[0]
                            for ph in ("prefill", "decode"))
        assert running_total > 0
        for ph in ("prefill", "decode"):
            n, le4 = observations(P + "running_phase_batch_size", 4.0, req_phase=ph)
            assert le4 == n, (ph, n, le4)
        # the running queue was full while requests waited
        assert delta(a1, a0, P + "request_prefill_pending_nums_total", dp=0) > 0
        _status_check(dep)


# ==========================================================================
# --small-kv (32 blocks): preemptions
# ==========================================================================

@pytest.fixture(scope="class")
def small_kv(request):
    yield from _deploy(request, "--small-kv")


class TestSmallKvCache:
    def test_preemptions_match_vllm(self, small_kv):
        dep = small_kv
        dep.settle()
        a0, v0 = dep.snapshot()
        info = [l for n, l, _ in v0 if n == "vllm:cache_config_info"][0]
        blocks, block_size = int(info["num_gpu_blocks"]), int(info["block_size"])
        print("KV cache: %d blocks of %d tokens" % (blocks, block_size))
        sent = Sent()
        # 20 requests of ~450 tokens each need far more than the cache holds
        wl.concurrent(dep.server, 10, 10, sent, max_tokens=160, words=60, first=400)
        dep.settle()
        a1, v1 = dep.snapshot()
        preempted = delta(v1, v0, "vllm:num_preemptions_total")
        print("preemptions: vLLM %d, recompute_events %d, running_to_waiting %d, "
              "block_allocate_failures %d" % (
                  preempted, delta(a1, a0, P + "scheduler:recompute_events_total"),
                  delta(a1, a0, P + "running_to_waiting_count_total"),
                  delta(a1, a0, P + "block_allocate_failures_total")))
        assert preempted > 0, "the workload did not cause preemptions (%d blocks)" % blocks
        assert delta(a1, a0, P + "scheduler:recompute_events_total", dp=0) == preempted
        assert delta(a1, a0, P + "running_to_waiting_count_total", dp=0) == preempted
        assert delta(a1, a0, P + "block_allocate_failures_total", dp=0) >= preempted
        # tokens still add up despite the recomputation
        assert delta(a1, a0, P + "output_sum", engine=0) == sent.completion_tokens
        assert delta(a1, a0, P + "input_sum", engine=0) == sent.prompt_tokens
        assert total(a1, P + "total_kvcache_blocks", dp=0) == blocks - 1
        assert total(a1, P + "free_kvcache_blocks", dp=0) + \
            total(a1, P + "allocated_kvcache_blocks", dp=0) == blocks - 1
        assert math.isclose(1 - total(a1, P + "free_kvcache_blocks", dp=0) / (blocks - 1),
                            total(v1, "vllm:kv_cache_usage_perc"), abs_tol=1e-9)
        _status_check(dep)


# ==========================================================================
# --dp 2: two engine cores, each with its worker
# ==========================================================================

@pytest.fixture(scope="class")
def dp2(request):
    yield from _deploy(request, "--dp", "2", stop_timeout=45)


class TestDataParallel2:
    def test_status_dp_ranks(self, dp2):
        st = dp2.agent.status()
        targets = {t["pid"]: t for t in st["targets"]}
        rows = ["%d %s role=%s dp=%s" % (p, title, targets.get(p, {}).get("role"), targets.get(p, {}).get("dp"))
                for p, _, title in dp2.tree]
        print("\n".join(rows))
        wrong = []
        for pid, ppid, title in dp2.tree:
            t = targets.get(pid)
            if title.startswith("VLLM::EngineCore_DP"):
                rank = int(title.split("_DP")[1].split()[0])
                if t is None or t.get("dp") != rank:
                    wrong.append("%s (pid %d): dp %s, expected %d" % (title, pid, t and t.get("dp"), rank))
                for wpid, wppid, wtitle in dp2.tree:
                    if wppid == pid and wtitle.startswith("VLLM::Worker"):
                        w = targets.get(wpid)
                        if w is None or w.get("dp") != rank:
                            wrong.append("%s (pid %d, child of %s): dp %s, expected %d" % (
                                wtitle, wpid, title, w and w.get("dp"), rank))
            elif title.startswith("VLLM::APIServer") or pid == dp2.server.pid:
                if t is not None and t.get("dp") != -1:
                    wrong.append("%s (pid %d): dp %s, expected -1" % (title, pid, t.get("dp")))
        assert not wrong, "wrong dp in status:\n" + "\n".join(wrong)

    def test_engine_series_per_rank_add_up(self, dp2):
        dep = dp2
        dep.settle()
        a0, v0 = dep.snapshot()
        sent = Sent()
        wl.concurrent(dep.server, 10, 10, sent, max_tokens=12, first=500)
        dep.settle()
        a1, v1 = dep.snapshot()
        assert delta(a1, a0, GENERATE) == 20
        per_rank = {dp: delta(a1, a0, STEP, dp=dp) for dp in (0, 1)}
        all_steps = delta(a1, a0, STEP)
        print("engine-core steps per dp:", per_rank, "total", all_steps)
        assert per_rank[0] > 0 and per_rank[1] > 0, per_rank
        assert per_rank[0] + per_rank[1] == all_steps
        assert sorted(set(wl.label_values(a1, STEP, "dp"))) == ["0", "1"]
        # workers: the model runs under each rank's label
        runs = {dp: delta(a1, a0, P + "executor:prepare_inputs:duration_count", dp=dp) for dp in (0, 1)}
        assert runs[0] > 0 and runs[1] > 0, runs
        assert runs[0] + runs[1] == delta(a1, a0, P + "executor:prepare_inputs:duration_count")
        # front end: per-engine numbers agree with vLLM's per-engine histograms
        for engine in (0, 1):
            ours = delta(a1, a0, P + "fine_grained_ttft_count", engine=engine)
            theirs = delta(v1, v0, "vllm:time_to_first_token_seconds_count", engine=engine)
            assert ours == theirs, (engine, ours, theirs)
        assert delta(a1, a0, P + "input_count") == 20
        assert delta(a1, a0, P + "input_sum") == sent.prompt_tokens
        for dp in (0, 1):
            assert total(a1, P + "total_kvcache_blocks", dp=dp) > 0
        _status_check(dep)


# ==========================================================================
# memory snapshots: taken once while the worker initialises, so the agent must be
# collecting before that (server under `ms-service-metric exec`, `on --pid` as soon as
# the API server exists; the engine core and worker are attached as they appear)
# ==========================================================================

def _find_serve_pid(port):
    needle = b"--port\0%d\0" % port
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % entry, "rb").read()
        except OSError:
            continue
        if needle in cmd and b"serve\0" in cmd and not cmd.startswith((b"bash", b"/bin/bash", b"/usr/bin/bash")) \
                and b"vllm-serve.sh" not in cmd and b"setsid" not in cmd.split(b"\0")[0]:
            return int(entry)
    return None


def _llama_parameter_bytes(config):
    h, v, i, n = (config["hidden_size"], config["vocab_size"], config["intermediate_size"],
                  config["num_hidden_layers"])
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim", h // heads)
    layer = h * (heads + 2 * kv) * hd + heads * hd * h + 3 * h * i + 2 * h
    params = v * h * (1 if config.get("tie_word_embeddings") else 2) + n * layer + h
    return params * 4   # float32


@pytest.fixture(scope="class")
def startup(request):
    """A server under `ms-service-metric exec`, with `on --pid` given as soon as the API
    server process exists; the scrape once it answers /health."""
    import threading
    agent = Agent()
    port = free_port()
    work = tempfile.mkdtemp(prefix="msmm-", dir="/tmp")
    result = {}

    def serve():
        try:
            result["server"] = start_vllm_server(
                work, "--prefix", agent.binary, "exec", "--", port=port,
                env={"MS_SERVICE_METRIC_RUNTIME_DIR": agent.runtime_dir})
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    starter = threading.Thread(target=serve)
    starter.start()
    failed = request.session.testsfailed
    try:
        pid = wait_until(lambda: _find_serve_pid(port), 60, "the vllm serve process on port %d" % port, 0.05)
        proc = agent.run("on", "--pid", pid, "--config", agent.config, "--listen", agent.listen,
                         "--timeout", 60, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print("\n`on --pid %d` during start-up: %s" % (pid, proc.stdout.strip()))
        starter.join(timeout=300)
        assert "server" in result, "server did not start: %r" % result.get("error")
        server = result["server"]
        print(agent.status_text())
        wait_until(lambda: present(agent.scrape(), P + "engine:memory:weights_gb")
                   and present(agent.scrape(), P + "engine:memory:kvcache_gb"), 30, "memory gauges")
        dep = Deployment(server, agent, server.process_tree())
        print("\n".join(l for l in agent.scrape_text().splitlines()
                        if l.startswith(P + "engine:memory")))
        yield dep
    finally:
        agent.off()
        if request.session.testsfailed > failed:
            print("\n==== agent commands ====\n" + "\n".join(agent.history[-12:]))
            print("==== agent.log (tail) ====\n" + agent.log()[-6000:])
        agent.cleanup()
        starter.join(timeout=300)
        if "server" in result:
            result["server"].stop()
        else:
            left = _find_serve_pid(port)
            if left:
                subprocess.run(["bash", str(STOP), str(left)], timeout=90)
        shutil.rmtree(work, ignore_errors=True)


class TestMemoryAtStartup:
    def test_memory_gauges_match_vllm_configuration(self, startup):
        dep = startup
        a, v = dep.snapshot()
        info = [l for n, l, _ in v if n == "vllm:cache_config_info"][0]
        mem = {n[len(P):]: val for n, l, val in a if n.startswith(P + "engine:memory:")}
        gib = 1024 ** 3
        assert mem["engine:memory:kvcache_gb"] == int(info["kv_cache_memory_bytes"]) / gib
        assert mem["engine:memory:utilization_ratio"] == float(info["gpu_memory_utilization"])
        node = "/sys/devices/system/node/node0/meminfo"
        if os.path.exists(node):
            kib = int([l for l in open(node) if "MemTotal" in l][0].split()[-2])
            assert math.isclose(mem["engine:memory:total_gb"], kib * 1024 / gib, rel_tol=1e-3), \
                (mem["engine:memory:total_gb"], kib * 1024 / gib)
        assert math.isclose(mem["engine:memory:reserved_gb"],
                            mem["engine:memory:total_gb"] * mem["engine:memory:utilization_ratio"],
                            rel_tol=1e-6)
        config = json.load(open(VLLM_MODEL_DIR / "config.json"))
        assert mem["engine:memory:weights_gb"] * gib == _llama_parameter_bytes(config)
        _status_check(dep)

    def test_memory_gauges_carry_the_worker_dp_rank(self, startup):
        """The worker was attached before it set its title (`python -c from
        multiprocessing.spawn ...`); the agent re-classifies it and its series move to
        its rank."""
        a = startup.agent.scrape()
        dps = {l.get("dp") for n, l, _ in a if n.startswith(P + "engine:memory:")}
        assert dps == {"0"}, dps
