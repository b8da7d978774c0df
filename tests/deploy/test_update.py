"""Day 2, for real: change a gateway setting and re-apply (driver.update, as `pulumi up` would).

The gateway's inputs change (its environment), so it is replaced, delete_before_replace: the
old container is stopped with its destroy_grace_seconds as the stop timeout (SIGTERM, the
gateway drains in-flight requests for shutdown_grace_seconds, then SIGKILL), then the new one
is created. A stream in flight when the gateway's replacement starts must complete (``data: [DONE]``, 200);
the engine, PostgreSQL and Redis are not touched (same container ids); the key made before the
update works on the new gateway, and the usage rows, the drained stream's included, are in
PostgreSQL (its volume).
"""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
import requests

from stacks.postgres import DATABASE, USER
from tests.deploy import local
from tests.deploy.test_recreate import complete, docker, gateway_url, usage_count

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]  # one deployment (a fresh machine also builds)

# (max_model_len 2048) long enough to be in flight when the old gateway gets SIGTERM, short enough to drain
STREAM_TOKENS = 1900


class Stream(threading.Thread):
    """A streamed completion through the gateway, read to its end; event times recorded."""

    def __init__(self, url: str, key: str):
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.status: int | None = None
        self.events: list[tuple[float, str]] = []  # (monotonic time, data line)
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        self.t0 = time.monotonic()
        try:
            with requests.post(self.url + "/v1/chat/completions", stream=True, timeout=(10, 120),
                               headers={"Authorization": f"Bearer {self.key}"},
                               json={"model": "tiny-llama", "stream": True, "max_tokens": STREAM_TOKENS,
                                     "ignore_eos": True,
                                     "messages": [{"role": "user", "content": "Count."}]}) as answer:
                self.status = answer.status_code
                for line in answer.iter_lines(decode_unicode=True):
                    if line.startswith("data:"):
                        self.events.append((time.monotonic(), line))
                        if len(self.events) >= 5:
                            self.started.set()
        except BaseException as error:  # noqa: BLE001  reported by the test
            self.error = error
        finally:
            self.started.set()

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1][1].strip() == "data: [DONE]"


def container_ids(deployment: local.LocalDeployment) -> dict[str, str]:
    """Every container on the node's daemon (running or exited jobs): name -> id."""
    lines = docker(deployment, "ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.ID}}").split("\n")
    return dict(line.split() for line in lines if line.strip())


def test_a_changed_gateway_setting_replaces_the_gateway_and_drains_its_streams(request):
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        node = local.up()
    try:
        prefix = node.settings.name_prefix
        created = json.loads(docker(node, "exec", f"{prefix}-gateway", "python", "-m", "llm_gateway.admin",
                                    "create-key", "--name", "day-2-update", "--tier", "standard", "--json"))
        key, key_id = created["key"], str(created["id"])
        before = container_ids(node)

        url = gateway_url(node)
        values = copy.deepcopy(node.values)
        assert values["gateway"].get("log_level") != "info"
        values["gateway"]["log_level"] = "info"
        stream = Stream(url, key)
        stops: list[float] = []

        def log(message: str) -> None:
            # The update reached the gateway, just before the driver stops it: a stream is started
            # here and its first events read, so it is in flight when SIGTERM comes (a stream
            # started before the update could end during the program's run, 0.2-3 s here: the
            # tiny model streams its 2048-token limit in under 3 s).
            if message.startswith("replacing container") and message.split()[2].endswith("-gateway"):
                stream.start()
                assert stream.started.wait(120) and stream.error is None and stream.status == 200, \
                    (stream.status, stream.error, stream.events[-3:])
                assert not stream.done, "the stream ended before the stop: raise STREAM_TOKENS"
                stops.append(time.monotonic())
            local.say(message)

        with capture.global_and_fixture_disabled():
            local.reapply(node, values, log=log)
        assert len(stops) == 1, "the gateway was not replaced"
        stream.join(120)
        end = stream.events[-1][0] if stream.events else None
        local.say(f"stream: {len(stream.events)} events, first {stream.events[0][0] - stream.t0:.1f}s after the "
                  f"request, last {end - stream.t0:.1f}s; status {stream.status}; the stop began "
                  f"{stops[0] - stream.t0:.1f}s after the request" if end and stops else "stream: no events")

        after = container_ids(node)
        assert stream.error is None, f"the stream in flight was cut: {stream.error!r}"
        assert stream.status == 200 and stream.done, f"the stream in flight was cut: {stream.events[-2:]}"
        assert end > stops[0], "the stream was not in flight when the gateway was stopped: raise STREAM_TOKENS"
        gateway_name = f"{prefix}-gateway"
        assert {f"{prefix}-{s}" for s in ("engine-chat-0", "engine-embed-0", "postgres", "redis", "prometheus",
                                          "gateway-migrate")} <= set(before)
        assert set(after) == set(before)
        assert after[gateway_name] != before[gateway_name], "the gateway was not replaced"
        untouched = {name: id_ for name, id_ in before.items() if name != gateway_name}
        assert {name: after[name] for name in untouched} == untouched, "the update touched more than the gateway"
        gateway = json.loads(docker(node, "inspect", f"{prefix}-gateway"))[0]
        assert gateway["State"]["Health"]["Status"] == "healthy"
        assert "GATEWAY_LOG_LEVEL=info" in gateway["Config"]["Env"], gateway["Config"]["Env"]

        # The key from before the update, on the new gateway; the drained stream's usage row and this one.
        answer = complete(gateway_url(node), key)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 60
        while usage_count(node, key_id) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert usage_count(node, key_id) == 2
        streamed = docker(node, "exec", f"{prefix}-postgres", "psql", "-U", USER, "-d", DATABASE, "-Atc",
                          f"SELECT max(completion_tokens) FROM usage_records WHERE key_id = '{key_id}'")
        assert int(streamed.strip()) == STREAM_TOKENS, streamed
    finally:
        with capture.global_and_fixture_disabled():
            local.down(node)
