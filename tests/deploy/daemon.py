"""A private Docker daemon for the local deployment: its own socket, data root and exec root.

Measured on these machines (issue 15): Debian's dockerd 20.10 (API 1.41) runs with overlay2
and needs no iptables, no IP forwarding and no default bridge. It collides with nothing: the
machine's own /var/run/docker.sock (if any) is never touched.

The data root lives in the cache (``~/.cache/llm-node/docker``) so built images and their
layers survive between runs; an exclusive lock file keeps two test sessions on one machine
from starting two daemons on it (the second waits). The exec root and socket live under /run
(unix socket paths are limited to 108 bytes).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("LLM_NODE_CACHE", Path.home() / ".cache" / "llm-node"))
DOCKER_ROOT = CACHE / "docker"
RUN_DIR = Path("/run/llm-node-docker")


def dockerd_argv(root: Path, run_dir: Path) -> list[str]:
    return [
        "dockerd",
        "--host", f"unix://{run_dir / 'docker.sock'}",
        "--data-root", str(root / "data"),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "docker.pid"),
        "--storage-driver", "overlay2",
        # No rules in the host's iptables, no forwarding, no docker0: containers reach each
        # other on the node's own bridge networks; the host reaches them over those bridges.
        "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
        "--log-level", "warn",
    ]


@dataclass
class PrivateDaemon:
    root: Path = DOCKER_ROOT
    run_dir: Path = RUN_DIR
    log_path: Path = field(default_factory=lambda: DOCKER_ROOT / "dockerd.log")
    _proc: subprocess.Popen | None = None
    _lock: object | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    def answers(self) -> bool:
        return subprocess.run(["docker", "-H", self.url, "version"], capture_output=True, timeout=20).returncode == 0

    def start(self, timeout: float = 60) -> "PrivateDaemon":
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed: scripts/bootstrap installs docker.io")
        if os.geteuid() != 0:
            raise RuntimeError("a private dockerd needs root")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another session's daemon on this data root: wait for it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._stop_by_pidfile()  # a daemon of an earlier session (this data root is locked now)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(dockerd_argv(self.root, self.run_dir), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
                self.stop()
                raise RuntimeError("private dockerd did not start:\n" + "\n".join(tail))
            time.sleep(0.25)
        return self

    def _stop_by_pidfile(self, timeout: float = 60) -> None:
        """Stop the dockerd this module started on this run directory (its own pid file)."""
        try:
            pid = int((self.run_dir / "docker.pid").read_text().strip())
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"dockerd\0"):
                return
            if f"unix://{self.run_dir / 'docker.sock'}".encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
            os.kill(pid, 15)
        except (ValueError, OSError):
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self._proc is None:
            self._stop_by_pidfile(timeout)  # started by an earlier command (python -m tests.deploy up)
        self._proc = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, version="auto", timeout=600)
