"""Validation before anything reaches an engine.

In order, each failure answered in OpenAI's error shape:
- body larger than `max_body_bytes` -> 413 (Content-Length first, then the bytes actually read)
- not a JSON object -> 400
- `model` missing -> 400; the key may not use it -> 403 (`model_not_allowed`, checked before
  existence so a restricted key learns nothing about other models); not served -> 404
  (503 with Retry-After instead while no engine is reachable: the model may just be unseen)
- an embedding model asked to generate, or a generative model asked for embeddings -> 400
  (`model_not_supported`); an embeddings request is then checked by embeddings.py
- malformed `messages` / `prompt` / `max_tokens` / `n` / `stream` -> 400; `n` above `max_n` -> 400
  (every choice is a whole answer the engine generates and, unstreamed, the gateway holds)
- `max_tokens` above the key's cap -> 400 (rejected, not clamped: a silently shortened
  completion is worse than a clear error). Absent -> set to min(key cap, context - prompt).
- a `prompt` list of more than MAX_PROMPTS prompts -> 400 (vLLM refuses it too)
- prompt tokens + max_tokens beyond the model's context -> 400 `context_length_exceeded`;
  nothing is sent to the completion endpoint.

Two steps, so that no engine round trip happens before the rate limiter has admitted the
request: `plan()` checks everything it can without an engine (the byte bounds of tokens.py
settle most requests), and `settle()` asks the engine's tokenizer for the exact counts the
bounds left open (only then are max_tokens and the context check final).

The result is a `Plan`: what the rest of the request path needs to know about the request.
The body is edited in place (max_tokens default, stream_options) and re-serialised once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from . import embeddings, metrics, tokens
from .catalog import ModelCatalog, ServedModel
from .engines import EMBED, GENERATE
from .errors import InvalidRequest, NotFound, PayloadTooLarge, PermissionDenied, ServiceUnavailable
from .keys import ApiKey

CHAT, COMPLETION, EMBEDDING = "chat", "completion", "embedding"   # what a request asks for

# vLLM refuses a completion request with more prompts than VLLM_MAX_COMPLETION_PROMPTS (default
# 1024; a flat list of token ids is one prompt): CompletionRequest.validate_prompt_list_length in
# vllm/entrypoints/openai/completion/protocol.py (vLLM 0.32, vllm-project/vllm PR #47845).
# Refused here first, before any prompt of such a list is counted.
MAX_PROMPTS = 1024

_not_allowed = metrics.AUTH_FAILURES.labels("model_not_allowed")


@dataclass(slots=True)
class Plan:
    served: ServedModel
    kind: str                   # CHAT | COMPLETION | EMBEDDING
    stream: bool
    max_tokens: int | None      # per choice; None for embeddings, or if the engine reports no context length
    prompt_tokens: int          # exact when counted, else an estimate (for reservation and accounting)
    reserved_tokens: int        # reserved in the limiter: prompts + every choice's max_tokens
    client_wants_usage: bool    # streaming: the client itself asked for the usage chunk
    # Left for settle(): what the byte bounds did not settle (None: nothing left).
    unsettled: list[str] | None = None   # chat: [] (the messages); completion, embedding: the texts to count
    requested: int | None = None         # max_tokens as the client sent it
    cap: int | None = None               # the key's max_tokens

    @property
    def settled(self) -> bool:
        return self.unsettled is None


async def read_json_body(request: Request, limit: int) -> tuple[dict[str, Any], int]:
    """The request body parsed as a JSON object, and its size in bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body, size


