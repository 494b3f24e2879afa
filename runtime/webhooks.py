"""The HTTP client webhook destinations are POSTed with: one pool of keep-alive
connections per process, shared by every webhook.

runtime/destinations.py builds the record, bounds each attempt in time and
decides what to retry; this module only sends a POST and reads its answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import aiohttp

from runtime.settings import Settings

# Reading a webhook's answer to its end lets the connection go back to the pool;
# past this much the answer is dropped with its connection.
WEBHOOK_DRAIN_BYTES = 64 * 1024
# An idle pooled webhook connection is closed after this long.
WEBHOOK_KEEPALIVE_S = 5.0


class WebhookError(Exception):
    """A webhook POST got no answer: the connection could not be made or broke."""


class WebhookClient(Protocol):
    """The HTTP client webhook records are POSTed with (a seam: the benchmarks put another in)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """POST `body` to `url`; the answer's status code and reason phrase, once its body is
        read (up to WEBHOOK_DRAIN_BYTES). Raises WebhookError when no answer came; the
        caller bounds the whole call in time."""
        ...


class AiohttpWebhooks:
    """Webhook POSTs on one aiohttp session: a keep-alive pool of at most
    FNHOST_WEBHOOK_MAX_CONNECTIONS connections shared by every webhook of the process.

    Chosen by measurement (bench/webhook_client_bench.py): about 0.08 CPU-ms per
    delivery with 32 in flight, where httpx took 2.0 (its connection pool does work
    for every request in flight on each one, and httpcore looks for a module that is
    not installed on every request). No cookies are kept (one tenant's webhook must
    not see a cookie set for another's), no redirect is followed and no proxy is
    taken from the environment.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.webhook_max_connections,
            limit_per_host=0,
            keepalive_timeout=WEBHOOK_KEEPALIVE_S,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The caller bounds each POST as a whole, a slow drip too: no timers of its own.
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
            headers={"User-Agent": "fnhost"},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        session = self._session
        if session is None:
            raise RuntimeError("AiohttpWebhooks.start() first")
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await _drain(response)
                return response.status, response.reason or ""
        except TimeoutError:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise WebhookError(f"ConnectError: {exc}") from None
        except aiohttp.ClientError as exc:
            raise WebhookError(f"{type(exc).__name__}: {exc}") from None


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the answer up to WEBHOOK_DRAIN_BYTES (its content is not used); past that
    the connection is closed rather than read further."""
    read = 0
    content = response.content
    while chunk := await content.readany():
        read += len(chunk)
        if read > WEBHOOK_DRAIN_BYTES:
            response.close()
            return
