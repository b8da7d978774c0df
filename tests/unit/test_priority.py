"""priority.TierPriorities: key tier -> vLLM's `priority`, never the client's own."""

from __future__ import annotations

from llm_gateway.priority import TierPriorities


def test_tier_priority_overrides_the_clients_and_unknown_tiers_get_the_lowest():
    priorities = TierPriorities({"premium": 0, "standard": 10, "batch": 20})
    for tier, claimed, expected in [("premium", None, 0), ("standard", -5, 10), ("batch", 0, 20), ("other", -100, 20)]:
        body = {"model": "m"} if claimed is None else {"model": "m", "priority": claimed}
        priorities.apply(body, tier)
        assert body == {"model": "m", "priority": expected}, tier


def test_an_empty_map_strips_the_field():
    body = {"model": "m", "priority": -5}
    TierPriorities({}).apply(body, "premium")
    assert body == {"model": "m"}