class Validator:
    def __init__(self, catalog: ModelCatalog, counter: tokens.TokenCounter, max_n: int = 16):
        self._catalog = catalog
        self._counter = counter
        self._max_n = max_n

    async def plan(self, body: dict[str, Any], body_size: int, key: ApiKey, kind: str) -> Plan:
        served = await self._model(body, key)
        _check_kind(served, kind)
        if kind == EMBEDDING:
            inputs = embeddings.check(body, served)
            return Plan(served, kind, False, None, inputs.prompt_tokens, inputs.prompt_tokens, False,
                        inputs.unsettled)
        stream = _flag(body, "stream")
        client_wants_usage = False
        if stream:
            options = body.get("stream_options") or {}
            if not isinstance(options, dict):
                raise InvalidRequest("stream_options must be an object.", param="stream_options")
            client_wants_usage = bool(options.get("include_usage"))
            # The final chunk then carries `usage`, which reconciles the rate-limit reservation.
            body["stream_options"] = {**options, "include_usage": True}
        choices = _positive_int(body, "n") or 1
        if choices > self._max_n:
            # OpenAI's wording and code for an integer above its maximum.
            raise InvalidRequest(f"Invalid 'n': integer above maximum value. Expected a value <= {self._max_n}, "
                                 f"but got {choices} instead.", param="n", code="integer_above_max_value")

        requested = _requested_max_tokens(body, kind)
        if requested is not None and key.max_tokens is not None and requested > key.max_tokens:
            raise InvalidRequest(f"max_tokens is too large: {requested}. This API key allows at most "
                                 f"{key.max_tokens} completion tokens per request.",
                                 param="max_tokens", code="max_tokens_exceeded")

        context = served.max_model_len
        if requested is not None and context is not None and requested >= context:
            # No prompt fits beside it, whatever its length: no need to count anything.
            param = "messages" if kind == CHAT else "prompt"
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens. However, you requested {requested} "
                f"tokens for the completion alone. Please reduce the length of the completion.",
                param=param, code="context_length_exceeded")
        if kind == CHAT:
            prompt_tokens, max_tokens, unsettled = self._fit_chat(body, body_size, served, requested, key.max_tokens)
            prompt_count = 1
        else:
            prompt_tokens, max_tokens, unsettled, prompt_count = self._fit_completion(body, served, requested,
                                                                                     key.max_tokens)
        if requested is None and max_tokens is not None and unsettled is None:
            body["max_tokens"] = max_tokens
        # Unsettled, max_tokens is a guess until settle(); the reservation is reconciled with the
        # real usage when the request ends, like every reservation.
        reserved = prompt_tokens + (max_tokens or 0) * choices * prompt_count
        return Plan(served, kind, stream, max_tokens, prompt_tokens, reserved, client_wants_usage, unsettled,
                    requested, key.max_tokens)

    async def settle(self, plan: Plan, body: dict[str, Any]) -> None:
        """Count exactly what plan() left unsettled (engine round trips), then fix max_tokens;
        400 `context_length_exceeded` if the prompt does not fit after all."""
        if plan.unsettled is None:
            return
        served = plan.served
        if plan.kind == EMBEDDING:
            counts = await self._counter.count_texts(served.id, served.engines, plan.unsettled)
            plan.prompt_tokens += sum(count - tokens.text_estimate(plan.unsettled[i]) for i, count in counts.items())
            embeddings.check_counted(served, max(counts.values()))
            plan.unsettled = None
            return
        if plan.kind == CHAT:
            longest = plan.prompt_tokens = await self._counter.count_chat(served.id, served.engines, body)
            param = "messages"
        else:
            counts = await self._counter.count_texts(served.id, served.engines, plan.unsettled)
            # Exact counts replace the estimates of the prompts that were counted.
            plan.prompt_tokens += sum(count - tokens.text_estimate(plan.unsettled[i]) for i, count in counts.items())
            longest, param = max(counts.values()), "prompt"
        context = served.max_model_len
        assert context is not None  # plan() leaves counting unsettled only against a known context
        plan.max_tokens = _completion_room(context, longest, plan.requested, plan.cap, param)
        if plan.requested is None:
            body["max_tokens"] = plan.max_tokens
        plan.unsettled = None

    async def _model(self, body: dict[str, Any], key: ApiKey) -> ServedModel:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("You must provide a model parameter.", param="model")
        if not key.allows(model):
            _not_allowed.inc()
            raise PermissionDenied(f"This API key is not allowed to use the model `{model}`.", param="model")
        served = await self._catalog.find(model)
        if served is None and not self._catalog.engines_reachable():
            # No engine has answered yet: "unknown model" would be a guess. Ask the client to retry.
            metrics.ADMISSION_REJECTIONS.labels("no_healthy_engine").inc()
            raise ServiceUnavailable("No inference engine is reachable right now; retry shortly.",
                                     reason="no_healthy_engine", retry_after=2)
        if served is None:
            raise NotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        return served

    # -- fitting the prompt and the completion into the context window -----------------------
    # Each returns (prompt tokens estimate, max_tokens, unsettled[, prompt count]); unsettled is
    # None when the byte bound settled it, else what settle() must count.

    def _fit_chat(self, body: dict[str, Any], body_size: int, served: ServedModel, requested: int | None,
                  cap: int | None) -> tuple[int, int | None, list[str] | None]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty array.", param="messages")
        bound = tokens.chat_bound(body_size, body)
        context = served.max_model_len
        wanted = requested if requested is not None else cap
        estimate = min(bound, tokens.estimate(body_size))
        if context is None or (wanted is not None and bound + wanted <= context):
            return estimate, wanted, None
        return estimate, _guess_room(context, estimate, wanted), []

    def _fit_completion(self, body: dict[str, Any], served: ServedModel, requested: int | None,
                        cap: int | None) -> tuple[int, int | None, list[str] | None, int]:
        prompts = _prompts(body.get("prompt"))
        context = served.max_model_len
        wanted = requested if requested is not None else cap
        counts: list[int] = []       # exact: token-id prompts
        unsettled: list[str] = []    # text prompts the byte bound does not settle
        estimates = 0
        for prompt in prompts:
            if isinstance(prompt, list):
                counts.append(len(prompt))
                estimates += len(prompt)
                continue
            estimates += tokens.text_estimate(prompt)
            if not (context is None or (wanted is not None and tokens.text_bound(prompt) + wanted <= context)):
                unsettled.append(prompt)
        if context is None:
            return estimates, wanted, None, len(prompts)
        if unsettled:
            longest = max(map(tokens.text_estimate, unsettled))
            return estimates, _guess_room(context, longest, wanted), unsettled, len(prompts)
        if not counts:
            return estimates, wanted, None, len(prompts)
        # The longest prompt decides how much room is left for the completion.
        return estimates, _completion_room(context, max(counts), requested, cap, "prompt"), None, len(prompts)


