"""Reading request bodies under a size limit, before anything is stored."""

from __future__ import annotations

from starlette.requests import Request

from runtime.errors import BadRequest, PayloadTooLarge


def _mb(limit: int) -> str:
    return f"{limit / (1 << 20):g} MB"


async def read_limited(request: Request, limit: int, what: str = "payload") -> bytes:
    """The whole body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"{what} of {int(declared)} bytes is over the {_mb(limit)} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the {_mb(limit)} limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # later parsers (multipart) read the cached body
    return body
