"""Several models on one node, as clients see them through the gateway: chat on tiny-llama,
embeddings on tiny-embed (a second real CPU vLLM, its pooling runner), each request routed to
the engines serving its model only, with the same keys, limits and books as chat."""

from __future__ import annotations

import base64
import struct
import subprocess
import time

import openai
import pytest
import requests

from tests.gateway.api_helpers import CHAT, COMPLETIONS, assert_openai_error, auth, chat_body, post
from tests.support.gateway_fixtures import key_id_of, wait_until_settled

pytestmark = pytest.mark.engine

EMBEDDINGS = "/v1/embeddings"
# Far over tiny-embed's 512-token context (each "word" is at least one token), and over the
# byte bound too, so the gateway must ask the engine's tokenizer: the exact path.
OVERSIZE_TEXT = "word " * 700


def token_ids(count: int) -> list[int]:
    """``count`` token ids, all inside the tiny model's 512-token vocabulary."""
    return [i % 500 + 1 for i in range(count)]


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def engine_requests(engine) -> float:
    """Requests the engine has finished (vLLM V1 counts each embedded input as one)."""
    return engine.metric("vllm:request_success_total")


def usage_rows(gateway, key: str) -> list[tuple[str, int, int, int]]:
    """(model, status, prompt_tokens, completion_tokens) of the key's usage records."""
    out = subprocess.run(["psql", gateway.database_url, "-AtF,", "-c",
                          "SELECT model, status, prompt_tokens, completion_tokens FROM usage_records "
                          f"WHERE key_id = '{key_id_of(key)}' ORDER BY created_at"],
                         capture_output=True, text=True, check=True).stdout
    return [(m, int(s), int(p), int(c)) for m, s, p, c in (line.split(",") for line in out.splitlines() if line)]


def wait_for_rows(gateway, key: str, count: int, timeout: float = 15.0) -> list[tuple[str, int, int, int]]:
    """The usage recorder writes in batches, off the request path."""
    deadline = time.monotonic() + timeout
    while len(rows := usage_rows(gateway, key)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def test_chat_on_one_model_and_embeddings_on_the_other_with_the_openai_client(models_gateway, make_key, engine,
                                                                               embed_engine):
    api = client(models_gateway, make_key())
    chat_before, embed_before = engine_requests(engine), engine_requests(embed_engine)

    chat = api.chat.completions.create(model=engine.model, messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=3)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0

    # The client's default asks for base64 and decodes it; a list of texts gives one vector each.
    result = api.embeddings.create(model=embed_engine.model, input=["hello world", "another text"])
    assert [d.index for d in result.data] == [0, 1]
    dims = {len(d.embedding) for d in result.data}
    assert len(dims) == 1 and dims.pop() > 8
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0 and result.usage.total_tokens == result.usage.prompt_tokens
    assert result.model == embed_engine.model

    floats = api.embeddings.create(model=embed_engine.model, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-5)
    tokens = api.embeddings.create(model=embed_engine.model, input=[[1, 2, 3], [4, 5]])
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5

    # Each request went to the engine of its model only (the embedding engine counts one per input).
    assert engine_requests(engine) == chat_before + 1
    assert engine_requests(embed_engine) == embed_before + 5


def test_base64_is_relayed_as_the_engine_wrote_it(models_gateway, make_key, embed_engine):
    key = make_key()
    raw = post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model, "input": "hi",
                                                  "encoding_format": "base64"})
    assert raw.status_code == 200, raw.text
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    as_floats = post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model, "input": "hi"}).json()
    vector = as_floats["data"][0]["embedding"]
    assert struct.unpack(f"<{len(vector)}f", packed) == pytest.approx(vector, abs=1e-5)


def test_models_lists_each_model_once_with_its_kind(models_gateway, make_key, engine, embed_engine):
    listed = requests.get(models_gateway.url + "/v1/models", headers=auth(make_key()), timeout=10).json()["data"]
    ids = [m["id"] for m in listed]
    assert len(ids) == len(set(ids))
    kinds = {m["id"]: m["kind"] for m in listed}
    assert kinds[engine.model] == "generate" and kinds[embed_engine.model] == "embed"
    for card in listed:
        assert set(card) == {"id", "object", "created", "owned_by", "kind"} and card["object"] == "model"

    only_chat = requests.get(models_gateway.url + "/v1/models", headers=auth(make_key(models=[engine.model])),
                             timeout=10).json()["data"]
    assert [m["id"] for m in only_chat] == [engine.model]


def test_a_key_allowed_one_model_gets_403_on_the_other(models_gateway, make_key, engine, embed_engine):
    key = make_key(models=[engine.model])
    assert post(models_gateway, CHAT, key, chat_body(engine.model, max_tokens=1)).status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(models_gateway, key).embeddings.create(model=embed_engine.model, input="hello")
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"


