"""A small Python service for the README's demo: an HTTP server whose handler runs a toy
"engine" (tokenise, schedule, step) that ms-service-metric measures with
examples/demo_symbols.yaml. Standard library only.

    python3 examples/demo_service.py --port 8711
    curl -s 'localhost:8711/generate?prompt=hello+world&tokens=8'
"""
import argparse
import json
import random
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Scheduler:
    def __init__(self):
        self.waiting = []
        self.running = []

    def add_request(self, request):
        self.waiting.append(request)

    def schedule(self):
        while self.waiting and len(self.running) < 4:
            self.running.append(self.waiting.pop(0))
        return list(self.running)


class Engine:
    def __init__(self):
        self.scheduler = Scheduler()
        self.step_fn = self.step  # bound before any agent attaches, like vLLM's EngineCore

    def tokenize(self, prompt):
        return prompt.split()

    def step(self):
        batch = self.scheduler.schedule()
        time.sleep(0.002 + random.random() * 0.003)  # "the model"
        for request in batch:
            request["generated"] += 1
        self.scheduler.running = [r for r in batch if r["generated"] < r["max_tokens"]]
        return batch

    def generate(self, prompt, max_tokens):
        request = {"tokens": self.tokenize(prompt), "generated": 0, "max_tokens": max_tokens}
        self.scheduler.add_request(request)
        while request["generated"] < max_tokens:
            self.step_fn()
        return request


ENGINE = Engine()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path != "/generate":
            self.send_error(404)
            return
        prompt = query.get("prompt", ["hello"])[0]
        tokens = int(query.get("tokens", ["4"])[0])
        request = ENGINE.generate(prompt, tokens)
        body = json.dumps({"prompt_tokens": len(request["tokens"]), "completion_tokens": request["generated"]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8711)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"demo service on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
