"""Errors of the fnhost API, as exceptions named after its error codes.

Every API error is `{"error": {"code": ..., "message": ..., "field": ...}}` with an
HTTP status; `raise_for(response)` turns it into the exception of its code, so a
caller catches `NotFound` or `Throttled` rather than comparing strings.
"""

from __future__ import annotations

from typing import Any


class FnhostError(Exception):
    """An error answered by the API (or, for `code` "transport", no answer at all)."""

    status: int = 0
    code: str = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 field: str | None = None, retry_after_s: float | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.field = field
        self.retry_after_s = retry_after_s
        self.body = body

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(FnhostError):
    status, code = 400, "bad_request"


class InvalidBundle(BadRequest):
    code = "invalid_bundle"


class InvalidConfig(BadRequest):
    code = "invalid_config"


class Unauthorized(FnhostError):
    status, code = 401, "unauthorized"


class Forbidden(FnhostError):
    status, code = 403, "forbidden"


class NotFound(FnhostError):
    status, code = 404, "not_found"


class Conflict(FnhostError):
    status, code = 409, "conflict"


class PayloadTooLarge(FnhostError):
    status, code = 413, "payload_too_large"


class Throttled(FnhostError):
    status, code = 429, "throttled"


class QuotaExceeded(FnhostError):
    status, code = 429, "QuotaExceeded"


class Unavailable(FnhostError):
    status, code = 503, "unavailable"


class ServerError(FnhostError):
    status, code = 500, "internal_error"


class FunctionError(FnhostError):
    """The function raised or timed out: its `errorType`, `errorMessage` and `stackTrace`.

    From `invoke` (a sync call answered with `X-Function-Error`) or from a task's
    `result()` when the task ended other than `Succeeded` (`task` is its record)."""

    code = "function_error"

    def __init__(self, error: dict[str, Any], *, kind: str = "Unhandled",
                 task: dict[str, Any] | None = None) -> None:
        self.error_type = str(error.get("errorType") or kind)
        self.error_message = str(error.get("errorMessage") or "")
        self.stack_trace = list(error.get("stackTrace") or [])
        self.kind = kind
        self.task = task
        super().__init__(f"{self.error_type}: {self.error_message}", status=200, body=error)


class TaskTimeout(FnhostError, TimeoutError):
    """`result(timeout)` ran out before the task reached a final status."""

    code = "timeout"


BY_CODE: dict[str, type[FnhostError]] = {
    cls.code: cls
    for cls in (BadRequest, InvalidBundle, InvalidConfig, Unauthorized, Forbidden, NotFound,
                Conflict, PayloadTooLarge, Throttled, QuotaExceeded, Unavailable, ServerError)
}
BY_STATUS: dict[int, type[FnhostError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 429: Throttled, 503: Unavailable,
}


def from_answer(status: int, body: Any, retry_after: str | None = None) -> FnhostError:
    """The exception for an error answer: `body` is the decoded JSON (or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {status}"}
    code = str(error.get("code") or "")
    cls = BY_CODE.get(code) or BY_STATUS.get(status) or (ServerError if status >= 500 else FnhostError)
    wait = error.get("retry_after_s")
    if wait is None and retry_after:
        try:
            wait = float(retry_after)
        except ValueError:
            wait = None
    return cls(str(error.get("message") or f"HTTP {status}"), status=status, code=code or None,
               field=error.get("field"), retry_after_s=wait, body=body)
