"""Key tiers become vLLM's `priority` field; clients cannot promote themselves."""

from __future__ import annotations

import pytest

from tests.gateway.api_helpers import CHAT, COMPLETIONS, chat_body, post
from tests.support.flaky_upstream import FlakyUpstream

pytestmark = pytest.mark.engine


def test_tier_sets_priority_and_overrides_the_clients_own(gateway_factory, make_key):
    with FlakyUpstream() as upstream:   # it keeps the bodies it received: vLLM does not echo priority
        gw = gateway_factory(engines=[upstream.url])
        cases = [("premium", None, 0), ("standard", None, 10), ("batch", -100, 20), ("batch", 0, 20),
                 ("unknown-tier", None, 20)]
        for tier, claimed, expected in cases:
            body = chat_body(upstream.model)
            if claimed is not None:
                body["priority"] = claimed
            assert post(gw, CHAT, make_key(tier=tier), body).status_code == 200
            assert upstream.bodies[-1]["priority"] == expected, (tier, claimed)
            # Everything else the client sent arrives as sent.
            assert upstream.bodies[-1]["messages"] == body["messages"]
            assert upstream.bodies[-1]["max_tokens"] == body["max_tokens"]


def test_custom_priorities_and_the_off_switch(gateway_factory, make_key):
    with FlakyUpstream() as upstream:
        gw = gateway_factory(engines=[upstream.url], tier_priorities={"gold": 1, "tin": 7})
        post(gw, COMPLETIONS, make_key(tier="gold"), {"model": upstream.model, "prompt": "x"})
        assert upstream.bodies[-1]["priority"] == 1
        off = gateway_factory(engines=[upstream.url], tier_priorities={})
        post(off, COMPLETIONS, make_key(tier="gold"), {"model": upstream.model, "prompt": "x", "priority": -5})
        assert "priority" not in upstream.bodies[-1]


def test_real_engine_accepts_the_priority_of_every_tier(gateway, make_key, engine):
    # vLLM runs --scheduling-policy priority: it would refuse a priority it cannot schedule.
    for tier in ("premium", "standard", "batch"):
        response = post(gateway, CHAT, make_key(tier=tier), chat_body(engine.model, max_tokens=2, priority=-7))
        assert response.status_code == 200, response.text
