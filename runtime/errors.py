"""One exception tree; the gateway maps it to HTTP statuses in one place."""

from __future__ import annotations

import orjson


class FnhostError(Exception):
    """Base of every error fnhost raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}

    def to_json_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


class BadRequest(FnhostError):
    status = 400
    code = "bad_request"


class InvalidBundle(BadRequest):
    code = "invalid_bundle"


class InvalidConfig(BadRequest):
    code = "invalid_config"


class Unauthorized(FnhostError):
    status = 401
    code = "unauthorized"


class Forbidden(FnhostError):
    status = 403
    code = "forbidden"


class NotFound(FnhostError):
    status = 404
    code = "not_found"


class Conflict(FnhostError):
    status = 409
    code = "conflict"


class PayloadTooLarge(FnhostError):
    status = 413
    code = "payload_too_large"


class Throttled(FnhostError):
    status = 429
    code = "throttled"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceeded(FnhostError):
    """Over one of the tenant's quotas (runtime/quotas.py), named in the body's `quota`.
    413 when the request alone would take the tenant past it (a bundle's bytes), 429
    when a count is used up; with Retry-After when it frees itself in time (tasks
    finish, records expire). Its code is the contract's spelling, `QuotaExceeded`."""

    status = 429
    code = "QuotaExceeded"

    def __init__(
        self, message: str, *, quota: str | None = None, status: int = 429,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.status = status
        self.retry_after_s = retry_after_s if status == 429 else None

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        error = body["error"]
        if self.quota is not None and isinstance(error, dict):
            error["quota"] = self.quota
        return body


class Unavailable(FnhostError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotImplementedYet(FnhostError):
    status = 501
    code = "not_implemented"
