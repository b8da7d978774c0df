import json
import urllib.request

import pytest

pytestmark = pytest.mark.engine


def test_engine_serves_a_completion_and_counts_it(engine):
    before = engine.metric("vllm:request_success_total")
    body = json.dumps({"model": engine.model, "prompt": "hello", "max_tokens": 4}).encode()
    req = urllib.request.Request(engine.url + "/v1/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        usage = json.loads(response.read())["usage"]
    assert usage["completion_tokens"] == 4
    assert engine.metric("vllm:request_success_total") == before + 1