def _guess_room(context: int, prompt_estimate: int, wanted: int | None) -> int:
    """max_tokens to reserve before the exact count (settle() decides the real one)."""
    return wanted if wanted is not None else max(1, context - prompt_estimate)


def _completion_room(context: int, prompt_tokens: int, requested: int | None, cap: int | None,
                     param: str) -> int:
    if requested is not None:
        if prompt_tokens + requested > context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {param}, {requested} in the "
                f"completion). Please reduce the length of the {param} or completion.",
                param=param, code="context_length_exceeded")
        return requested
    room = context - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"This model's maximum context length is {context} tokens. However, your {param} resulted in "
            f"{prompt_tokens} tokens, leaving no room for a completion. Please reduce the length of the {param}.",
            param=param, code="context_length_exceeded")
    return room if cap is None else min(cap, room)


def _prompts(prompt: object) -> list[str | list[int]]:
    """A completion prompt as a list of prompts: text, or token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if len(prompt) > MAX_PROMPTS:
            raise InvalidRequest(f"prompt may hold at most {MAX_PROMPTS} prompts; this request has {len(prompt)}. "
                                 "Split it into several requests.", param="prompt")
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return list(prompt)
    raise InvalidRequest("prompt must be a string, an array of strings, an array of token ids or an array of "
                         "token id arrays, and not empty.", param="prompt")


def _check_kind(served: ServedModel, kind: str) -> None:
    """An embedding model only embeds, a generative model only generates: else 400."""
    if kind == EMBEDDING and served.kind != EMBED:
        raise InvalidRequest(f"The model `{served.id}` is not an embedding model; use it with /v1/chat/completions "
                             "or /v1/completions.", param="model", code="model_not_supported")
    if kind != EMBEDDING and served.kind != GENERATE:
        raise InvalidRequest(f"The model `{served.id}` is an embedding model; use it with /v1/embeddings.",
                             param="model", code="model_not_supported")


def _requested_max_tokens(body: dict[str, Any], kind: str) -> int | None:
    # Chat requests may use OpenAI's newer name; vLLM prefers it when both are given.
    if kind == CHAT and body.get("max_completion_tokens") is not None:
        return _positive_int(body, "max_completion_tokens")
    return _positive_int(body, "max_tokens")


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest(f"{name} must be a positive integer.", param=name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean.", param=name)
    return value
