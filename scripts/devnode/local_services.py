"""PostgreSQL and Redis on 127.0.0.1 for the dev node and the tests.

Use the machine's servers when they listen; otherwise start them (the Debian cluster if
there is one, else a private trust-auth cluster under the cache dir). Never stops them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import time

from .paths import CACHE
from .processes import port_open

POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)


def wait_port(addr: tuple[str, int], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(*addr):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} is not listening on {addr[0]}:{addr[1]} after {timeout:.0f}s")


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: run scripts/bootstrap")
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _trust_login_works() -> bool:
    probe = subprocess.run(["psql", "postgresql://postgres@127.0.0.1:5432/postgres", "-tAc", "select 1"],
                           capture_output=True, text=True, env=os.environ | {"PGCONNECT_TIMEOUT": "3"})
    return probe.returncode == 0


def ensure_postgres(timeout: float = 30) -> str:
    """Return an admin DSN for a PostgreSQL on 127.0.0.1:5432, starting one if needed."""
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    if port_open(*POSTGRES):
        if not _trust_login_works():
            raise RuntimeError("PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password; "
                               "set LLM_NODE_PG_ADMIN_DSN to an admin DSN")
        return dsn
    clusters = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if clusters:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "start"], check=False)
        with contextlib.suppress(TimeoutError):
            wait_port(POSTGRES, timeout, "PostgreSQL")
        if port_open(*POSTGRES) and _trust_login_works():
            return dsn
        if port_open(*POSTGRES):
            raise RuntimeError("the Debian PostgreSQL cluster needs a password for user postgres on 127.0.0.1; "
                               "set LLM_NODE_PG_ADMIN_DSN")
    # A private cluster with trust auth on loopback only.
    data = CACHE / "pgdata"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(_as_postgres([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
                       check=True, capture_output=True)
    subprocess.run(_as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o",
                                 f"-p 5432 -c listen_addresses=127.0.0.1 -c unix_socket_directories={data}",
                                 "start"]), check=True, capture_output=True)
    wait_port(POSTGRES, timeout, "PostgreSQL")
    return dsn


def ensure_redis(timeout: float = 15) -> str:
    if not port_open(*REDIS):
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
                        "--save", "", "--appendonly", "no"], check=True)
        wait_port(REDIS, timeout, "Redis")
    return "redis://127.0.0.1:6379"


def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` if missing; return its DSN."""
    exists = subprocess.run(["psql", admin_dsn, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                            check=True, capture_output=True, text=True).stdout.strip()
    if not exists:
        subprocess.run(["psql", admin_dsn, "-qc", f"CREATE DATABASE {name}"], check=True)
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def admin_dsn() -> str:
    """The admin DSN of the PostgreSQL on 127.0.0.1 (trust auth on loopback), started if absent.

    LLM_NODE_TEST_PG_ADMIN_DSN names another (a machine where user postgres needs a password).
    """
    return os.environ.get("LLM_NODE_TEST_PG_ADMIN_DSN") or ensure_postgres()
