"""The models the engines serve (base models and LoRA adapters), learnt from their /v1/models.

vLLM lists each served name with its `max_model_len` (the context window the validator
checks against) and, for a LoRA adapter, its `parent` base model. The catalog is refreshed
periodically, when an engine comes back, after an adapter is loaded or unloaded, and when a
request names a model the catalog does not know (at most once per `miss_refresh_seconds`,
0.25 s: a flood of unknown names costs at most four cheap /v1/models reads a second).

A model's kind is its engines' (engines.GENERATE or EMBED: the gateway's settings say which
engines serve embedding models; vLLM's cards do not). A name served by engines of both kinds is
a configuration mistake: it is logged, and the model is taken for a generative one served by
its generative engines only, so no request ever reaches an engine of the wrong kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .engines import EMBED, GENERATE, EnginePool
from .failures import TRANSPORT_ERRORS

log = logging.getLogger(__name__)


# What OpenAI's model object has, and all a client sees on /v1/models: vLLM's cards also carry
# `root` (the model's or adapter's path on the engine's disk), `parent`, `max_model_len` and
# `permission`, which are the engines' business. The gateway adds `kind` ("generate" | "embed"):
# which routes take the model (an extra field, which OpenAI's clients keep as is).
_PUBLIC_FIELDS = ("id", "object", "created", "owned_by")


@dataclass(frozen=True)
class ServedModel:
    id: str
    max_model_len: int | None
    engines: frozenset[str]   # URLs of the engines serving it (all of its kind)
    card: dict[str, Any]      # the engine's model object as vLLM lists it (internal: has paths)
    public_card: dict[str, Any]  # what clients see on /v1/models (OpenAI's fields and `kind`)
    kind: str = GENERATE      # engines.GENERATE | engines.EMBED


class ModelCatalog:
    def __init__(self, pool: EnginePool, session: aiohttp.ClientSession, miss_refresh_seconds: float = 0.25):
        self._pool = pool
        self._session = session
        self._miss_refresh_seconds = miss_refresh_seconds
        self._models: dict[str, ServedModel] = {}
        self._last_refresh = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def engines_reachable(self) -> bool:
        """Whether any engine passed its last health check (else an unknown model may just be unseen)."""
        return bool(self._pool.healthy())

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    async def find(self, model: str) -> ServedModel | None:
        """The model, refreshing the catalog first if it is unknown (rate limited)."""
        served = self._models.get(model)
        if served is None and time.monotonic() - self._last_refresh >= self._miss_refresh_seconds:
            await self.refresh()
            served = self._models.get(model)
        return served

    async def refresh(self) -> None:
        """Re-read /v1/models from every healthy engine; concurrent callers share one refresh."""
        await asyncio.shield(self.refresh_soon())

    def refresh_soon(self) -> asyncio.Task[None]:
        """Start a refresh without waiting for it (e.g. an engine said 404 for a model we list:
        an adapter was unloaded through another worker or replica)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        engines = self._pool.engines
        healthy = {e.url for e in self._pool.healthy()}
        listings = await asyncio.gather(*(self._list(e.url) if e.url in healthy else _none() for e in engines))
        self._last_refresh = time.monotonic()
        found: dict[str, tuple[dict[str, Any], set[str]]] = {}
        for engine, cards in zip(engines, listings, strict=True):
            if cards is None:
                # Down or not answering: keep what it served before, so its models answer
                # 503 (no engine) rather than 404 (unknown) until it is back.
                for served in self._models.values():
                    if engine.url in served.engines:
                        found.setdefault(served.id, (served.card, set()))[1].add(engine.url)
                continue
            for card in cards:
                found.setdefault(card["id"], (card, set()))[1].add(engine.url)
        kinds = {e.url: e.kind for e in engines}
        models = {}
        for model_id, (card, urls) in found.items():
            max_len = card.get("max_model_len")
            if max_len is None and card.get("parent") in found:  # an adapter inherits its base's window
                max_len = found[card["parent"]][0].get("max_model_len")
            kind = EMBED if all(kinds.get(url) == EMBED for url in urls) else GENERATE
            of_kind = frozenset(url for url in urls if kinds.get(url, GENERATE) == kind)
            if of_kind != urls:
                log.warning("model served by engines of both kinds: taken for a generative model",
                            extra={"model": model_id, "engines": sorted(urls)})
            models[model_id] = ServedModel(model_id, max_len, of_kind, card, _public(card, kind), kind)
        if set(models) != set(self._models):
            log.info("served models changed", extra={"models": sorted(models)})
        self._models = models

    async def _list(self, url: str) -> list[dict[str, Any]] | None:
        try:
            async with self._session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    return None
                cards = orjson.loads(await response.read()).get("data", [])
                return [card for card in cards if isinstance(card, dict) and isinstance(card.get("id"), str)]
        except (*TRANSPORT_ERRORS, orjson.JSONDecodeError, AttributeError):
            return None


def _public(card: dict[str, Any], kind: str) -> dict[str, Any]:
    public = {name: card[name] for name in _PUBLIC_FIELDS if name in card}
    public.setdefault("object", "model")
    public["kind"] = kind
    return public


async def _none() -> None:
    return None
