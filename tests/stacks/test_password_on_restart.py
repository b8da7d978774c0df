"""stacks/entrypoints/postgres-start.sh against a real PostgreSQL: a data directory created
with one password accepts the password from the secret file after a restart.

The official image sets the password only when it initialises an empty data directory
(docker-library/postgres docker-entrypoint.sh: initdb --pwfile when PG_VERSION is absent),
while the data volume outlives `pulumi destroy` and a re-created stack generates a new
password. The script runs as the container would run it: as root, with `gosu` and the
official `docker-entrypoint.sh` on PATH (stand-ins here: runuser, and postgres itself).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest

from scripts.devnode.local_services import pg_bin
from tests.support.procs import ManagedProcess, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "stacks" / "entrypoints" / "postgres-start.sh"
USER = "llmnode"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the entry point as the container does: as root")


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def data_dir_with_old_password():
    work = Path(tempfile.mkdtemp(prefix="llmnode-pgstart-"))
    work.chmod(0o755)
    data = work / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    old = work / "old_password"
    old.write_text("first-password\n")
    old.chmod(0o644)
    subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("initdb"), "-D", str(data), "-U", USER,
                    f"--pwfile={old}", "--auth-local=trust", "--auth-host=scram-sha-256"],
                   check=True, capture_output=True)
    yield work, data
    shutil.rmtree(work, ignore_errors=True)


def _login(port: int, password: str) -> bool:
    async def attempt() -> bool:
        try:
            connection = await asyncpg.connect(host="127.0.0.1", port=port, user=USER, password=password,
                                               database="postgres", timeout=10)
        except asyncpg.InvalidPasswordError:
            return False
        await connection.close()
        return True
    return asyncio.run(attempt())


def test_the_password_file_wins_over_the_one_the_data_directory_was_created_with(data_dir_with_old_password,
                                                                                 log_dir):
    work, data = data_dir_with_old_password
    port = free_port()
    bin_dir = work / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "gosu", '#!/bin/sh\nuser=$1; shift\nexec runuser -u "$user" -- "$@"\n')
    _executable(bin_dir / "docker-entrypoint.sh",
                f'#!/bin/sh\nexec runuser -u postgres -- postgres -D "$PGDATA" -p {port} '
                f'-c listen_addresses=127.0.0.1 -c unix_socket_directories="$PGDATA"\n')
    secret = work / "postgres_password"
    secret.write_text("second-password")
    secret.chmod(0o444)
    env = {"PATH": f"{bin_dir}:{Path(pg_bin('postgres')).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "PGDATA": str(data), "POSTGRES_USER": USER, "POSTGRES_PASSWORD_FILE": str(secret)}
    proc = ManagedProcess("postgres-start", ["bash", str(SCRIPT), "postgres"], log_dir, env=env)
    try:
        proc.wait_until(lambda: port_open("127.0.0.1", port), 60, "listening")
        assert _login(port, "second-password"), proc.log_tail()
        assert not _login(port, "first-password")
        assert "password of llmnode set from" in proc.log_tail()
    finally:
        proc.stop()
