"""The official `openai` client works unchanged through the gateway."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.gateway.api_helpers import CHAT, auth, chat_body, post

pytestmark = pytest.mark.engine


@pytest.fixture
def client(gateway, make_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tier="standard"), max_retries=0)


# vLLM's own extension: generate exactly max_tokens (the random tiny model may emit EOS early).
EXACT = {"ignore_eos": True}


def test_chat_completion_not_streaming(client, engine):
    result = client.chat.completions.create(model=engine.model, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=5, extra_body=EXACT)
    assert result.choices[0].message.role == "assistant"
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens > 0


def test_chat_completion_streaming_without_usage(client, engine):
    chunks = list(client.chat.completions.create(model=engine.model, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=6, stream=True, extra_body=EXACT))
    # The gateway asks vLLM for the usage chunk (to reconcile the limiter) but the client did
    # not: it must not see it -- every chunk has a choice, none carries usage.
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text


def test_chat_completion_streaming_with_usage_when_asked(client, engine):
    chunks = list(client.chat.completions.create(model=engine.model, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=6, stream=True, stream_options={"include_usage": True},
                                                 extra_body=EXACT))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].choices == []


def test_text_completion_streaming_and_not(client, engine):
    result = client.completions.create(model=engine.model, prompt="Once upon", max_tokens=3, extra_body=EXACT)
    assert result.usage.completion_tokens == 3 and result.choices[0].text
    chunks = list(client.completions.create(model=engine.model, prompt="Once upon", max_tokens=3, stream=True,
                                            extra_body=EXACT))
    assert len(chunks) >= 3 and all(c.choices for c in chunks)


def test_models_lists_only_what_the_key_may_use(gateway, make_key, engine):
    everything = requests.get(gateway.url + "/v1/models", headers=auth(make_key()), timeout=10).json()
    assert engine.model in [m["id"] for m in everything["data"]]
    # OpenAI's model object plus the model's kind, nothing else: vLLM's cards also carry `root`,
    # the model's path on the engine's disk, and other engine details.
    for card in everything["data"]:
        assert set(card) == {"id", "object", "created", "owned_by", "kind"}, card
        assert card["object"] == "model" and card["kind"] == "generate"

    restricted = make_key(models=["some-other-model"])
    listed = requests.get(gateway.url + "/v1/models", headers=auth(restricted), timeout=10).json()
    assert listed == {"object": "list", "data": []}


def test_request_id_is_taken_from_the_client_or_generated(gateway, make_key, engine):
    key = make_key()
    given = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1), headers={"X-Request-ID": "my-trace-42"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "my-trace-42"
    generated = post(gateway, CHAT, key, chat_body(engine.model, max_tokens=1))
    assert len(generated.headers["x-request-id"]) >= 16
    # Errors carry one too.
    assert requests.get(gateway.url + "/v1/models", timeout=10).headers["x-request-id"]
