"""Admin routes that load and unload LoRA adapters on every engine."""

from __future__ import annotations

import secrets

import pytest
import requests

from tests.gateway.api_helpers import CHAT, assert_openai_error, auth, chat_body, post
from tests.support.adapters import tiny_adapter
from tests.support.flaky_upstream import FlakyUpstream

pytestmark = pytest.mark.engine

LOAD, UNLOAD = "/admin/v1/lora/load", "/admin/v1/lora/unload"


def _admin(gw, path: str, body: dict, token: str | None) -> requests.Response:
    headers = auth(token) if token else {}
    return requests.post(gw.url + path, json=body, headers=headers, timeout=120)


def test_admin_routes_do_not_exist_without_an_admin_token(gateway_factory):
    gw = gateway_factory(admin_token=None)
    assert_openai_error(_admin(gw, LOAD, {"lora_name": "a", "lora_path": "/x"}, "anything"), 404)


def test_admin_token_is_required_and_checked(gateway):
    body = {"lora_name": "a", "lora_path": "/x"}
    assert_openai_error(_admin(gateway, LOAD, body, None), 401)
    assert_openai_error(_admin(gateway, LOAD, body, "wrong-" + secrets.token_hex(4)), 403)
    # An API key is not an admin token either.
    assert_openai_error(_admin(gateway, UNLOAD, {"lora_name": "a"}, "sk-0123456789abcdef-" + "A" * 43), 403)
    error = assert_openai_error(_admin(gateway, LOAD, {"lora_name": "a"}, gateway.admin_token), 400)
    assert error["param"] == "lora_path"


def test_an_engine_refusing_the_adapter_is_reported_per_engine(gateway, engine):
    response = _admin(gateway, LOAD, {"lora_name": "missing-" + secrets.token_hex(3),
                                      "lora_path": "/nonexistent/adapter"}, gateway.admin_token)
    assert response.status_code == 502
    result = response.json()
    assert result["ok"] is False
    assert result["engines"][engine.url]["status"] == 404


def test_load_serve_and_unload_an_adapter(gateway_factory, make_key, engine):
    gw = gateway_factory()
    name = "adapter-" + secrets.token_hex(3)
    key = make_key()
    loaded = _admin(gw, LOAD, {"lora_name": name, "lora_path": str(tiny_adapter())}, gw.admin_token)
    try:
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["engines"][engine.url]["status"] == 200
        listed = requests.get(gw.url + "/v1/models", headers=auth(key), timeout=10).json()["data"]
        card = next(m for m in listed if m["id"] == name)
        assert set(card) == {"id", "object", "created", "owned_by", "kind"}   # no paths, no parent
        assert card["kind"] == "generate"
        served = post(gw, CHAT, key, chat_body(name, max_tokens=3))
        assert served.status_code == 200 and served.json()["model"] == name
    finally:
        unloaded = _admin(gw, UNLOAD, {"lora_name": name}, gw.admin_token)
    assert unloaded.status_code == 200, unloaded.text
    listed = requests.get(gw.url + "/v1/models", headers=auth(key), timeout=10).json()["data"]
    assert name not in [m["id"] for m in listed]
    assert_openai_error(post(gw, CHAT, key, chat_body(name, max_tokens=3)), 404)


def test_adapters_are_loaded_on_generative_engines_only(gateway_factory, engine):
    # An embedding engine (vLLM's pooling runner) has no LoRA routes: asking it would fail the call.
    with FlakyUpstream(model="fake-embed") as embed_engine:
        gw = gateway_factory(embedding_engines=[embed_engine.url])
        name = "adapter-" + secrets.token_hex(3)
        loaded = _admin(gw, LOAD, {"lora_name": name, "lora_path": str(tiny_adapter())}, gw.admin_token)
        try:
            assert loaded.status_code == 200, loaded.text
            assert set(loaded.json()["engines"]) == {engine.url}
        finally:
            assert _admin(gw, UNLOAD, {"lora_name": name}, gw.admin_token).status_code == 200
