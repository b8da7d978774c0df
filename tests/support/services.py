"""PostgreSQL and Redis for the tests.

The machine's shared instances (127.0.0.1:5432 and :6379) are used when present and started
when absent; they are never stopped. Failure tests get throwaway instances on other ports,
which they may stop at will.
"""

from __future__ import annotations

from scripts.devnode.local_services import admin_dsn, ensure_postgres, ensure_redis
from scripts.devnode.throwaway import ThrowawayPostgres, ThrowawayRedis

__all__ = ["ThrowawayPostgres", "ThrowawayRedis", "ensure_shared_postgres", "ensure_shared_redis",
           "shared_postgres_admin_dsn"]


def ensure_shared_postgres() -> None:
    ensure_postgres()


def ensure_shared_redis() -> None:
    ensure_redis()


def shared_postgres_admin_dsn() -> str:
    return admin_dsn()
