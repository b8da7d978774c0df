"""Key tier -> vLLM's `priority` request field (lower is served first under
`--scheduling-policy priority`).

The client's own `priority` is always overwritten: a batch key cannot promote itself. A tier
missing from the map gets the lowest priority in it (the largest number). An empty map turns
the feature off and strips the field (for engines running `--scheduling-policy fcfs`, which
reject a non-zero priority).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TierPriorities:
    def __init__(self, priorities: Mapping[str, int]):
        self._priorities = dict(priorities)
        self._lowest = max(self._priorities.values()) if self._priorities else None

    def apply(self, body: dict[str, Any], tier: str) -> None:
        if self._lowest is None:
            body.pop("priority", None)
        else:
            body["priority"] = self._priorities.get(tier, self._lowest)
