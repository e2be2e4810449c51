"""OpenAI-shaped errors: one exception type, and handlers so that no other shape escapes.

Every error response is ``{"error": {"message", "type", "param", "code"}}`` whatever raised
it: our own validation, the engine's InvalidRequestError, routing (404/405), FastAPI's
request validation (which would otherwise answer 422 in its own shape) or a bug (500).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefixkv.engine.request import InvalidRequestError
from prefixkv.server.throttle import Throttle, report_failure

log = logging.getLogger("prefixkv.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    """An HTTP error to report to the client in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @classmethod
    def invalid(cls, message: str, param: str | None, code: str | None = None) -> APIError:
        return cls(400, message, param=param, code=code)

    @classmethod
    def from_engine(cls, exc: InvalidRequestError) -> APIError:
        return cls(400, str(exc), param=exc.param, code=exc.code)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception FastAPI can surface to an OpenAI-shaped JSON response."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(InvalidRequestError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


# One line per kind of refusal or failure per interval: no client can flood the log.
_THROTTLE = Throttle()


def _log_refusal(request: Request, error: APIError) -> None:
    show, left_out, _ = _THROTTLE((error.status, error.code))
    if show:
        more = f" ({left_out} more like it since)" if left_out else ""
        log.info(
            "%d %s on %s %s: %s%s",
            error.status,
            error.code or error.param or "refused",
            request.method,
            request.url.path[:100],
            error.message[:200],
            more,
        )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    _log_refusal(request, exc)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return exc.response(headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequestError)
    error = APIError.from_engine(exc)
    _log_refusal(request, error)
    return error.response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = f"{request.method} {request.url.path}: {exc.detail}"
    error = APIError(exc.status_code, message, code=codes.get(exc.status_code))
    return error.response(dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return APIError.invalid(str(first.get("msg", "invalid request")), param).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    report_failure(log, f"internal error on {request.method} {request.url.path[:100]}", exc)
    return APIError(500, "internal server error", code="internal_error").response()
