"""A fault-injecting OpenAI-compatible server on loopback, for the API judge's tests.

It speaks the parts of the OpenAI HTTP API the judge uses: ``POST /v1/chat/completions`` (logprobs or ``n``
samples), ``POST /v1/files`` (multipart upload of a batch JSONL), ``POST /v1/batches``, ``GET /v1/batches``,
``GET /v1/batches/{id}`` and ``GET /v1/files/{id}/content``. Per prompt it counts attempts and *delivered*
answers (a complete 200 response: what a provider bills), and it applies scripted faults to successive
attempts: ``429`` (with ``Retry-After``), ``500``, ``timeout`` (answers after the client gave up),
``malformed`` (a 200 that is not JSON), ``nochoices``, ``nologprobs`` and ``401`` (echoing the key it got).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_TOP = [("80", 0.5), (" 90", 0.3), ("Sure", 0.2)]


def expected_default_score() -> float:
    return (80 * 0.5 + 90 * 0.3) / 0.8


class FakeOpenAI:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempts = defaultdict(int)
        self.delivered = defaultdict(int)
        self.times = defaultdict(list)  # prompt -> arrival times of its attempts
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}  # prompt -> a fault applied to every attempt
        self.auth: list[str] = []
        self.models: dict[str, str] = {}  # prompt -> the model it was last sent to
        self.retry_after = "1"
        self.timeout_sleep = 1.5
        self.top_for = lambda prompt: DEFAULT_TOP
        self.samples_for = lambda prompt, i: "85"
        self.max_n = None  # a server that returns at most this many choices per request
        self.block_after: int | None = None  # delivered answers after which requests hang until `release`
        self.release = threading.Event()
        # batch API
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_creates = 0
        self.file_uploads = 0
        self.finish_batches = False
        self.batch_answered = defaultdict(int)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, payload, headers=None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.auth.append(self.headers.get("Authorization", ""))
                if self.path.endswith("/chat/completions"):
                    return server._chat(self, json.loads(body))
                if self.path.endswith("/files"):
                    return server._upload(self, body)
                if self.path.endswith("/batches"):
                    return server._create_batch(self, json.loads(body))
                self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self):  # noqa: N802
                server.auth.append(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if path.endswith("/batches"):
                    data = [server._batch_view(b) for b in server.batches.values()]
                    return self._send(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                if "/batches/" in path:
                    bid = path.rsplit("/", 1)[1]
                    return self._send(200, server._retrieve(bid))
                if path.endswith("/content"):
                    fid = path.split("/")[-2]
                    return self._send(200, None, raw=server.files[fid])
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- chat completions ------------------------------------------------------------------------------
    def completion(self, prompt: str, n: int = 1, logprobs: bool = True) -> dict:
        choices = []
        if logprobs:
            top = self.top_for(prompt)
            content = [{"token": top[0][0], "logprob": math.log(top[0][1]), "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in top]}]
            choices.append({"index": 0, "finish_reason": "length", "logprobs": {"content": content},
                            "message": {"role": "assistant", "content": top[0][0]}})
        else:
            for i in range(n):
                choices.append({"index": i, "finish_reason": "stop", "logprobs": None,
                                "message": {"role": "assistant", "content": self.samples_for(prompt, i)}})
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "judge", "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(choices),
                          "total_tokens": len(prompt) + len(choices)}}

    def _chat(self, h, body: dict):
        prompt = body["messages"][0]["content"]
        with self.lock:
            self.models[prompt] = body.get("model")
            self.attempts[prompt] += 1
            self.times[prompt].append(time.monotonic())
            queue = self.faults.get(prompt) or []
            fault = queue.pop(0) if queue else self.always.get(prompt)
            block = self.block_after is not None and sum(self.delivered.values()) >= self.block_after
        if block:
            self.release.wait(60)
            return
        if fault == "429":
            return h._send(429, {"error": {"message": "rate limited", "type": "requests"}},
                           {"Retry-After": self.retry_after})
        if fault == "500":
            return h._send(500, {"error": {"message": "server error"}})
        if fault == "401":
            return h._send(401, {"error": {"message": f"Incorrect API key provided: {h.headers.get('Authorization')}"}})
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
            return h._send(200, self.completion(prompt))
        if fault == "malformed":
            return h._send(200, None, raw=b'{"choices": [ this is not json')
        if fault == "nochoices":
            return h._send(200, {"id": "x", "object": "chat.completion", "choices": []})
        want_logprobs = bool(body.get("logprobs"))
        n = int(body.get("n") or 1)
        if self.max_n is not None:
            n = min(n, self.max_n)
        data = self.completion(prompt, n=n, logprobs=want_logprobs and fault != "nologprobs")
        if fault == "nologprobs":
            data["choices"][0]["logprobs"] = None
        if h._send(200, data):
            with self.lock:
                self.delivered[prompt] += 1

    # -- batch API ------------------------------------------------------------------------------------
    def _upload(self, h, body: bytes):
        lines = []
        for raw in body.split(b"\n"):
            raw = raw.strip()
            if raw.startswith(b"{") and b"custom_id" in raw:
                lines.append(json.loads(raw))
        with self.lock:
            self.file_uploads += 1
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = "\n".join(json.dumps(x) for x in lines).encode()
        h._send(200, {"id": fid, "object": "file", "bytes": len(body), "created_at": 0,
                      "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})

    def _create_batch(self, h, body: dict):
        with self.lock:
            self.batch_creates += 1
            bid = f"batch-{len(self.batches) + 1}"
            self.batches[bid] = {"id": bid, "input_file_id": body["input_file_id"], "status": "in_progress",
                                 "metadata": body.get("metadata"), "output_file_id": None}
        h._send(200, self._batch_view(self.batches[bid]))

    def _batch_view(self, b: dict) -> dict:
        return {"id": b["id"], "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
                "input_file_id": b["input_file_id"], "completion_window": "24h", "status": b["status"],
                "output_file_id": b["output_file_id"], "error_file_id": None, "created_at": 0,
                "metadata": b["metadata"]}

    def _retrieve(self, bid: str) -> dict:
        with self.lock:
            b = self.batches[bid]
            if self.finish_batches and b["status"] != "completed":
                out = []
                for line in self.files[b["input_file_id"]].decode().splitlines():
                    req = json.loads(line)
                    prompt = req["body"]["messages"][0]["content"]
                    self.batch_answered[prompt] += 1
                    out.append({"id": "r", "custom_id": req["custom_id"], "error": None,
                                "response": {"status_code": 200, "request_id": "q",
                                             "body": self.completion(prompt)}})
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = "\n".join(json.dumps(x) for x in out).encode()
                b["status"], b["output_file_id"] = "completed", fid
            return self._batch_view(b)
