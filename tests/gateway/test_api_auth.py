"""API keys at the gateway: every bad key is a 401 in OpenAI's shape."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.gateway.api_helpers import CHAT, assert_openai_error, chat_body, post
from tests.support.gateway_fixtures import key_id_of

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("reason,headers", [
    ("missing", {}),
    ("malformed", {"Authorization": "Bearer not-a-key"}),
    ("malformed", {"Authorization": "Basic c2stYWJj"}),
    ("unknown", {"Authorization": "Bearer sk-0123456789abcdef-" + "A" * 43}),
])
def test_missing_malformed_and_unknown_keys_are_401(gateway, engine, reason, headers):
    before = gateway.metric("gateway_auth_failures_total", reason=reason)
    response = post(gateway, CHAT, None, chat_body(engine.model), headers=headers)
    error = assert_openai_error(response, 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert gateway.metric("gateway_auth_failures_total", reason=reason) == before + 1


def test_wrong_secret_for_a_real_key_id_is_401(gateway, make_key, engine):
    key = make_key()
    forged = key[: key.rindex("-") + 1] + "B" * 43
    assert_openai_error(post(gateway, CHAT, forged, chat_body(engine.model)), 401, "invalid_api_key")


def test_expired_key_is_401(gateway, make_key, engine):
    key = make_key(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model)), 401, "invalid_api_key")
    assert "expired" in error["message"]


def test_revoked_key_is_rejected_within_the_cache_ttl(gateway, migrated_database_url, make_key, engine):
    key = make_key()
    # Cached as valid by a successful request (both workers, likely: a few requests).
    for _ in range(4):
        assert post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1)).status_code == 200

    revoked_at = time.monotonic()
    subprocess.run([sys.executable, "-m", "llm_gateway.admin", "revoke-key", key_id_of(key)], check=True,
                   env={"GATEWAY_DATABASE_URL": migrated_database_url, "PATH": "/usr/bin:/bin"},
                   capture_output=True)
    ttl = gateway.spec.key_cache_ttl_seconds
    # Every request after one TTL (plus scheduling slack) must be refused, by every worker.
    time.sleep(ttl + 0.5)
    for _ in range(6):
        error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1)), 401)
        assert "revoked" in error["message"]
    assert time.monotonic() - revoked_at < ttl + 10


def test_key_not_allowed_for_the_model_is_403(gateway, make_key, engine):
    key = make_key(models=["another-model"])
    before = gateway.metric("gateway_auth_failures_total", reason="model_not_allowed")
    error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model)), 403, "model_not_allowed")
    assert error["param"] == "model"
    assert gateway.metric("gateway_auth_failures_total", reason="model_not_allowed") == before + 1
    allowed = make_key(models=[engine.model])
    assert post(gateway, CHAT, allowed, chat_body(engine.model, max_tokens=1)).status_code == 200
