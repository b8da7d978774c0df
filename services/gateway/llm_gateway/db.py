"""PostgreSQL access: the connection pool and the versioned schema migrations.

Migrations are plain SQL files in llm_gateway/migrations named NNNN_name.sql, applied in
order, each in its own transaction, and recorded in schema_migrations. Several gateway
replicas (or an operator and a deploy job) may run `migrate` at the same moment: a
PostgreSQL advisory lock serialises them, so each file is applied exactly once.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import asyncpg

# Any fixed 64-bit number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x6C6C6D2D6E6F6465  # "llm-node"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def create_pool(dsn: str, **kw: Any) -> asyncpg.Pool:
    """A small asyncpg pool with timeouts, so a dead PostgreSQL fails fast instead of hanging."""
    options: dict[str, Any] = {
        "min_size": 1,
        "max_size": 10,
        "timeout": 5.0,            # connect timeout
        "command_timeout": 10.0,   # per query
        "server_settings": {"application_name": "llm-gateway"},
    }
    options.update(kw)
    return await asyncpg.create_pool(dsn, **options)


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with the package, in version order."""
    folder = resources.files("llm_gateway").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            if not _MIGRATION_NAME.match(entry.name):
                raise RuntimeError(f"migration file {entry.name!r} is not named NNNN_name.sql")
            found.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [name[:4] for name, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not applied yet; returns their names (empty when up to date)."""
    conn = await asyncpg.connect(dsn, timeout=10.0)
    try:
        # Session-level lock: held across the per-migration transactions below.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
            applied = []
            for name, sql in migration_files():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    finally:
        await conn.close()
