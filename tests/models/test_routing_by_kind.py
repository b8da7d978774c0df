"""Routing by model kind when the engines disagree: a model name served by a generative and an
embedding engine is a configuration mistake the gateway must survive without sending a request
to an engine of the wrong kind (fake engines: the real ones cannot be misconfigured on demand)."""

from __future__ import annotations

import pytest
import requests

from tests.gateway.api_helpers import CHAT, assert_openai_error, auth, chat_body, post
from tests.support.flaky_upstream import FlakyUpstream

pytestmark = pytest.mark.engine   # gateway_factory needs the session engine


def test_a_model_on_engines_of_both_kinds_is_served_by_its_generative_engines_only(gateway_factory, make_key):
    with FlakyUpstream() as chat_engine, FlakyUpstream() as embed_engine:
        gw = gateway_factory(engines=[chat_engine.url], embedding_engines=[embed_engine.url])
        key = make_key()
        (card,) = [m for m in requests.get(gw.url + "/v1/models", headers=auth(key), timeout=10).json()["data"]
                   if m["id"] == chat_engine.model]
        assert card["kind"] == "generate"
        for _ in range(6):    # least outstanding would alternate between the two engines
            assert post(gw, CHAT, key, chat_body(chat_engine.model)).status_code == 200
        assert len(chat_engine.bodies) == 6 and embed_engine.bodies == []
        assert_openai_error(post(gw, "/v1/embeddings", key, {"model": chat_engine.model, "input": "hi"}), 400,
                            "model_not_supported")
        assert "served by engines of both kinds" in gw.log_text()


def test_an_embedding_engine_alone_makes_its_model_an_embedding_model(gateway_factory, make_key):
    with FlakyUpstream(model="fake-embed") as embed_engine:
        gw = gateway_factory(embedding_engines=[embed_engine.url])
        key = make_key()
        cards = requests.get(gw.url + "/v1/models", headers=auth(key), timeout=10).json()["data"]
        assert {m["id"]: m["kind"] for m in cards}["fake-embed"] == "embed"
        assert_openai_error(post(gw, CHAT, key, chat_body("fake-embed")), 400, "model_not_supported")
        assert embed_engine.bodies == []
