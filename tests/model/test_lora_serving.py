"""LoRA adapters served end to end on the real CPU engine, through the real gateway:
the static adapter from start-up (--lora-modules, sanitized first) and a runtime adapter
loaded and unloaded through the gateway's admin API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from services.engine.adapter_sanitizer import Policy, sanitize_adapter
from tests.support.adapters import ENGINE_MAX_LORA_RANK, STATIC_ADAPTER, as_newer_peft_wrote_it

pytestmark = pytest.mark.engine

PROMPT = "The quick brown fox"


def call(url: str, body: dict | None = None, token: str | None = None, method: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, headers, method=method or ("POST" if data else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def complete(base_url: str, model: str, token: str | None = None) -> tuple[int, dict]:
    return call(base_url + "/v1/completions",
                {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}, token)


def text_of(answer: dict) -> str:
    return answer["choices"][0]["text"]


def model_ids(base_url: str, token: str | None = None) -> set[str]:
    status, listing = call(base_url + "/v1/models", token=token)
    assert status == 200, listing
    return {card["id"] for card in listing["data"]}


def test_static_adapter_is_served_from_startup_through_the_gateway(engine, static_lora_adapters, gateway, make_key):
    if engine.proc is None:
        pytest.skip("LLM_NODE_TEST_ENGINE_URL is set: that engine was not started with this session's "
                    "sanitized static adapter (--lora-modules); run without it to test start-up loading")
    status, listing = call(engine.url + "/v1/models")
    cards = {card["id"]: card for card in listing["data"]}
    assert cards[STATIC_ADAPTER]["parent"] == engine.model
    assert cards[STATIC_ADAPTER]["root"] == static_lora_adapters[STATIC_ADAPTER]  # the sanitized copy

    allowed = make_key(models=[engine.model, STATIC_ADAPTER])
    status, tuned = complete(gateway.url, STATIC_ADAPTER, allowed)
    assert status == 200, tuned
    assert tuned["model"] == STATIC_ADAPTER
    status, base = complete(gateway.url, engine.model, allowed)
    assert status == 200, base
    assert text_of(tuned) != text_of(base), "the adapter must change the output"
    assert STATIC_ADAPTER in model_ids(gateway.url, allowed)

    base_only = make_key(models=[engine.model])
    status, refused = complete(gateway.url, STATIC_ADAPTER, base_only)
    assert status == 403 and refused["error"]["code"] == "model_not_allowed", refused
    assert STATIC_ADAPTER not in model_ids(gateway.url, base_only)


def wait_for(predicate, timeout: float, what: str) -> None:
    """Gateway workers learn about adapters loaded through another worker at their next
    catalog refresh (model_refresh_seconds) or at a request naming it (refresh-on-miss)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout:.0f} s")
        time.sleep(0.5)


def test_runtime_adapter_load_serve_unload_through_the_gateway_admin_api(
        engine, gateway, make_key, tiny_adapter_dir, tmp_path):
    name = f"tiny-lora-rt-{uuid.uuid4().hex[:6]}"
    adapter_dir = tmp_path / "sanitized" / name
    raw = as_newer_peft_wrote_it(tiny_adapter_dir, tmp_path / "uploaded" / name)
    sanitize_adapter(raw, adapter_dir, Policy(max_lora_rank=ENGINE_MAX_LORA_RANK))
    load_url, unload_url = gateway.url + "/admin/v1/lora/load", gateway.url + "/admin/v1/lora/unload"
    body = {"lora_name": name, "lora_path": str(adapter_dir)}
    allowed = make_key(models=[engine.model, name])
    base_only = make_key(models=[engine.model])

    # Admin routes need the admin token; an API key is not one.
    assert call(load_url, body)[0] == 401
    assert call(load_url, body, token=allowed)[0] == 403
    assert complete(gateway.url, name, allowed)[0] == 404  # not loaded yet

    status, loaded = call(load_url, body, token=gateway.admin_token)
    assert status == 200 and loaded["ok"], loaded
    try:
        # A worker that answered 404 for this name less than a second ago re-reads the
        # engines' models only after that second (the gateway rate-limits refresh-on-miss).
        wait_for(lambda: complete(gateway.url, name, allowed)[0] == 200, 5, f"serving {name} after the load")
        status, tuned = complete(gateway.url, name, allowed)
        assert status == 200, tuned
        assert tuned["model"] == name
        status, base = complete(gateway.url, engine.model, allowed)
        assert text_of(tuned) != text_of(base), "the adapter must change the output"

        status, refused = complete(gateway.url, name, base_only)
        assert status == 403 and refused["error"]["code"] == "model_not_allowed", refused

        wait_for(lambda: name in model_ids(gateway.url, allowed), gateway.spec.model_refresh_seconds + 5,
                 f"listing {name} on /v1/models")
        assert name not in model_ids(gateway.url, base_only)
    finally:
        status, unloaded = call(unload_url, {"lora_name": name}, token=gateway.admin_token)
    assert status == 200 and unloaded["ok"], unloaded
    assert name not in model_ids(engine.url)
    wait_for(lambda: complete(gateway.url, name, allowed)[0] == 404, gateway.spec.model_refresh_seconds + 5,
             f"answering 404 for the unloaded {name}")
