"""An nginx fake engine that costs almost no CPU, for measuring the gateway's own overhead.

nginx (Debian's nginx-light) with a private configuration on a free port: /health answers
200, /v1/models lists one model with its max_model_len (what the gateway's catalog reads),
and every other request -- the completions -- gets one fixed vLLM-shaped JSON answer with
`usage`, so the gateway does all its real work (parse, reconcile, account) on it.

    with NginxUpstream(log_dir).start() as upstream:
        upstream.url, upstream.model
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from scripts.devnode.processes import ManagedProcess, free_port, port_open

MODEL = "bench-model"

COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench", "root": MODEL,
                                      "parent": None, "max_model_len": 4096}]}


def ensure_installed() -> None:
    """nginx-light and wrk from Debian, installed on first use."""
    missing = [pkg for pkg, binary in (("nginx-light", "nginx"), ("wrk", "wrk")) if not shutil.which(binary)
               and not Path(f"/usr/sbin/{binary}").exists()]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _nginx_literal(value: dict) -> str:
    return "'" + json.dumps(value, separators=(",", ":")).replace("\\", "\\\\").replace("'", "\\'") + "'"


class NginxUpstream:
    def __init__(self, log_dir: Path, workers: int = 1):
        self.port = free_port()
        self.workers = workers
        self.log_dir = Path(log_dir)
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-upstream-"))
        self.proc: ManagedProcess | None = None
        self.model = MODEL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        return f"""
worker_processes {self.workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    default_type application/json;
    server {{
        listen 127.0.0.1:{self.port} reuseport;
        location = /health {{ return 200 ''; }}
        location = /v1/models {{ return 200 {_nginx_literal(MODELS)}; }}
        location / {{ return 200 {_nginx_literal(COMPLETION)}; }}
    }}
}}
"""

    def start(self) -> NginxUpstream:
        ensure_installed()
        config = self.dir / "nginx.conf"
        config.write_text(self._config())
        self.proc = ManagedProcess(f"nginx-upstream-{self.port}", ["nginx", "-c", str(config), "-p", str(self.dir)],
                                   self.log_dir)
        self.proc.wait_until(lambda: port_open("127.0.0.1", self.port), 10, "listening")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxUpstream:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
