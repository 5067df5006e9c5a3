"""Smoke test of the real-vLLM harness: the server answers completions and chat
completions with sane usage, and its process tree has the API server, an engine
core and a worker. The agent is not involved here."""

import statistics

from vllm_harness import format_process_tree, http_json

MAX_TOKENS = 16


def check_usage(body, kind):
    assert body.get("object") == kind, body
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0, usage
    # ignore_eos: a dummy-weight model would otherwise stop at a random </s>
    assert usage["completion_tokens"] == MAX_TOKENS, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length", choice


def test_requests_and_process_tree(vllm_server):
    url = vllm_server.base_url
    latencies = []
    for i in range(3):
        status, body, seconds = http_json(url + "/v1/completions", {
            "model": vllm_server.model, "prompt": f"hello world number {i}, tell me a story",
            "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
        assert status == 200, body
        check_usage(body, "text_completion")
        assert isinstance(body["choices"][0]["text"], str)
        latencies.append(("completion", seconds))
        # the server's own tokenizer agrees with the usage it reported
        status, tokens, _ = http_json(url + "/tokenize", {
            "model": vllm_server.model, "prompt": f"hello world number {i}, tell me a story"})
        assert status == 200, tokens
        assert tokens["count"] == body["usage"]["prompt_tokens"], (tokens, body["usage"])
    for i in range(2):
        status, body, seconds = http_json(url + "/v1/chat/completions", {
            "model": vllm_server.model,
            "messages": [{"role": "system", "content": "You answer briefly."},
                         {"role": "user", "content": f"What is the first question {i}?"}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
        assert status == 200, body
        check_usage(body, "chat.completion")
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str), message
        latencies.append(("chat", seconds))
    print("\nrequest latencies (16 tokens): " +
          ", ".join(f"{kind} {s * 1000:.0f} ms" for kind, s in latencies) +
          f"; median {statistics.median(s for _, s in latencies) * 1000:.0f} ms")

    tree = vllm_server.process_tree()
    print(format_process_tree(tree))
    assert tree, f"server pid {vllm_server.pid} is gone:\n{vllm_server.log_tail()}"
    root_pid, _, root_title = tree[0]
    assert root_pid == vllm_server.pid
    assert " serve " in f" {root_title} " and "vllm" in root_title, root_title
    titles = [title for _, _, title in tree]
    assert any(t.startswith("VLLM::EngineCore") for t in titles), format_process_tree(tree)
    assert any(t.startswith("VLLM::Worker") for t in titles), format_process_tree(tree)
    # the worker runs below the engine core
    by_pid = {pid: (ppid, title) for pid, ppid, title in tree}
    for pid, ppid, title in tree:
        if title.startswith("VLLM::Worker"):
            assert by_pid[ppid][1].startswith("VLLM::EngineCore"), format_process_tree(tree)
