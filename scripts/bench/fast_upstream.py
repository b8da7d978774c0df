"""A fast stand-in for vLLM's OpenAI server, for gateway-only measurements (memory soak).

Answers the endpoints the gateway uses (/health, /v1/models, /tokenize, chat and text
completions, streaming with usage in the last chunk) at once, so a run of 100k requests
measures the gateway, not the CPU engine. Not used by any test.

    .venv/bin/python -m scripts.bench.fast_upstream --port 18000
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web

MODEL = "tiny-llama"
MAX_MODEL_LEN = 2048
CHUNKS = 8


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def health(_: web.Request) -> web.Response:
    return web.Response(text="")


async def models(_: web.Request) -> web.Response:
    card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm", "root": MODEL, "parent": None,
            "max_model_len": MAX_MODEL_LEN}
    return web.json_response({"object": "list", "data": [card]})


async def tokenize(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    text = body.get("prompt") or orjson.dumps(body.get("messages", [])).decode()
    count = max(1, len(text) // 4)
    return web.json_response({"count": count, "max_model_len": MAX_MODEL_LEN, "tokens": list(range(count))})


async def metrics(_: web.Request) -> web.Response:
    return web.Response(text="vllm:num_requests_running 0.0\nvllm:num_requests_waiting 0.0\n")


async def completions(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    chat = request.path.endswith("/chat/completions")
    n = min(int(body.get("max_tokens") or 16), CHUNKS)
    base = {"id": "cmpl-fast", "created": int(time.time()), "model": body.get("model", MODEL),
            "object": "chat.completion.chunk" if chat else "text_completion"}
    if not body.get("stream"):
        choice = ({"index": 0, "message": {"role": "assistant", "content": "x" * n}, "finish_reason": "length"}
                  if chat else {"index": 0, "text": "x" * n, "finish_reason": "length"})
        return web.json_response({**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": [choice], "usage": _usage(8, n)})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _i in range(n):
        choice = ({"index": 0, "delta": {"content": "x"}, "finish_reason": None} if chat
                  else {"index": 0, "text": "x", "finish_reason": None})
        await response.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
    await response.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": _usage(8, n)}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def app() -> web.Application:
    application = web.Application()
    application.add_routes([
        web.get("/health", health), web.get("/v1/models", models), web.post("/tokenize", tokenize),
        web.get("/metrics", metrics), web.post("/v1/chat/completions", completions),
        web.post("/v1/completions", completions),
    ])
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
