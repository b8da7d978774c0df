"""The keep-alive race (proxy.send): an engine that closes an idle pooled connection just as
the gateway sends on it must not cost the client a 502. A raw asyncio server plays the
engine: it answers the first request of every connection, and closes the connection without
answering when a second request arrives on it (what a server whose keep-alive timer fired
does). Failure injection only: vLLM cannot be made to do this on demand."""

from __future__ import annotations

import asyncio
import socket
import struct
from types import SimpleNamespace

import aiohttp
import pytest

from llm_gateway import proxy
from llm_gateway.breaker import CLOSED
from llm_gateway.engines import EnginePool
from llm_gateway.failures import EngineFailure
from llm_gateway.tokens import TokenCounter
from tests.support.procs import free_port

ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
          b"connection: keep-alive\r\n\r\n{}")


async def _read_request(reader: asyncio.StreamReader) -> None:
    """One HTTP request, head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)


async def _one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                      answer: bytes = ANSWER) -> None:
    served = 0
    try:
        while True:
            await _read_request(reader)
            if served:
                break                   # keep-alive expired: close without answering
            writer.write(answer)
            await writer.drain()
            served += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_a_request_on_a_connection_the_engine_just_closed_is_sent_again():
    port = free_port()
    server = await asyncio.start_server(_one_request_per_connection, "127.0.0.1", port)
    engine = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(4):   # each one after the first goes out on the pooled connection first
                response = await proxy.send(session, engine, "/v1/completions", {"prompt": "x"}, timeout)
                assert response.status == 200
                assert await response.read() == b"{}"
    finally:
        server.close()
        await server.wait_closed()


TOKENIZE_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n"
                   b"connection: keep-alive\r\n\r\n{\"count\": 3}\n")


async def test_counting_tokens_on_a_connection_the_engine_just_closed_is_sent_again():
    """The same race on the /tokenize path: resent, and the engine is neither marked down nor
    charged a failure (it was labelled a refused connection, which takes an engine out at once)."""
    port = free_port()
    server = await asyncio.start_server(lambda r, w: _one_request_per_connection(r, w, TOKENIZE_ANSWER),
                                        "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            pool = EnginePool([url], session, failure_threshold=1, open_seconds=60, health_interval=60)
            engine = pool.engines[0]
            engine.healthy = True
            counter = TokenCounter(pool, session)
            for _ in range(4):
                assert await counter.count_texts("m", frozenset([url]), ["x"]) == {0: 3}
            assert engine.healthy and engine.breaker.state == CLOSED
    finally:
        server.close()
        await server.wait_closed()


async def _reset_the_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Like _one_request_per_connection, but the second request on a connection is answered with
    a reset (RST), as a pooled connection to an engine that was killed is: ECONNRESET, not the
    clean end of stream of the keep-alive race."""
    served = 0
    try:
        while True:
            await _read_request(reader)
            if served:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(ANSWER)
            await writer.drain()
            served += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_a_request_on_a_pooled_connection_that_was_reset_is_sent_again():
    """A pooled connection the engine reset (it was killed) is resent like a closed one: the engine
    never saw the request, so it must not cost the client a 502."""
    port = free_port()
    server = await asyncio.start_server(_reset_the_second_request, "127.0.0.1", port)
    engine = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(4):
                response = await proxy.send(session, engine, "/v1/completions", {"prompt": "x"}, timeout)
                assert response.status == 200
                assert await response.read() == b"{}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reset_pooled_connection_to_an_engine_that_is_gone_is_a_503_not_billed():
    """The same, with the engine gone: the resend is refused, so the request never reached an
    engine: 503 `engine_unavailable` with Retry-After and the "connect" label (not billed,
    reservation given back: accounting.Books), not a 502."""
    port = free_port()
    server = await asyncio.start_server(_reset_the_second_request, "127.0.0.1", port)
    engine = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        response = await proxy.send(session, engine, "/v1/completions", {"prompt": "x"}, timeout)
        await response.read()
        server.close()              # nothing listens any more; the pooled connection is still open
        await server.wait_closed()
        with pytest.raises(EngineFailure) as failure:
            await proxy.send(session, engine, "/v1/completions", {"prompt": "x"}, timeout)
        assert failure.value.kind == "connect"
        assert failure.value.status == 503 and failure.value.code == "engine_unavailable"
        assert failure.value.headers["Retry-After"] == "1"
