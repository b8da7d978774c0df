"""The admin CLI end to end: `python -m llm_gateway.admin` as a subprocess against the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from llm_gateway.db import create_pool
from llm_gateway.errors import AuthenticationError
from llm_gateway.keys import KeyStore, parse_key
from llm_gateway.usage import UsageRecorder
from tests.support.procs import free_port


def admin(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GATEWAY_DATABASE_URL=database_url)
    return subprocess.run([sys.executable, "-m", "llm_gateway.admin", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr


async def _new_database(admin_dsn: str) -> str:
    name = f"llmnode_admin_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


async def _drop_database(admin_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database(postgres_admin_dsn):
    dsn = await _new_database(postgres_admin_dsn)
    yield dsn
    await _drop_database(postgres_admin_dsn, dsn)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fresh_database(postgres_admin_dsn):
    """A database of this module's own, migrated by the CLI under test."""
    dsn = await _new_database(postgres_admin_dsn)
    ok(admin(dsn, "migrate"))
    yield dsn
    await _drop_database(postgres_admin_dsn, dsn)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(fresh_database):
    pool = await create_pool(fresh_database)
    yield pool
    await pool.close()


def test_commands_before_migrate_say_so(empty_database):
    err = failed(admin(empty_database, "list-keys"))
    assert "migrate" in err


def test_migrate(empty_database):
    out = ok(admin(empty_database, "migrate"))
    assert "applied 0001_" in out
    assert "up to date" in ok(admin(empty_database, "migrate"))
    assert "ID" in ok(admin(empty_database, "list-keys"))


async def test_create_key_json_and_use_it(fresh_database, pool):
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    out = ok(admin(fresh_database, "create-key", "--name", "ci bot", "--tier", "premium", "--models",
                   "tiny-llama, adapter-a", "--rpm", "7", "--tpm", "5000", "--max-concurrent", "2",
                   "--max-tokens", "256", "--expires-at", expires.isoformat().replace("+00:00", "Z"), "--json"))
    created = json.loads(out)                          # exactly one JSON object on stdout
    assert parse_key(created["key"]) == (created["id"], parse_key(created["key"])[1])
    assert {k: created[k] for k in ("name", "tier", "models", "rpm", "tpm", "max_concurrent", "max_tokens")} == {
        "name": "ci bot", "tier": "premium", "models": ["tiny-llama", "adapter-a"], "rpm": 7, "tpm": 5000,
        "max_concurrent": 2, "max_tokens": 256}
    assert datetime.fromisoformat(created["expires_at"]) == expires

    key = await KeyStore(pool, cache_ttl_seconds=0).authenticate(f"Bearer {created['key']}")
    assert (key.id, key.tier, key.models, key.rpm) == (created["id"], "premium", ("tiny-llama", "adapter-a"), 7)


async def test_create_key_plain_prints_only_the_key(fresh_database, pool):
    result = admin(fresh_database, "create-key", "--name", "plain", "--tier", "batch")
    lines = ok(result).splitlines()
    assert len(lines) == 1 and parse_key(lines[0])
    assert "only" in result.stderr and "once" in result.stderr
    key = await KeyStore(pool, cache_ttl_seconds=0).authenticate(f"Bearer {lines[0]}")
    assert key.models == () and key.rpm is None and key.expires_at is None


async def test_list_and_revoke(fresh_database, pool):
    created = json.loads(ok(admin(fresh_database, "create-key", "--name", "to-revoke", "--tier", "standard",
                                  "--json")))
    secret = parse_key(created["key"])[1]
    secret_hash = (await pool.fetchval("SELECT secret_hash FROM api_keys WHERE id = $1", created["id"])).hex()

    for listing in (ok(admin(fresh_database, "list-keys")), ok(admin(fresh_database, "list-keys", "--json"))):
        assert created["id"] in listing and "to-revoke" in listing
        assert secret not in listing and secret_hash not in listing
    rows = {k["id"]: k for k in json.loads(ok(admin(fresh_database, "list-keys", "--json")))}
    assert rows[created["id"]]["revoked"] is False

    assert "Revoked" in ok(admin(fresh_database, "revoke-key", created["id"]))
    assert "already revoked" in ok(admin(fresh_database, "revoke-key", created["id"]))
    rows = {k["id"]: k for k in json.loads(ok(admin(fresh_database, "list-keys", "--json")))}
    assert rows[created["id"]]["revoked"] is True
    table = ok(admin(fresh_database, "list-keys"))
    assert any(created["id"] in line and "revoked" in line for line in table.splitlines())

    with pytest.raises(AuthenticationError) as caught:
        await KeyStore(pool, cache_ttl_seconds=0).authenticate(f"Bearer {created['key']}")
    assert caught.value.reason == "revoked"


async def test_usage(fresh_database, pool):
    created = json.loads(ok(admin(fresh_database, "create-key", "--name", "metered", "--tier", "standard",
                                  "--json")))
    recorder = UsageRecorder(pool)
    for i in range(4):
        recorder.record(request_id=f"u{i}", key_id=created["id"], tier="standard", model="tiny-llama",
                        prompt_tokens=10 + i, completion_tokens=2, status=200)
    recorder.record(request_id="u-adapter", key_id=created["id"], tier="standard", model="adapter-a",
                    prompt_tokens=5, completion_tokens=1, status=200)
    await recorder.close()

    rows = json.loads(ok(admin(fresh_database, "usage", "--key-id", created["id"], "--json")))
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("adapter-a", 1, 5, 1), ("tiny-llama", 4, 46, 8)]
    table = ok(admin(fresh_database, "usage", "--key-id", created["id"]))
    assert "PROMPT_TOKENS" in table and any("tiny-llama" in line and "46" in line for line in table.splitlines())
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert json.loads(ok(admin(fresh_database, "usage", "--since", later, "--json"))) == []
    everyone = json.loads(ok(admin(fresh_database, "usage", "--json")))
    assert {r["key_id"] for r in everyone} >= {created["id"]}


@pytest.mark.parametrize("args, message", [
    (["create-key", "--name", "x", "--tier", "gold"], "unknown tier"),
    (["create-key", "--name", "x", "--tier", "standard", "--rpm", "0"], "positive"),
    (["create-key", "--name", "x", "--tier", "standard", "--rpm", "many"], "whole number"),
    (["create-key", "--name", "x", "--tier", "standard", "--expires-at", "next week"], "ISO 8601"),
    (["create-key", "--name", "x", "--tier", "standard", "--expires-at", "2001-01-01T00:00:00Z"], "past"),
    (["create-key", "--name", "x", "--tier", "standard", "--models", " , "], "model"),
    (["create-key", "--name", "  ", "--tier", "standard"], "name"),
    (["create-key", "--tier", "standard"], "--name"),
    (["revoke-key", "0123456789abcdef"], "no key"),
    (["revoke-key", "not-an-id"], "not a key id"),
    (["revoke-key", "sk-0123456789abcdef-secret"], "not the whole key"),
    (["usage", "--since", "yesterday"], "ISO 8601"),
    (["frobnicate"], "invalid choice"),
    ([], "COMMAND"),
])
def test_mistakes_give_a_clear_error(fresh_database, args, message):
    err = failed(admin(fresh_database, *args))
    assert message in err


def test_unreachable_database():
    err = failed(admin(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", "list-keys"))
    assert "PostgreSQL" in err and "GATEWAY_DATABASE_URL" in err


def test_missing_database(postgres_admin_dsn):
    err = failed(admin(postgres_admin_dsn.rsplit("/", 1)[0] + "/no_such_db_llmnode", "list-keys"))
    assert "no_such_db_llmnode" in err
