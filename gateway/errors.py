"""The one place exceptions become HTTP responses."""

from __future__ import annotations

import logging

from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import FnhostError, QuotaExceeded, Throttled, Unavailable

log = logging.getLogger(__name__)
# Retry-After of a 503 for a database that cannot be reached (down, restarting).
DATABASE_RETRY_AFTER_S = 2
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def error_response(exc: FnhostError) -> Response:
    headers = {}
    if isinstance(exc, Throttled | Unavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, QuotaExceeded) and exc.retry_after_s is not None:
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


async def on_database_unreachable(_request: Request, exc: Exception) -> Response:
    """A dependency outage is a 503 the client may retry, not an internal error."""
    assert isinstance(exc, ConnectionFailure)
    log.warning("database unreachable: %s", exc)
    return error_response(
        Unavailable(f"the database is unreachable: {exc!s:.200}", retry_after_s=DATABASE_RETRY_AFTER_S)
    )


async def on_unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(FnhostError("internal error"))


EXCEPTION_HANDLERS = {
    FnhostError: on_fnhost_error,
    HTTPException: on_http_exception,
    ConnectionFailure: on_database_unreachable,
    Exception: on_unexpected,
}
