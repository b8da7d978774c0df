"""A failure-injecting stand-in for a vLLM engine (the only test double in the proof test).

It passes the gateway's health check and lists the model, so the gateway picks it, then
answers every completion with HTTP 500: the gateway counts an upstream error
(`gateway_upstream_errors_total{kind="status_5xx"}`), answers 5xx and, after a few, opens
its circuit breaker for this upstream.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FailingEngine:
    def __init__(self, model: str, max_model_len: int = 2048):
        listing = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "vllm",
                                                "root": model, "parent": None, "max_model_len": max_model_len}]}

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path == "/health":
                    self._answer(200, {})
                elif self.path == "/v1/models":
                    self._answer(200, listing)
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                type(self).requests_failed += 1
                self._answer(500, {"error": {"message": "injected engine failure", "type": "InternalServerError",
                                             "code": 500}})

            def log_message(self, *args):  # keep test output quiet
                pass

        Handler.requests_failed = 0
        self._handler = Handler
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="failing-engine", daemon=True)
        self._thread.start()

    @property
    def requests_failed(self) -> int:
        return self._handler.requests_failed

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
