"""Noticing a client that hangs up while its non-streaming request waits (see HangUpWatch).

A streaming request needs none of this: its relay notices the hang-up itself (proxy.py).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

from starlette.types import Receive


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


class HangUpWatch:
    """Notices a client hanging up while its non-streaming request waits (one per worker).

    vLLM sends a non-streaming answer's headers only once it has generated all of it, so such
    a request spends its life waiting in `proxy.send()`. If the client goes away meanwhile, the wait
    is cancelled (aiohttp closes the upstream connection, so vLLM aborts the request) and the
    block ends in ClientGone. (Streams are watched by their relay instead.)

    Watching takes a task per request, which cost 5-7 % of the maximum rate on a 2-core machine
    for answers that arrive before a hang-up could matter. So a request only registers on
    entry, and `run()` (a background loop) starts the watcher of every request that has been
    waiting for `grace_seconds`: a generating vLLM request. A hang-up is noticed at most twice
    the grace after the request began, and at once after that.

        with hangups.watch(request.receive):
            upstream = await send(...)
            response = await buffered_response(...)
    """

    def __init__(self, grace_seconds: float = 0.1):
        self.grace_seconds = grace_seconds
        self._waiting: set[ClientWatch] = set()

    def watch(self, receive: Receive) -> ClientWatch:
        return ClientWatch(receive, self._waiting)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.grace_seconds)
            if self._waiting:
                began_before = time.monotonic() - self.grace_seconds
                for watch in [w for w in self._waiting if w.since <= began_before]:
                    watch.start()


class ClientWatch:
    """One request's watch (see HangUpWatch): registered on entry, given a watcher task by
    HangUpWatch.run() if the block lasts, unregistered on exit."""

    __slots__ = ("_active", "_receive", "_task", "_waiting", "_watcher", "gone", "since")
    _task: asyncio.Task[Any]   # the request's task, set by __enter__

    def __init__(self, receive: Receive, waiting: set[ClientWatch]):
        self._receive = receive
        self._waiting = waiting
        self._watcher: asyncio.Task[None] | None = None
        self._active = False
        self.since = 0.0
        self.gone = False

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def __enter__(self) -> ClientWatch:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ClientWatch needs a running task to cancel")
        self._task = task
        self._active = True
        self.since = time.monotonic()
        self._waiting.add(self)
        return self

    def start(self) -> None:
        self._waiting.discard(self)
        if self._active and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        # Only while the block runs: then the request's task is suspended on one of the block's
        # awaits, and that is where the cancellation lands.
        if self._active:
            self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._active = False
        self._waiting.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.gone:
            self._task.uncancel()      # our own cancellation, consumed here
            raise ClientGone() from None
