"""Errors the gateway answers with, all in OpenAI's JSON error shape.

Modules raise these; the app turns them into responses in one place, so a client
mistake is never a 500 and every error body looks like OpenAI's:
    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):  # 400: malformed JSON, context overflow, bad fields
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):  # 401: missing/malformed/unknown/revoked/expired key
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason  # metric label: missing|malformed|unknown|revoked|expired|invalid_secret


class PermissionDenied(GatewayError):  # 403: key not allowed to use this model / admin route
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):  # 404: unknown model
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):  # 413
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):  # 429 with Retry-After and x-ratelimit-* headers
    status = 429
    type = "rate_limit_exceeded"  # OpenAI uses "requests" / "tokens" codes under this type
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason  # rpm|tpm|concurrency


class ServiceUnavailable(GatewayError):  # 503 with Retry-After: overload, no engine, limiter down
    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, reason: str, retry_after: float = 1.0, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))} | dict(kw.pop("headers", {}) or {})
        super().__init__(message, headers=headers, **kw)
        self.reason = reason


class UpstreamError(GatewayError):  # 502 / 504: the engine failed or timed out
    status = 502
    type = "server_error"
    code = "upstream_error"
