"""Gateway fixtures (a pytest plugin registered in tests/conftest.py)."""

import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated_database_url(database_url) -> str:
    """The session database with the gateway's migrations applied (llm_gateway.db.migrate)."""
    from llm_gateway.db import migrate

    await migrate(database_url)
    return database_url
