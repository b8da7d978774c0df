"""The pieces of the deployed-node checks that run without Docker, run here for real.

The deployed suite reads listening ports from a container's /proc/<pid>/net/tcp and probes
internal services with two small Python scripts run in throwaway containers; here the
same parser reads this machine's /proc and the same scripts run with the local Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

from tests.support.procs import free_port

from .deployed_node import _CONNECT, _PROBE, listening_ports


def test_listening_ports_from_proc_net_tcp():
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as listener6:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener6.bind(("::1", 0))
        listener6.listen()
        port, port6 = listener.getsockname()[1], listener6.getsockname()[1]
        closed = free_port()
        tables = "".join(Path(f"/proc/{os.getpid()}/net/{name}").read_text() for name in ("tcp", "tcp6"))
        found = listening_ports(tables)
    assert {port, port6} <= found
    assert closed not in found


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self):  # http.server's naming
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def run_script(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip().splitlines()[-1]


def test_probe_script_reports_status_body_and_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = json.loads(run_script(_PROBE, base + "/api/search", json.dumps({"Authorization": "Basic eA=="})))
        assert ok["status"] == 200 and json.loads(ok["body"]) == {"path": "/api/search", "auth": "Basic eA=="}
        missing = json.loads(run_script(_PROBE, base + "/missing", "{}"))
        assert missing["status"] == 404
    finally:
        server.shutdown()
    down = json.loads(run_script(_PROBE, f"http://127.0.0.1:{free_port()}/", "{}"))
    assert down["status"] is None and "Connection refused" in down["error"]


def test_connect_script_tells_connected_from_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert run_script(_CONNECT, "127.0.0.1", str(listener.getsockname()[1])) == "connected"
    assert run_script(_CONNECT, "127.0.0.1", str(free_port())).startswith("refused")
