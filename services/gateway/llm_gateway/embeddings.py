"""POST /v1/embeddings: what the gateway checks before an embedding engine sees the request.

The request path is the completions' (api.py: authenticate, validate, reserve, settle, admit,
pick an engine of the model, relay, close the books); this module is the validation that
differs (validation.Validator.plan/settle call it for kind EMBEDDING):

- `input`: a string, an array of strings, an array of token ids or an array of token-id arrays,
  as OpenAI takes it; not empty, no empty string, at most MAX_INPUTS inputs -> else 400.
  Chat-style inputs (vLLM's `messages` extension) are not taken: 400.
- every input must fit the model's context (`max_model_len` from the catalog): token arrays are
  counted exactly, texts by the byte bound of tokens.py, and the texts that bound leaves open
  by the engine's /tokenize once the limiter has admitted the request (settle) -> else 400
  `context_length_exceeded`, and nothing is sent to /v1/embeddings. With vLLM's
  `truncate_prompt_tokens` the engine cuts each input to that many tokens (-1: the context),
  so no input is too long; the value itself must fit the context.
- `encoding_format`: "float" or "base64" (OpenAI's two; vLLM's binary "bytes" formats are not
  relayed) -> else 400. `dimensions`: a positive integer, passed to the engine, which answers
  400 itself when the model cannot shorten its embeddings (vLLM: only Matryoshka models can;
  PoolingParams._set_default_parameters in vllm/pooling_params.py, vLLM 0.32). The engine's
  400 reaches the client as it is.

Tokens reserved in the limiter: the inputs' prompt tokens (exact for token arrays, estimates
for texts); an embedding has no completion. Reconciled with the engine's `usage` when the
request ends, like every reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import tokens
from .catalog import ServedModel
from .errors import InvalidRequest

# OpenAI's limit on the inputs of one embeddings request ("any array must be 2048 dimensions or
# less"). Each input is a prompt the engine encodes; the gateway counts the unsettled ones.
MAX_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")

Input = str | list[int]


@dataclass(slots=True)
class EmbeddingInputs:
    prompt_tokens: int              # token arrays exactly, texts estimated
    unsettled: list[str] | None     # texts the byte bound does not fit under the limit (None: none)


def check(body: dict[str, Any], served: ServedModel) -> EmbeddingInputs:
    """Everything that can be checked without an engine; 400 for what is wrong."""
    if "messages" in body:
        raise InvalidRequest("Chat-style embedding requests (`messages`) are not supported; send `input`.",
                             param="messages")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise InvalidRequest(f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}; got {encoding!r}.",
                             param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                   or dimensions < 1):
        raise InvalidRequest("dimensions must be a positive integer.", param="dimensions")
    inputs = _inputs(body.get("input"))
    limit = _input_limit(body, served.max_model_len)
    truncated = body.get("truncate_prompt_tokens") is not None
    total = 0
    unsettled: list[str] = []
    for item in inputs:
        if isinstance(item, list):
            count = len(item)
            if limit is not None and count > limit and not truncated:
                raise too_long(served, count)
        else:
            count = tokens.text_estimate(item)
            if limit is not None and tokens.text_bound(item) > limit and not truncated:
                unsettled.append(item)
        total += count if limit is None or not truncated else min(count, limit)
    return EmbeddingInputs(total, unsettled or None)


def check_counted(served: ServedModel, longest: int) -> None:
    """The exact count of the longest unsettled input (settle) against the model's context."""
    if served.max_model_len is not None and longest > served.max_model_len:
        raise too_long(served, longest)


def too_long(served: ServedModel, count: int) -> InvalidRequest:
    # vLLM's own wording for a prompt over the limit (TokenizeParams._token_len_check).
    return InvalidRequest(f"This model's maximum context length is {served.max_model_len} tokens. However, an "
                          f"input has {count} tokens. Please reduce the length of the input.",
                          param="input", code="context_length_exceeded")


def _inputs(value: object) -> list[Input]:
    """`input` as a list of inputs: texts, or token-id arrays."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input cannot be an empty string.", param="input")
        return [value]
    if isinstance(value, list) and value:
        if len(value) > MAX_INPUTS:
            raise InvalidRequest(f"input may hold at most {MAX_INPUTS} inputs; this request has {len(value)}. "
                                 "Split it into several requests.", param="input")
        if all(_is_token(t) for t in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            if not all(value):
                raise InvalidRequest("input cannot contain an empty string.", param="input")
            return list(value)
        if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
            return list(value)
    raise InvalidRequest("input must be a string, an array of strings, an array of token ids or an "
                         "array of token id arrays, and not empty.", param="input")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_limit(body: dict[str, Any], context: int | None) -> int | None:
    """How many tokens an input may have: the context, or what vLLM truncates each input to."""
    truncate = body.get("truncate_prompt_tokens")
    if truncate is None:
        return context
    if not isinstance(truncate, int) or isinstance(truncate, bool) or truncate < -1 or truncate == 0:
        raise InvalidRequest("truncate_prompt_tokens must be -1 (the model's context) or a positive integer.",
                             param="truncate_prompt_tokens")
    if truncate == -1:
        return context
    if context is not None and truncate > context:
        raise InvalidRequest(f"truncate_prompt_tokens ({truncate}) is more than this model's maximum context "
                             f"length ({context}).", param="truncate_prompt_tokens")
    return truncate
