"""A private, real Docker daemon for the preflight's Docker check (when dockerd is installed).

It listens on its own socket with its own data root, touches no iptables and no bridge,
and is stopped after the module: the machine's default socket stays as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import ManagedProcess


@dataclass
class DockerDaemon:
    url: str
    root: str


@pytest.fixture(scope="module")
def docker_daemon(log_dir):
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io): the Docker check's passing case is not run")
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    work = Path(tempfile.mkdtemp(prefix="llmnode-dockerd-"))
    sock = work / "docker.sock"
    proc = ManagedProcess("dockerd-preflight", [
        "dockerd", "--host", f"unix://{sock}", "--data-root", str(work / "root"),
        "--exec-root", str(work / "exec"), "--pidfile", str(work / "docker.pid"),
        "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
    ], log_dir)

    def answers() -> bool:
        return subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True).returncode == 0

    try:
        proc.wait_until(answers, 60, "answering")
        yield DockerDaemon(url=f"unix://{sock}", root=str(work / "root"))
    finally:
        proc.stop(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
