"""Validation before the engine: every mistake is an OpenAI-shaped 4xx, and
a request that cannot fit the model's context never reaches the completion endpoint."""

from __future__ import annotations

import pytest
import requests

from tests.gateway.api_helpers import CHAT, COMPLETIONS, assert_openai_error, auth, chat_body, post

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def key(make_key) -> str:
    return make_key(tier="standard")


def test_body_over_the_limit_is_413_by_content_length(gateway_factory, make_key, engine):
    gw = gateway_factory(max_body_bytes=2048)
    big = chat_body(engine.model, content="x" * 4096)
    assert_openai_error(post(gw, CHAT, make_key(), big), 413, "request_too_large")


def test_body_over_the_limit_is_413_when_streamed_without_length(gateway_factory, make_key, engine):
    gw = gateway_factory(max_body_bytes=2048)
    chunks = (b'{"model": "tiny-llama", "prompt": "' + b"y" * 1000 for _ in range(4))   # chunked, no length
    response = requests.post(gw.url + COMPLETIONS, data=chunks, headers=auth(make_key()), timeout=30)
    assert_openai_error(response, 413, "request_too_large")


@pytest.mark.parametrize("raw", [b'{"model": "tiny-llama", "messages": [', b"not json", b""])
def test_malformed_json_is_400(gateway, key, raw):
    error = assert_openai_error(post(gateway, CHAT, key, raw, headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ([1, 2, 3], None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "tiny-llama", "messages": []}, "messages"),
    ({"model": "tiny-llama", "messages": "hello"}, "messages"),
    ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
    ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "n": -1}, "n"),
])
def test_malformed_fields_are_400(gateway, key, body, param):
    error = assert_openai_error(post(gateway, CHAT, key, body), 400)
    assert error["param"] == param


def test_malformed_prompt_is_400(gateway, key):
    for prompt in (None, [], [1, "a"], {"text": "x"}):
        error = assert_openai_error(post(gateway, COMPLETIONS, key, {"model": "tiny-llama", "prompt": prompt}), 400)
        assert error["param"] == "prompt"


def test_unknown_model_is_404(gateway, key):
    error = assert_openai_error(post(gateway, CHAT, key, chat_body("no-such-model")), 404, "model_not_found")
    assert error["param"] == "model"


def test_unknown_route_and_method_are_openai_shaped(gateway, key):
    assert_openai_error(requests.get(gateway.url + "/v1/nothing", headers=auth(key), timeout=10), 404)
    assert_openai_error(requests.get(gateway.url + CHAT, headers=auth(key), timeout=10), 405)


def test_max_tokens_above_the_key_cap_is_rejected(gateway, make_key, engine):
    key = make_key(max_tokens=8)
    error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model, max_tokens=9)), 400,
                                "max_tokens_exceeded")
    assert "8" in error["message"]
    body = chat_body(engine.model)
    del body["max_tokens"]
    body["max_completion_tokens"] = 50
    assert_openai_error(post(gateway, CHAT, key, body), 400, "max_tokens_exceeded")
    assert post(gateway, CHAT, key, chat_body(engine.model, max_tokens=8)).status_code == 200


def test_absent_max_tokens_is_set_to_the_key_cap(gateway, make_key, engine):
    key = make_key(max_tokens=7)
    body = chat_body(engine.model, ignore_eos=True)   # vLLM: run to max_tokens, whatever the model says
    del body["max_tokens"]
    response = post(gateway, CHAT, key, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 7
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_oversize_prompt_is_rejected_and_never_reaches_the_engine(gateway, key, engine):
    before = engine.metric("vllm:request_success_total")
    # Well past the 2048-token context whichever way the tokenizer splits it.
    response = post(gateway, CHAT, key, chat_body(engine.model, content="hello world " * 3000, max_tokens=16))
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert "maximum context length is 2048 tokens" in error["message"]
    response = post(gateway, COMPLETIONS, key, {"model": engine.model, "prompt": "abc " * 3000, "max_tokens": 1})
    assert_openai_error(response, 400, "context_length_exceeded")
    # max_tokens alone beyond the window
    assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model, max_tokens=5000)), 400,
                        "context_length_exceeded")
    assert engine.metric("vllm:request_success_total") == before


def test_a_prompt_near_the_limit_is_counted_exactly_and_served_when_it_fits(gateway, key, engine):
    # 1500 bytes + 600 max_tokens does not fit by the byte bound (2048), so the gateway asks the
    # engine's tokenizer; the real count (a BPE merges bytes) leaves room, so it is served.
    prompt = "the quick brown fox jumps over the lazy dog " * 34
    response = post(gateway, COMPLETIONS, key, {"model": engine.model, "prompt": prompt, "max_tokens": 600})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] + 600 <= 2048


def test_token_id_prompts_are_counted_without_the_engine(gateway, key, engine):
    assert_openai_error(post(gateway, COMPLETIONS, key, {"model": engine.model, "prompt": [5] * 2000,
                                                         "max_tokens": 100}), 400, "context_length_exceeded")
    ok = post(gateway, COMPLETIONS, key, {"model": engine.model, "prompt": [5, 6, 7], "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 3


def test_a_client_that_hangs_up_mid_upload_is_a_499_not_a_500(gateway_factory, make_key, engine):
    """A client that closes its connection while the gateway reads the body is counted as 499 (client
    gone), never a 500, and logs no unhandled error."""
    import socket
    import time

    gw = gateway_factory()
    sock = socket.create_connection(("127.0.0.1", gw.spec.port), timeout=30)
    sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + make_key().encode() + b"\r\nContent-Length: 100000\r\n\r\n"
                 b'{"model": "' + engine.model.encode() + b'", "messages": [')
    time.sleep(0.5)                   # the gateway is reading the body
    sock.close()
    deadline = time.monotonic() + 10
    while gw.metric("gateway_requests_total", route=CHAT, status="499") == 0:
        assert time.monotonic() < deadline, gw.log_tail()
        time.sleep(0.1)
    assert gw.metric("gateway_requests_total", route=CHAT, status="500") == 0
    assert "unhandled error" not in gw.log_text()


def test_n_above_the_gateway_maximum_is_400(gateway, key, engine):
    """Every choice is a whole answer; `n` is bounded (GATEWAY_MAX_N, 16)."""
    error = assert_openai_error(post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1, n=17)), 400,
                                "integer_above_max_value")
    assert error["param"] == "n" and "16" in error["message"]
    assert post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1, n=2)).status_code == 200
