"""A private, real Docker daemon for tests: its own socket, data root, exec root and pidfile,
no iptables, no bridge, so it collides with nothing on the machine and is stopped after use.

Also the smallest image that can run a shell command (``shell_image``): /bin/dash and the
libraries it links, imported from a tar (no registry is reachable here).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .procs import ManagedProcess

SHELL_IMAGE = "llm-node-test/shell:1.0"


@dataclass
class DockerDaemon:
    url: str
    root: str


@contextmanager
def private_dockerd(log_dir: Path, name: str) -> Iterator[DockerDaemon]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (scripts/bootstrap installs docker.io)")
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root")
    work = Path(tempfile.mkdtemp(prefix="llmnode-dockerd-"))
    sock = work / "docker.sock"
    proc = ManagedProcess(f"dockerd-{name}", [
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


def _linked_files(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    files = [binary]
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files.append(path)
    return files


def shell_image(daemon: DockerDaemon) -> str:
    """Import an image holding /bin/sh (dash) into ``daemon``; returns its reference."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in _linked_files("/bin/dash"):
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "dash"
        tar.addfile(link)
    subprocess.run(["docker", "-H", daemon.url, "import", "-", SHELL_IMAGE], input=buffer.getvalue(),
                   capture_output=True, check=True)
    return SHELL_IMAGE
