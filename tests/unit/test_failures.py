"""failures.py: every engine transport error and status maps to one failure kind, whose value
is the gateway_upstream_errors_total{kind} label."""

from __future__ import annotations

import types

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from llm_gateway.failures import TRANSPORT_ERRORS, FailureKind, classify, classify_status


def _connector_error() -> aiohttp.ClientConnectorError:
    key = types.SimpleNamespace(host="engine", port=8000, ssl=None)    # only read to describe the error
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))


@pytest.mark.parametrize("error, kind", [
    (_connector_error(), FailureKind.CONNECT),                              # refused / unreachable
    (aiohttp.ConnectionTimeoutError(), FailureKind.CONNECT),                # no connection within sock_connect
    (TimeoutError(), FailureKind.TIMEOUT),
    (aiohttp.ServerTimeoutError(), FailureKind.TIMEOUT),                    # sock_read ran out
    (aiohttp.ServerDisconnectedError(), FailureKind.STREAM_BROKEN),
    (aiohttp.ClientPayloadError("cut"), FailureKind.STREAM_BROKEN),
    (aiohttp.ClientOSError(104, "reset"), FailureKind.STREAM_BROKEN),
    (ConnectionResetError(104, "reset"), FailureKind.STREAM_BROKEN),
])
def test_transport_errors_map_to_one_kind(error, kind):
    assert isinstance(error, TRANSPORT_ERRORS)
    assert classify(error) is kind


def test_statuses():
    assert classify_status(500) is classify_status(503) is FailureKind.STATUS_5XX
    assert classify_status(200) is classify_status(404) is None


def test_kinds_are_the_metric_label_values():
    assert [str(kind) for kind in FailureKind] == ["connect", "timeout", "status_5xx", "stream_broken"]
    counter = Counter("upstream_errors", "", ["upstream", "kind"], registry=(registry := CollectorRegistry()))
    counter.labels("http://engine:8000", FailureKind.STREAM_BROKEN).inc()
    assert registry.get_sample_value("upstream_errors_total", {"upstream": "http://engine:8000",
                                                               "kind": "stream_broken"}) == 1
    assert FailureKind.CONNECT == "connect"          # compares equal to its label, as strings did
