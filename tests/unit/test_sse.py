"""sse.SseEvents: the relay's view of the engine's event stream, and the gateway's error event."""

from __future__ import annotations

import json

import orjson

from llm_gateway.failures import EngineFailure, FailureKind
from llm_gateway.sse import SseEvents, error_event

CHUNK = b'data: {"choices":[{"text":"hi"}]}\n\n'
USAGE_ONLY = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_done_is_recognised_only_as_a_whole_event():
    fake = b'data: {"choices":[{"text":"data: [DONE]"}]}\n\n'
    for chunks, done in [
        ([b"data: [DONE]\n\n"], True),
        ([b'data: {"a":1}\n\ndata: [DONE]\n\n'], True),
        ([b'data: {"a":1}\n\ndata: [DO', b"NE]\n\n"], True),           # split across reads
        ([fake], False),                                                 # inside an event's text
        ([b'data: {"a":1}\n\n', fake], False),
        ([b'data: {"text":"x data: [DONE]\n\n'], False),                 # not at an event's start
        ([b"data: [DONE]"], False),                                      # not ended: not an event yet
    ]:
        events = SseEvents(strip_usage=False)
        out = b"".join(events.feed(chunk) for chunk in chunks)
        assert events.done is done, chunks
        assert out == b"".join(chunks)[:len(out)]                        # relayed as it came


def test_a_partial_event_waits_for_its_end_and_events_are_counted():
    events = SseEvents(strip_usage=False)
    assert events.feed(CHUNK[:10]) == b""
    assert events.feed(CHUNK[10:] + CHUNK[:5]) == CHUNK                  # one whole event, the rest held
    assert events.feed(CHUNK[5:] + DONE) == CHUNK + DONE
    assert events.count == 3 and events.done


def test_usage_is_read_and_its_chunk_kept_when_asked_for():
    events = SseEvents(strip_usage=False)
    out = events.feed(CHUNK + USAGE_ONLY + DONE)
    assert out == CHUNK + USAGE_ONLY + DONE
    assert events.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_usage_only_chunk_is_removed_when_the_client_did_not_ask():
    events = SseEvents(strip_usage=True)
    with_choices = b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    out = events.feed(CHUNK + with_choices + USAGE_ONLY + DONE)
    assert out == CHUNK + with_choices + DONE                            # only the usage-only chunk goes
    assert events.usage == {"prompt_tokens": 3, "completion_tokens": 2}  # the last one seen
    assert events.done


def test_unparseable_usage_looking_event_is_relayed_untouched():
    events = SseEvents(strip_usage=True)
    odd = b'data: {"usage":{ not json\n\n'
    assert events.feed(odd) == odd and events.usage is None


def test_error_event_is_one_openai_error_as_sse_data():
    error = EngineFailure("broken", kind=FailureKind.STREAM_BROKEN)
    event = error_event(error)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    assert json.loads(event[6:]) == orjson.loads(orjson.dumps(error.body()))
    assert json.loads(event[6:])["error"] == {"message": "broken", "type": "server_error", "param": None,
                                              "code": "upstream_error"}