def test_a_model_of_the_wrong_kind_is_a_400_not_sent_to_any_engine(models_gateway, make_key, engine, embed_engine):
    key = make_key()
    before = engine_requests(engine), engine_requests(embed_engine)
    error = assert_openai_error(post(models_gateway, EMBEDDINGS, key, {"model": engine.model, "input": "hello"}),
                                400, "model_not_supported")
    assert error["param"] == "model" and "not an embedding model" in error["message"]
    error = assert_openai_error(post(models_gateway, CHAT, key, chat_body(embed_engine.model)), 400,
                                "model_not_supported")
    assert "/v1/embeddings" in error["message"]
    assert_openai_error(post(models_gateway, COMPLETIONS, key, {"model": embed_engine.model, "prompt": "hi"}), 400,
                        "model_not_supported")
    assert (engine_requests(engine), engine_requests(embed_engine)) == before


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": [[1, 2], "mixed"]}, "input"),
    ({"input": [{"role": "user", "content": "hi"}]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": "hi", "encoding_format": "bytes"}, "encoding_format"),
    ({"input": "hi", "dimensions": 0}, "dimensions"),
    ({"input": "hi", "truncate_prompt_tokens": 100_000}, "truncate_prompt_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
])
def test_malformed_embedding_requests_are_400(models_gateway, make_key, embed_engine, body, param):
    error = assert_openai_error(post(models_gateway, EMBEDDINGS, make_key(), {"model": embed_engine.model, **body}),
                                400)
    assert error["param"] == param, error


def test_an_oversize_input_is_rejected_before_the_engine(models_gateway, make_key, embed_engine):
    key = make_key()
    before = engine_requests(embed_engine), embed_engine.metric("vllm:prompt_tokens_total")
    for oversize in (OVERSIZE_TEXT, ["short", OVERSIZE_TEXT], [token_ids(513)]):
        error = assert_openai_error(post(models_gateway, EMBEDDINGS, key,
                                         {"model": embed_engine.model, "input": oversize}),
                                    400, "context_length_exceeded")
        assert "512" in error["message"] and error["param"] == "input"
    assert (engine_requests(embed_engine), embed_engine.metric("vllm:prompt_tokens_total")) == before
    # Exactly at the limit is fine; with vLLM's truncation, so is a longer one.
    assert post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model,
                                                  "input": [token_ids(512)]}).status_code == 200
    cut = post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model, "input": OVERSIZE_TEXT,
                                                 "truncate_prompt_tokens": -1})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 512


def test_dimensions_reach_the_engine_which_refuses_them_for_this_model(models_gateway, make_key, embed_engine):
    # tiny-embed is no Matryoshka model: vLLM itself answers 400, and the client gets it as it is.
    with pytest.raises(openai.BadRequestError) as refused:
        client(models_gateway, make_key()).embeddings.create(model=embed_engine.model, input="hi", dimensions=8)
    assert "dimensions" in str(refused.value)


def test_embeddings_are_rate_limited_and_billed_from_the_engines_usage(models_gateway, make_key, embed_engine):
    key = make_key(rpm=3, tpm=5000, tier="batch")
    body = {"model": embed_engine.model, "input": ["the first text to embed", "and a second one"]}
    labels = {"route": EMBEDDINGS, "status": "200", "model": embed_engine.model}
    answered_before = models_gateway.metric("gateway_requests_total", **labels)
    tokens_before = models_gateway.metric("gateway_prompt_tokens_total", tier="batch", model=embed_engine.model)
    first = post(models_gateway, EMBEDDINGS, key, body)
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-limit-tokens"] == "5000"
    assert post(models_gateway, EMBEDDINGS, key, body).status_code == 200
    third = post(models_gateway, EMBEDDINGS, key, body)
    assert third.status_code == 200 and third.headers["x-ratelimit-remaining-requests"] == "0"
    error = assert_openai_error(post(models_gateway, EMBEDDINGS, key, body), 429, "rate_limit_exceeded")
    assert "requests" in error["message"]
    # One usage row per answered request, with the engine's prompt tokens and no completion.
    rows = wait_for_rows(models_gateway, key, 3)
    assert rows == [(embed_engine.model, 200, usage["prompt_tokens"], 0)] * 3
    # The gateway's series carry the model (the dashboards show each model's traffic).
    assert models_gateway.settled_metric("gateway_requests_total", answered_before + 3, **labels) == answered_before + 3
    assert models_gateway.metric("gateway_prompt_tokens_total", tier="batch",
                                 model=embed_engine.model) == tokens_before + 3 * usage["prompt_tokens"]


def test_embedding_tokens_count_against_the_tokens_limit(models_gateway, make_key, embed_engine):
    tpm = 3000
    key = make_key(tpm=tpm, max_concurrent=4)    # the lease shows when the books are closed
    # Reserved from the inputs' estimate (1 token per 4 bytes): 600 texts of 40 bytes need ~6,600.
    big = {"model": embed_engine.model, "input": ["a sentence of exactly forty bytes here.."] * 600}
    error = assert_openai_error(post(models_gateway, EMBEDDINGS, key, big), 429)
    assert "tokens per minute" in error["message"]
    # 500 bytes reserve 126 tokens, but the tokenizer makes ~250 of them: the bucket must end up
    # with the engine's count taken out, not the estimate.
    started = time.monotonic()
    first = post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model, "input": "a " * 250})
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["prompt_tokens"]
    assert used > 126 + 100
    wait_until_settled(models_gateway, key)
    second = post(models_gateway, EMBEDDINGS, key, {"model": embed_engine.model, "input": [[1]]})
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    refill = (time.monotonic() - started) * tpm / 60
    assert refill < 100
    assert tpm - used - 1 - 5 <= remaining <= tpm - used - 1 + refill



def test_an_embeddings_request_over_the_keys_tpm_is_told_what_to_shorten(models_gateway, make_key, embed_engine):
    # The TPM refusal is the limiter's, before any engine: it must speak of inputs, not only of
    # max_tokens (an embeddings request has none).
    key = make_key(tpm=10)
    body = {"model": embed_engine.model, "input": ["a text long enough to need more than ten tokens " * 4]}
    error = assert_openai_error(post(models_gateway, EMBEDDINGS, key, body), 429, "rate_limit_exceeded")
    assert "embedding inputs" in error["message"] and "10 tokens per minute" in error["message"]
