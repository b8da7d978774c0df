"""Counting prompt tokens without blocking the event loop.

Two steps, the cheap one first:
1. An upper bound from bytes. Every tokenizer vLLM serves (byte-level BPE, SentencePiece
   with byte fallback, tiktoken) produces at most one token per UTF-8 byte of text, plus a
   few special tokens; a chat template adds its own tokens per message. The raw request body
   contains every message as JSON text (escaping only makes it longer), so
   ``len(body) + margin`` bounds a chat prompt, ``len(prompt.encode()) + margin`` a text prompt.
   Most requests fit their model's context by this bound alone and cost nothing more.
2. Only when the bound does not clearly fit, the exact count from the engine's own
   tokenizer: POST /tokenize (the engine does the work, off this process's loop). vLLM's
   /tokenize takes one prompt string (vllm/entrypoints/serve/tokenize/protocol.py,
   TokenizeCompletionRequest.prompt: str, vLLM 0.32), so a list of prompts is counted with at
   most COUNT_CONCURRENCY calls in flight, longest first, stopping as soon as no prompt left
   can be longer than one already counted. The caller bounds the list (1,024 prompts, as vLLM
   does) and counts only after the rate limiter admitted the request.

The margins are deliberately generous. If a template ever added more than the margin, the
engine would still refuse the request with its own 400: the gateway's check is a fast path,
not the last line of defence.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from .engines import EnginePool, post
from .errors import InvalidRequest, ServiceUnavailable
from .failures import TRANSPORT_ERRORS, FailureKind, classify, classify_status

# Special tokens (BOS/EOS, a prefix space) around a plain text prompt.
TEXT_MARGIN = 8
# A chat template's own text: role headers, a default system prompt some templates inject.
CHAT_MARGIN = 128
# A template that renders tool definitions adds a preamble around them (the JSON itself is in the body).
TOOLS_MARGIN = 512

# Rough tokens per byte for *reserving* rate-limit tokens before the exact usage is known
# (OpenAI's rule of thumb is ~4 characters per token); reconciled with the real usage after.
ESTIMATE_BYTES_PER_TOKEN = 4

# Fields of a chat request that change how the template renders it.
_TEMPLATE_FIELDS = ("tools", "add_generation_prompt", "continue_final_message", "chat_template",
                    "chat_template_kwargs", "documents")


def chat_bound(raw_body_len: int, body: dict[str, Any]) -> int:
    return raw_body_len + CHAT_MARGIN + (TOOLS_MARGIN if body.get("tools") else 0)


def text_bound(prompt: str) -> int:
    return len(prompt.encode()) + TEXT_MARGIN


def estimate(byte_count: int) -> int:
    return byte_count // ESTIMATE_BYTES_PER_TOKEN + 1


def text_estimate(prompt: str) -> int:
    """A text prompt's tokens for reserving: the estimate, never above the bound."""
    return min(text_bound(prompt), estimate(len(prompt.encode())))


# /tokenize calls one request keeps in flight while counting a list of prompts: enough to hide
# the round trip, few enough that one request cannot crowd the engine's API server.
COUNT_CONCURRENCY = 4


class TokenCounter:
    """Exact prompt token counts from an engine's POST /tokenize."""

    def __init__(self, pool: EnginePool, session: aiohttp.ClientSession, timeout_seconds: float = 10.0):
        self._pool = pool
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def count_chat(self, model: str, engines: frozenset[str], body: dict[str, Any]) -> int:
        request = {"model": model, "messages": body["messages"]}
        request.update((name, body[name]) for name in _TEMPLATE_FIELDS if name in body)
        return await self._count(engines, request)

    async def count_texts(self, model: str, engines: frozenset[str], prompts: list[str]) -> dict[int, int]:
        """Exact counts of the prompts that can matter: index -> tokens. The longest prompt is
        always among them; a prompt whose byte bound is no more than a count already known is
        skipped (it cannot be the longest)."""
        bounds = [text_bound(prompt) for prompt in prompts]
        order = sorted(range(len(prompts)), key=bounds.__getitem__, reverse=True)
        counts: dict[int, int] = {}
        if len(order) == 1:        # the common case: no task needed
            counts[order[0]] = await self._count(engines, {"model": model, "prompt": prompts[order[0]]})
            return counts
        pending = iter(order)
        longest = 0

        async def worker() -> None:
            nonlocal longest
            for i in pending:          # shared iterator: each prompt is taken by one worker
                if bounds[i] <= longest:
                    return             # sorted by bound: no prompt left can be longer
                counts[i] = count = await self._count(engines, {"model": model, "prompt": prompts[i]})
                longest = max(longest, count)

        try:
            # Cancelled as a whole (the client left: ClientWatch), the group cancels its calls.
            async with asyncio.TaskGroup() as group:
                for _ in range(min(COUNT_CONCURRENCY, len(order))):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None     # the first failure, as a single call would raise
        return counts

    async def _count(self, engines: frozenset[str], request: dict[str, Any]) -> int:
        engine = self._pool.pick(engines)
        failure: FailureKind | None = None
        try:
            response = await post(self._session, engine.url + "/tokenize", orjson.dumps(request), self._timeout)
            try:
                payload = await response.read()
            finally:
                response.release()
            failure = classify_status(response.status)
            if failure is not None:
                raise ServiceUnavailable("Could not count the prompt's tokens; retry shortly.",
                                         reason="tokenize_failed")
            answer = orjson.loads(payload)
            if response.status != 200:
                # The engine could not render the prompt: the request itself is wrong.
                message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
                raise InvalidRequest(f"The prompt could not be tokenized: {message or response.status}")
            return int(answer["count"])
        except TRANSPORT_ERRORS as error:
            # (A connection lost after it was made: post() already resent the keep-alive race.)
            failure = classify(error)
            message, reason = _COUNT_FAILED[failure]
            raise ServiceUnavailable(message, reason=reason) from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            failure = FailureKind.STATUS_5XX
            raise ServiceUnavailable("The engine's token count was unreadable; retry shortly.",
                                     reason="tokenize_failed") from None
        finally:
            self._pool.done(engine, failure)


# What a client is told when counting failed on the way to the engine: (message, reason).
_COUNT_FAILED = {
    FailureKind.CONNECT: ("Could not reach the engine to count tokens; retry shortly.", "no_healthy_engine"),
    FailureKind.TIMEOUT: ("Counting the prompt's tokens timed out; retry shortly.", "tokenize_failed"),
    FailureKind.STREAM_BROKEN: ("The engine closed the connection while counting tokens; retry shortly.",
                                "tokenize_failed"),
}
