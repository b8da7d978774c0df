"""Throwaway PostgreSQL and Redis instances on their own ports, for failure tests and the chaos
benchmark: they may be stopped and restarted at will (never the machine's shared services)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .local_services import pg_bin as _pg_bin
from .processes import ManagedProcess, free_port, port_open


class ThrowawayRedis:
    """A private redis-server on its own port, for tests that stop and restart Redis."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        self.proc = ManagedProcess(f"redis-{self.port}", ["redis-server", "--bind", "127.0.0.1", "--port",
                                   str(self.port), "--save", "", "--appendonly", "no"], self.log_dir)
        self.proc.wait_until(lambda: port_open("127.0.0.1", self.port), 10, "listening")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class ThrowawayPostgres:
    """A private PostgreSQL cluster (initdb in a temp dir) on its own port, run as user postgres."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.data_dir = Path(tempfile.mkdtemp(prefix="llmnode-pg-"))
        self.proc: ManagedProcess | None = None
        self._initialised = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> ThrowawayPostgres:
        if not self._initialised:
            if os.geteuid() == 0:
                shutil.chown(self.data_dir, "postgres", "postgres")
            subprocess.run(self._as_postgres([_pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                                              "--auth=trust", "-E", "UTF8"]), check=True, capture_output=True)
            self._initialised = True
        self.proc = ManagedProcess(f"postgres-{self.port}", self._as_postgres(
            [_pg_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.data_dir}", "-c", "fsync=off"]), self.log_dir)
        self.proc.wait_until(lambda: port_open("127.0.0.1", self.port), 30, "listening")
        return self

    def crash(self) -> None:
        """Stop the server the way an outage would: at once, clients connected or not (pg_ctl
        "immediate"; a plain SIGTERM is PostgreSQL's "smart" shutdown, which waits for clients)."""
        subprocess.run(self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "immediate",
                                          "-w"]), check=True, capture_output=True)
        self.stop()

    def stop(self) -> None:
        if self.proc:
            # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients. SIGTERM ("smart",
            # what ManagedProcess sends) waits for them, and a restart may then find a stale pid file.
            self.proc.signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.proc.wait(15)
            self.proc.stop()
            self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
