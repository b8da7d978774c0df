"""Private Docker daemons for the local deployment: own socket, data root, exec root, pidfile.

Two of them (measured on these machines: Debian's dockerd 20.10, API 1.41, overlay2):

``BUILDER``  in the machine's network namespace, for image builds (they need the network):
             ``--iptables=false --ip-forward=false --bridge=none``, so it touches none of the
             machine's firewall rules and makes no docker0.
``NODE``     the node's Docker host, started inside a network namespace of its own
             (``ip netns add llm-node``, ``nsenter --net``) with iptables on: its isolation
             rules (internal networks, DOCKER-ISOLATION) are real and stay inside that
             namespace. It has no network beyond it: images are built on the builder and
             moved over (``docker save`` / ``docker load``).

Neither collides with the machine's own /var/run/docker.sock (never touched). Data roots live
in the cache (``~/.cache/llm-node/docker``, ``docker-node``) so images survive between runs; an
exclusive lock file per data root keeps two sessions on one machine from starting two daemons
on it (the second waits). Sockets and exec roots live under /run (unix socket paths are
limited to 108 bytes).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("LLM_NODE_CACHE", Path.home() / ".cache" / "llm-node"))
DOCKER_ROOT = CACHE / "docker"
RUN_DIR = Path("/run/llm-node-docker")


NODE_ROOT = CACHE / "docker-node"
NODE_RUN_DIR = Path("/run/llm-node-docker-node")
NODE_NETNS = "llm-node"


def dockerd_argv(root: Path, run_dir: Path, netns: str | None = None) -> list[str]:
    argv = [
        "dockerd",
        "--host", f"unix://{run_dir / 'docker.sock'}",
        "--data-root", str(root / "data"),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "docker.pid"),
        "--storage-driver", "overlay2",
        "--bridge=none",
        "--log-level", "warn",
    ]
    if netns is None:
        # No rules in the machine's iptables, no forwarding, no docker0.
        return [*argv, "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false"]
    # nsenter execs dockerd inside the namespace: its iptables rules are that namespace's.
    return ["nsenter", f"--net=/run/netns/{netns}", *argv]


@dataclass
class PrivateDaemon:
    root: Path = DOCKER_ROOT
    run_dir: Path = RUN_DIR
    netns: str | None = None  # a network namespace of its own (created, and deleted on stop)
    _proc: subprocess.Popen | None = None
    _lock: object | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @classmethod
    def builder(cls) -> PrivateDaemon:
        return cls(DOCKER_ROOT, RUN_DIR)

    @classmethod
    def node(cls) -> PrivateDaemon:
        return cls(NODE_ROOT, NODE_RUN_DIR, NODE_NETNS)

    @property
    def netns_path(self) -> str | None:
        return f"/run/netns/{self.netns}" if self.netns else None

    @property
    def url(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    def answers(self) -> bool:
        return subprocess.run(["docker", "-H", self.url, "version"], capture_output=True, timeout=20).returncode == 0

    def start(self, timeout: float = 60) -> PrivateDaemon:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed: scripts/bootstrap installs docker.io")
        if os.geteuid() != 0:
            raise RuntimeError("a private dockerd needs root")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "lock", "w")  # noqa: SIM115 - the lock is held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another session's daemon on this data root: wait for it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._stop_by_pidfile()  # a daemon of an earlier session (this data root is locked now)
        if self.netns and not Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - dockerd writes to it while it runs
        self._proc = subprocess.Popen(dockerd_argv(self.root, self.run_dir, self.netns), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
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
        if self.netns and Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "delete", self.netns], check=False)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, version="auto", timeout=600)


def transfer_image(source, target, reference: str) -> bool:
    """Copy an image from one daemon to another (``docker save | docker load``), unless the
    target already has it with the same id. True when it was copied."""
    wanted = source.api.inspect_image(reference)["Id"]
    try:
        if target.api.inspect_image(reference)["Id"] == wanted:
            return False
    except Exception:  # noqa: BLE001  docker.errors.ImageNotFound
        pass
    for _ in target.api.load_image(source.api.get_image(reference, chunk_size=4 * 1024 * 1024)):
        pass  # the daemon's progress messages
    if target.api.inspect_image(reference)["Id"] != wanted:
        raise RuntimeError(f"{reference}: loaded into the node's daemon with another id")
    return True
