"""Async OpenAI-shaped client calls the benchmarks share (aiohttp, no SDK overhead in the figures)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import orjson


def chat_body(model: str, max_tokens: int, stream: bool, text: str = "Tell me a story.", **extra) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}], **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass
class StreamTiming:
    status: int
    first_token: float | None  # seconds from send to the first chunk with a choice (see timed_stream)
    total: float
    chunks: int


async def timed_stream(session: aiohttp.ClientSession, base_url: str, key: str | None, body: dict) -> StreamTiming:
    """One streaming chat completion, timed to its first content chunk and to its end."""
    start = time.perf_counter()
    first = None
    chunks = 0
    async with session.post(base_url + "/v1/chat/completions", json=body, headers=auth(key)) as response:
        if response.status != 200:
            await response.read()
            return StreamTiming(response.status, None, time.perf_counter() - start, 0)
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunks += 1
            # vLLM sends its first chunk (the assistant role) when the first token is out, so the
            # first chunk with a choice marks the first token even when its text is empty (a
            # random-weight model often yields tokens that decode to nothing on their own).
            if first is None and orjson.loads(line[6:]).get("choices"):
                first = time.perf_counter() - start
    return StreamTiming(200, first, time.perf_counter() - start, chunks)


async def timed_request(session: aiohttp.ClientSession, method: str, url: str, key: str | None = None,
                        body: dict | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    async with session.request(method, url, json=body, headers=auth(key)) as response:
        await response.read()
        return response.status, time.perf_counter() - start
