"""A fake engine for failure injection ONLY: what the real vLLM cannot be made to do on demand.

It speaks just enough of vLLM's HTTP API for the gateway to use it (/health, /v1/models with
max_model_len, /tokenize, the two completion routes) and misbehaves as told:

    ok              answer normally (a short stream ending in [DONE], or JSON with usage)
    die_mid_stream  send `chunks_before_failure` events, then drop the connection
    truncated       send `chunks_before_failure` events, then end the response cleanly, no [DONE]
    status_500      answer 500 with an OpenAI-shaped error
    hang            accept the request and never answer
    drop            read a non-streaming request, then drop the connection without answering
                    (an engine that dies working on it)
    drop_mid_answer send a non-streaming answer's headers and half its body, then drop the
                    connection
    slow            stream one event every `event_interval` seconds, `events` of them

Every completion body it receives is kept in `.bodies` (to check what the gateway sent:
priority, max_tokens, stream_options). `healthy = False` makes /health answer 503.
`/tokenize` calls are counted in `.tokenize_calls`; `hold_tokenize = True` makes them wait until
their client hangs up (counted in `.tokenize_abandoned`).
Runs an aiohttp server on its own thread and loop, so sync and async tests can use it.

    with FlakyUpstream() as upstream:
        upstream.mode = "die_mid_stream"
        gw = gateway_factory(engines=[upstream.url])
"""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
from aiohttp import web

from tests.support.procs import free_port

MODEL = "flaky-model"


class FlakyUpstream:
    def __init__(self, model: str = MODEL, max_model_len: int = 2048):
        self.model = model
        self.max_model_len = max_model_len
        self.port = free_port()
        self.mode = "ok"
        self.healthy = True
        self.chunks_before_failure = 2
        self.events = 5
        self.event_interval = 0.2
        self.event_padding = 0      # bytes of filler text in each streamed event (to fill buffers)
        self.event_text: str | None = None   # the text of every streamed event (default t0, t1, ...)
        self.answer_padding = 0     # bytes of filler text in a non-streaming answer (before its usage)
        self.bodies: list[dict] = []
        self.completions_started = 0
        self.connections_closed_early = 0   # requests whose client went away before the end
        self.tokenize_calls = 0
        self.hold_tokenize = False
        self.tokenize_abandoned = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FlakyUpstream:
        self._thread = threading.Thread(target=self._serve, name=f"flaky-upstream-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("flaky upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> FlakyUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    # -- handlers --------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "owned_by": "flaky", "root": self.model, "parent": None,
                "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenize_calls += 1
        if self.hold_tokenize:
            await self._until_client_leaves(request)
            self.tokenize_abandoned += 1
            return web.Response(status=499)
        text = body.get("prompt") or orjson.dumps(body.get("messages")).decode()
        count = len(text.encode())  # one token per byte: the worst case the gateway's bound assumes
        return web.json_response({"count": count, "max_model_len": self.max_model_len, "tokens": []})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        self.completions_started += 1
        mode = self.mode
        if mode == "status_500":
            return web.json_response({"error": {"message": "injected failure", "type": "InternalServerError",
                                                "param": None, "code": 500}}, status=500)
        if mode == "hang":
            await self._until_client_leaves(request)
            self.connections_closed_early += 1
            return web.Response(status=499)
        chat = request.path.endswith("chat/completions")
        if mode == "drop":
            request.transport.close()
            return web.Response(status=499)     # never sent: the connection is gone
        if mode == "drop_mid_answer":
            payload = orjson.dumps(self._completion(chat))
            response = web.StreamResponse(headers={"content-type": "application/json",
                                                   "content-length": str(len(payload))})
            await response.prepare(request)
            await response.write(payload[:len(payload) // 2])
            request.transport.close()
            return response
        if not body.get("stream"):
            return web.json_response(self._completion(chat))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        count = self.chunks_before_failure if mode in ("die_mid_stream", "truncated") else self.events
        finished = False
        try:
            for i in range(count):
                await response.write(b"data: " + orjson.dumps(self._chunk(chat, i)) + b"\n\n")
                if mode == "slow":
                    await asyncio.sleep(self.event_interval)
            if mode == "die_mid_stream":
                request.transport.close()   # the engine "crashes": connection gone, no [DONE]
                return response
            if mode == "truncated":
                await response.write_eof()  # a well-formed end of the HTTP response, but no [DONE]
                finished = True
                return response
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": count, "total_tokens": 3 + count}
                await response.write(b"data: " + orjson.dumps({"id": "x", "object": "chunk", "model": self.model,
                                                                "choices": [], "usage": usage}) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            finished = True
        finally:
            if not finished and mode != "die_mid_stream":
                self.connections_closed_early += 1
        return response

    @staticmethod
    async def _until_client_leaves(request: web.Request) -> None:
        # aiohttp does not cancel a handler whose client left: watch the connection instead.
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.05)

    def _completion(self, chat: bool) -> dict:
        choice = ({"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": "ok", "finish_reason": "stop"})
        if self.answer_padding:
            choice["padding"] = "x" * self.answer_padding
        return {"id": "cmpl-flaky", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    def _chunk(self, chat: bool, i: int) -> dict:
        text = f"t{i}" if self.event_text is None else self.event_text
        delta = {"index": 0, "delta": {"content": text}, "finish_reason": None} if chat else \
            {"index": 0, "text": text, "finish_reason": None}
        chunk = {"id": "cmpl-flaky", "object": "chat.completion.chunk" if chat else "text_completion",
                 "model": self.model, "choices": [delta]}
        if self.event_padding:
            chunk["padding"] = "x" * self.event_padding
        return chunk
