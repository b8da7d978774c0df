"""Small helpers shared by the gateway API tests."""

from __future__ import annotations

import json
import socket

import requests

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(model: str, content: str = "hello", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def post(gateway, path: str, key: str | None, body: dict | bytes, headers: dict | None = None,
         **kw) -> requests.Response:
    all_headers = {**(auth(key) if key else {}), **(headers or {})}
    if isinstance(body, (bytes, str)):
        return requests.post(gateway.url + path, data=body, headers=all_headers, timeout=60, **kw)
    return requests.post(gateway.url + path, json=body, headers=all_headers, timeout=60, **kw)


def raw_request(gateway, key: str, body: dict, path: str = CHAT) -> socket.socket:
    """A request sent on a raw socket, so the test alone decides when the connection ends."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.spec.port), timeout=30)
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: " + str(len(payload)).encode()
                 + b"\r\n\r\n" + payload)
    return sock


def assert_openai_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    """The response is `status` with OpenAI's error shape; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def sse_json(text: str) -> list[dict]:
    return [json.loads(d) for d in sse_data(text) if d != "[DONE]"]
