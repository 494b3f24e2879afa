"""Bundle uploads: a bounded number at once, each spooled to a temporary file.

The body of `PUT /v1/functions/{name}` (a zip, or multipart with parts `code` and
`config`) is never held whole in memory: a zip body is spooled as it arrives and
a multipart `code` part is spooled by the form parser; both are inspected and
stored to GridFS from the file. The size limit is enforced while the body streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from gateway.body import limited_request, spool_limited
from runtime.errors import BadRequest, FnhostError, InvalidConfig, Unavailable
from runtime.settings import Settings

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
# A multipart body may carry the config part and the part headers besides the zip.
MULTIPART_SLACK = 1 << 20
CONFIG_MAX_BYTES = 1 << 20
# Retry-After of an upload that found no free slot.
BUSY_RETRY_AFTER_S = 5


class UnsupportedMediaType(FnhostError):
    status = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class Upload:
    code: IO[bytes]  # the zip, seekable, in memory when small, else on disk
    override: dict[str, Any] | None  # the multipart `config` part


def json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidConfig(f"{what} is not valid JSON", field=what) from None
    if not isinstance(value, dict):
        raise InvalidConfig(f"{what} must be a JSON object", field=what)
    return value


class UploadSlots:
    """At most `concurrent` uploads read at once, and one tenant's at most half of them
    (rounded up), so a tenant that trickles its uploads cannot hold every slot; a caller
    waits up to `wait_s` in all for a slot, then is refused with 503 and Retry-After."""

    def __init__(self, concurrent: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._per_tenant = (concurrent + 1) // 2
        self._tenants: dict[str, tuple[asyncio.Semaphore, int]] = {}  # semaphore, users
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        share, users = self._tenants.get(tenant) or (asyncio.Semaphore(self._per_tenant), 0)
        self._tenants[tenant] = (share, users + 1)
        try:
            async with contextlib.AsyncExitStack() as held:
                try:
                    async with asyncio.timeout(self._wait_s):
                        await share.acquire()
                        held.callback(share.release)
                        await self._slots.acquire()
                        held.callback(self._slots.release)
                except TimeoutError:
                    raise Unavailable(
                        "this gateway is busy with other bundle uploads; try again",
                        retry_after_s=BUSY_RETRY_AFTER_S,
                    ) from None
                yield
        finally:
            share, users = self._tenants[tenant]
            if users == 1:
                del self._tenants[tenant]
            else:
                self._tenants[tenant] = (share, users - 1)


@contextlib.asynccontextmanager
async def received_upload(request: Request, settings: Settings) -> AsyncIterator[Upload]:
    """The upload of a zip or multipart body, its files deleted on exit."""
    limit = settings.bundle_max_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ZIP_TYPES:
        spool = await spool_limited(request, limit, "bundle")
        with spool:
            yield Upload(spool, None)
        return
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "send the bundle as application/zip, or multipart/form-data with parts "
            "'code' (zip) and 'config' (JSON)"
        )
    # The parser spools each file part to a temporary file past 1 MB.
    limited = limited_request(request, limit + MULTIPART_SLACK, "upload")
    async with limited.form(max_files=2, max_fields=4, max_part_size=CONFIG_MAX_BYTES) as form:
        code = form.get("code")
        if code is None:
            raise BadRequest("multipart upload needs a 'code' part with the zip", field="code")
        config = form.get("config")
        override = None
        if config is not None:
            raw = await config.read() if isinstance(config, UploadFile) else config
            override = json_object(raw, "config")
        if isinstance(code, UploadFile):
            yield Upload(code.file, override)
        else:
            # A plain field (not a file), so at most CONFIG_MAX_BYTES.
            yield Upload(io.BytesIO(code.encode()), override)
