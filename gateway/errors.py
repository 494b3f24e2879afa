"""The one place exceptions become HTTP responses."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import FnhostError, Throttled, Unavailable

log = logging.getLogger(__name__)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def error_response(exc: FnhostError) -> Response:
    headers = {}
    if isinstance(exc, Throttled | Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    return Response(
        exc.to_json_bytes(), status_code=exc.status, media_type="application/json", headers=headers
    )


async def on_fnhost_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FnhostError)
    return error_response(exc)


async def on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = FnhostError(exc.detail)
    err.status = exc.status_code
    err.code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(err)


async def on_unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(FnhostError("internal error"))


EXCEPTION_HANDLERS = {
    FnhostError: on_fnhost_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
