"""The operator's command line: `python -m llm_gateway.admin <command>`.

    migrate                         apply the database migrations
    create-key --name N --tier T    create an API key; prints it once (--json: one JSON object)
    list-keys                       list keys (never secrets or hashes)
    revoke-key KEY_ID               revoke a key (effective within the gateways' key cache TTL)
    usage [--key-id ID] [--since T] prompt/completion token sums per key and model

The database comes from GATEWAY_DATABASE_URL, as for the gateway itself. Mistakes in the
input give a one-line error and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from .db import create_pool, migrate
from .keys import ApiKey, KeyStore
from .settings import Settings
from .usage import usage_summary

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class UsageError(Exception):
    """A mistake in the command line or its values: reported in one line, exit status 2."""


# -- argument types ------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {value}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2030-01-31T12:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)   # no zone given: UTC


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give at least one model name (omit --models to allow every model)")
    return models


def _key_id(text: str) -> str:
    if text.startswith("sk-"):
        raise argparse.ArgumentTypeError("give the key's id (the part after 'sk-', before the next '-'), "
                                         "not the whole key")
    if not _KEY_ID.match(text):
        raise argparse.ArgumentTypeError(f"not a key id: {text!r} (16 hexadecimal characters)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm_gateway.admin",
                                     description="Administer the llm-node gateway's keys and database.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply the database migrations")

    create = commands.add_parser("create-key", help="create an API key (printed once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--tier", required=True, help="priority tier, e.g. premium, standard, batch")
    create.add_argument("--models", type=_models, default=[],
                        help="comma-separated models the key may use (default: all)")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute (default: unlimited)")
    create.add_argument("--tpm", type=_positive_int, help="tokens per minute (default: unlimited)")
    create.add_argument("--max-concurrent", type=_positive_int, help="concurrent requests (default: unlimited)")
    create.add_argument("--max-tokens", type=_positive_int, help="cap on max_tokens per request (default: none)")
    create.add_argument("--expires-at", type=_timestamp, help="ISO 8601 expiry time (default: never)")
    create.add_argument("--json", action="store_true", help="print one JSON object")

    listing = commands.add_parser("list-keys", help="list API keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    revoke = commands.add_parser("revoke-key", help="revoke an API key")
    revoke.add_argument("key_id", type=_key_id, metavar="KEY_ID")

    usage = commands.add_parser("usage", help="token usage per key and model")
    usage.add_argument("--key-id", type=_key_id)
    usage.add_argument("--since", type=_timestamp, help="ISO 8601 start time (default: all time)")
    usage.add_argument("--json", action="store_true", help="print a JSON array")
    return parser


# -- commands ------------------------------------------------------------------------------------

def _key_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "tier": key.tier, "models": list(key.models), "rpm": key.rpm,
            "tpm": key.tpm, "max_concurrent": key.max_concurrent, "max_tokens": key.max_tokens,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None, "revoked": key.revoked,
            "created_at": key.created_at.isoformat() if key.created_at else None}


def _status(key: ApiKey) -> str:
    if key.revoked:
        return "revoked"
    if key.expires_at and key.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


async def _create_key(args: argparse.Namespace, settings: Settings) -> None:
    if args.tier not in settings.tier_priorities:
        known = ", ".join(settings.tier_priorities)
        raise UsageError(f"unknown tier {args.tier!r} (known tiers: {known})")
    if not args.name.strip():
        raise UsageError("--name must not be empty")
    if args.expires_at and args.expires_at <= datetime.now(UTC):
        raise UsageError(f"--expires-at {args.expires_at.isoformat()} is in the past")
    async with _pool(settings) as pool:
        full_key, key = await KeyStore(pool, cache_ttl_seconds=0).create(
            name=args.name, tier=args.tier, models=args.models, rpm=args.rpm, tpm=args.tpm,
            max_concurrent=args.max_concurrent, max_tokens=args.max_tokens, expires_at=args.expires_at)
    if args.json:
        print(json.dumps({"key": full_key, **_key_json(key)}))
    else:
        print(full_key)
        print(f"Created key {key.id} ({key.name}, tier {key.tier}). It is shown only this once: store it now.",
              file=sys.stderr)


async def _list_keys(args: argparse.Namespace, settings: Settings) -> None:
    async with _pool(settings) as pool:
        keys = await KeyStore(pool, cache_ttl_seconds=0).list()
    if args.json:
        print(json.dumps([_key_json(k) for k in keys]))
        return
    rows = [[k.id, k.name, k.tier, ",".join(k.models) or "*", _or_dash(k.rpm), _or_dash(k.tpm),
             _or_dash(k.max_concurrent), _or_dash(k.max_tokens),
             k.expires_at.isoformat(timespec="seconds") if k.expires_at else "-", _status(k),
             k.created_at.isoformat(timespec="seconds") if k.created_at else "-"] for k in keys]
    print(_table(rows, ["ID", "NAME", "TIER", "MODELS", "RPM", "TPM", "MAX_CONC", "MAX_TOKENS", "EXPIRES",
                        "STATUS", "CREATED"]))


async def _revoke_key(args: argparse.Namespace, settings: Settings) -> None:
    async with _pool(settings) as pool:
        store = KeyStore(pool, cache_ttl_seconds=0)
        if await store.revoke(args.key_id):
            print(f"Revoked key {args.key_id}. Gateways stop accepting it within their key cache TTL "
                  f"({settings.key_cache_ttl_seconds:g} s).")
            return
        key = await store.get(args.key_id)
    if key is None:
        raise UsageError(f"no key with id {args.key_id}")
    print(f"Key {args.key_id} was already revoked.")


async def _usage(args: argparse.Namespace, settings: Settings) -> None:
    async with _pool(settings) as pool:
        rows = await usage_summary(pool, key_id=args.key_id, since=args.since)
    if args.json:
        print(json.dumps(rows))
        return
    print(_table([[r["key_id"], r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]] for r in rows],
                 ["KEY_ID", "MODEL", "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS"]))


async def _migrate(args: argparse.Namespace, settings: Settings) -> None:
    applied = await migrate(settings.database_url.get_secret_value())
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database schema is up to date")


class _pool:
    """`async with _pool(settings) as pool`: a one-connection pool for one command."""

    def __init__(self, settings: Settings):
        self._dsn = settings.database_url.get_secret_value()

    async def __aenter__(self) -> asyncpg.Pool:
        self._pool = await create_pool(self._dsn, min_size=1, max_size=1)
        return self._pool

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.close()


_COMMANDS = {"migrate": _migrate, "create-key": _create_key, "list-keys": _list_keys,
             "revoke-key": _revoke_key, "usage": _usage}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)   # exits 2 with a usage line on bad arguments
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid gateway settings in the environment: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_COMMANDS[args.command](args, settings))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except asyncpg.UndefinedTableError:
        print("error: the database has no gateway tables yet: run `python -m llm_gateway.admin migrate` first",
              file=sys.stderr)
        return 1
    except asyncpg.InvalidCatalogNameError as exc:
        print(f"error: {exc} (check GATEWAY_DATABASE_URL)", file=sys.stderr)
        return 1
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: cannot use PostgreSQL (check GATEWAY_DATABASE_URL): {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
