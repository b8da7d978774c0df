"""Local processes of the node (engine, gateway, helpers): started in their own process
group, waited for, stopped with SIGTERM then SIGKILL.

Two kinds, one behaviour: ``ManagedProcess`` is a child of the caller (the tests, the
benchmarks), ``DetachedProcess`` outlives it with a pid file (the dev node, `make dev`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing, suppress
from pathlib import Path

_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and never one this process handed out before: the kernel
    may offer a just-released port again, and two asked for in a row (a gateway's API and
    metrics ports) once came back equal."""
    while True:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except Exception:  # noqa: BLE001 - a probe answers, it never raises
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(name: str, alive: Callable[[], bool], exit_detail: Callable[[], str], ready: Callable[[], bool],
          timeout: float, what: str, log_tail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{name} exited{exit_detail()} before {what}:\n{log_tail()}")
        if ready():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{name} not {what} after {timeout:.0f}s:\n{log_tail()}")


def _stop_group(pid: int, alive: Callable[[], bool], timeout: float) -> None:
    """SIGTERM to the process group (graceful: the gateway drains), SIGKILL after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    if alive():
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


class ManagedProcess:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the process writes to it until stop()
        # Own process group, so stopping it also stops the engine's worker processes.
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=os.environ | dict(env or {}), cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        _wait(self.name, self.alive, lambda: f" ({self.proc.returncode})", ready, timeout, what, self.log_tail)

    def ready_or_stopped(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """wait_until, stopping the process if it never gets there (a half-started one is no use)."""
        try:
            self.wait_until(ready, timeout, what)
        except BaseException:
            self.stop()
            raise

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.alive():
            _stop_group(self.proc.pid, self.alive, timeout)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class DetachedProcess:
    """A background process that outlives its starter: pid file and log file under ``state_dir``."""

    def __init__(self, name: str, state_dir: Path):
        self.name = name
        self.pid_file = state_dir / f"{name}.pid"
        self.log_path = state_dir / "logs" / f"{name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.pid() is not None

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=os.environ | dict(env),
                                    cwd=cwd, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        _wait(self.name, self.alive, lambda: "", ready, timeout, what, self.log_tail)

    def stop(self, timeout: float = 30) -> bool:
        pid = self.pid()
        if pid is not None:
            _stop_group(pid, self.alive, timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None
