"""hangup.HangUpWatch: a non-streaming request's client hang-up, noticed without a task per request.

The end-to-end proof (vLLM aborts a non-streaming request whose client left) is
test_streaming.py::test_client_disconnect_while_a_non_streaming_answer_is_generated_aborts_it;
these check the watch's own rules with an ASGI `receive` whose client hangs up on cue.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from llm_gateway.hangup import ClientGone, HangUpWatch

GRACE = 0.1


def _client(hang_up_after: float | None):
    """An ASGI receive: the request body, then http.disconnect after `hang_up_after` s (never if None)."""
    sent_body = False
    opened = time.monotonic()

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if hang_up_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(max(0.0, opened + hang_up_after - time.monotonic()))
        return {"type": "http.disconnect"}

    return receive


async def _with_watch(hangups: HangUpWatch, receive, wait: float):
    watch = hangups.watch(receive)
    await receive()                                   # the body, read before the watch as in api.py
    with watch:
        await asyncio.sleep(wait)                     # waiting for the engine
    return watch


@pytest.fixture
async def hangups():
    watch = HangUpWatch(GRACE)
    loop = asyncio.create_task(watch.run())
    yield watch
    loop.cancel()


async def test_a_request_answered_within_the_grace_costs_no_watcher_task(hangups):
    watch = await _with_watch(hangups, _client(hang_up_after=None), wait=0.0)
    await asyncio.sleep(3 * GRACE)                    # sweeps that find nothing left to start
    assert not watch.watching
    assert not hangups._waiting


async def test_a_hang_up_during_a_long_wait_ends_it_at_once(hangups):
    started = time.monotonic()
    with pytest.raises(ClientGone):
        await _with_watch(hangups, _client(hang_up_after=0.6), wait=30)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 5, elapsed
    assert not hangups._waiting


async def test_a_hang_up_before_the_watcher_starts_is_noticed_by_it(hangups):
    started = time.monotonic()
    with pytest.raises(ClientGone):
        await _with_watch(hangups, _client(hang_up_after=0.0), wait=30)
    assert time.monotonic() - started < 5


async def test_a_long_wait_whose_client_stays_ends_normally_and_stops_its_watcher(hangups):
    watch = await _with_watch(hangups, _client(hang_up_after=None), wait=4 * GRACE)
    assert watch.watching and not watch.gone
    await asyncio.sleep(0)
    assert watch._watcher.cancelled()
    assert asyncio.current_task().cancelling() == 0  # nothing left pending on the request's task
    assert not hangups._waiting


async def test_the_request_task_is_not_cancelled_once_the_block_is_over(hangups):
    """A hang-up after the answer is sent (the block has ended) must not cancel what the
    request does next (closing its books)."""
    receive = _client(hang_up_after=3 * GRACE)
    watch = await _with_watch(hangups, receive, wait=2.5 * GRACE)
    assert watch.watching
    await asyncio.sleep(3 * GRACE)                    # the client leaves now, after the block
    assert asyncio.current_task().cancelling() == 0
