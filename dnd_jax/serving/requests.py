"""Request bodies: bounded reading, strict parsing and limits, each failure a clear 4xx.

Nothing here touches the generator: a bad request costs a parse, never a decoder forward.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompts: int = 512
    max_prompt_chars: int = 8192
    max_new_tokens: int = 64
    max_queue: int = 1024  # pending adapter requests before 503


class ApiError(Exception):
    """An HTTP error with a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(stream: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, f"Content-Length {content_length!r} is not a number") from None
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict:
    if not body.strip():
        raise ApiError(400, "empty request body: expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_fields(obj: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; allowed: {list(allowed)}")


def _int(obj: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(422, f"'{key}' must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ApiError(422, f"'{key}' must be in [{lo}, {hi}], got {v}")
    return v


def _prompt(p, where: str, limits: Limits) -> str:
    if not isinstance(p, str):
        raise ApiError(422, f"{where} must be a string, got {type(p).__name__}")
    if not p.strip():
        raise ApiError(422, f"{where} is empty")
    if len(p) > limits.max_prompt_chars:
        raise ApiError(422, f"{where} has {len(p)} characters; the limit is {limits.max_prompt_chars}")
    return p


@dataclasses.dataclass(frozen=True)
class AdapterRequest:
    prompts: list[str]
    seed: int


def adapter_request(obj: dict, limits: Limits) -> AdapterRequest:
    """``{"prompts": [str, ...], "seed": int?}``."""
    _check_fields(obj, ("prompts", "seed"))
    prompts = obj.get("prompts")
    if prompts is None:
        raise ApiError(422, "missing field 'prompts' (a list of strings)")
    if not isinstance(prompts, list):
        raise ApiError(422, f"'prompts' must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ApiError(422, "'prompts' is empty")
    if len(prompts) > limits.max_prompts:
        raise ApiError(422, f"{len(prompts)} prompts; the limit is {limits.max_prompts}")
    prompts = [_prompt(p, f"prompts[{i}]", limits) for i, p in enumerate(prompts)]
    return AdapterRequest(prompts, _int(obj, "seed", 0, 0, 2**31 - 1))


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    adapter_id: str | None
    prompt: str
    max_new_tokens: int


def completion_request(obj: dict, limits: Limits) -> CompletionRequest:
    """``{"adapter_id": str | null, "prompt": str, "max_new_tokens": int?}``."""
    _check_fields(obj, ("adapter_id", "prompt", "max_new_tokens"))
    aid = obj.get("adapter_id")
    if aid is not None and not isinstance(aid, str):
        raise ApiError(422, f"'adapter_id' must be a string or null, got {type(aid).__name__}")
    if "prompt" not in obj:
        raise ApiError(422, "missing field 'prompt' (a string)")
    prompt = _prompt(obj["prompt"], "'prompt'", limits)
    return CompletionRequest(aid, prompt, _int(obj, "max_new_tokens", 16, 1, limits.max_new_tokens))
