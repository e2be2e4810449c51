"""Reading a request body as a bounded JSON object, with an OpenAI-shaped error for each way
it can be wrong: content type (415), size (413), syntax and top-level type (400)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from prefixkv.server.errors import APIError

_JSON_TYPES = ("application/json",)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a dict. The size is checked while reading, so an oversized or lying
    ``Content-Length`` never makes the server buffer more than ``max_bytes`` + one chunk."""
    _check_content_type(request)
    raw = await _read_bounded(request, max_bytes)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise APIError.invalid("the body is nested too deeply", None, "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of over 4,300 digits
        raise APIError.invalid(f"the body is not valid JSON: {exc}", None, "invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError.invalid(
            f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_json"
        )
    return body


def _check_content_type(request: Request) -> None:
    header = request.headers.get("content-type", "")
    media = header.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise APIError(
            415,
            f"Content-Type must be application/json, got {header or 'none'!r}",
            code="unsupported_media_type",
        )


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413, f"the request body is larger than {max_bytes} bytes", code="request_too_large"
    )


async def _read_bounded(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise APIError.invalid("the client disconnected while sending the body", None) from exc
    return b"".join(chunks)
