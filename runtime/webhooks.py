"""The HTTP client webhook destinations are POSTed with: one pool of keep-alive
connections per process, shared by every webhook.

runtime/destinations.py builds the record, bounds each attempt in time and
decides what to retry; this module only sends a POST and reads its answer, and
connects only where runtime/webhook_policy.py allows.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver

from runtime.settings import Settings
from runtime.webhook_policy import REFUSED, WebhookPolicy

# Reading a webhook's answer to its end lets the connection go back to the pool;
# past this much the answer is dropped with its connection.
WEBHOOK_DRAIN_BYTES = 64 * 1024
# An idle pooled webhook connection is closed after this long.
WEBHOOK_KEEPALIVE_S = 5.0
# Webhook URLs whose verdict (runtime/webhook_policy.py) is remembered per process.
URL_VERDICTS_MAX = 4096

# One address a connection is about to be made to, as getaddrinfo gives it:
# (family, type, proto, canonical name, socket address).
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class WebhookError(Exception):
    """A webhook POST got no answer: the connection could not be made or broke."""


class WebhookRefused(WebhookError):
    """The webhook was not tried: its address is not allowed (FNHOST_WEBHOOK_ALLOWED_NETWORKS),
    or its URL carries credentials or is malformed. The message says no more than that."""


class AddressNotAllowed(OSError):
    """Raised instead of a socket for an address the policy refuses: nothing is sent to it."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def guarded_sockets(policy: WebhookPolicy) -> Callable[[AddrInfo], socket.socket]:
    """A socket factory for aiohttp's connector: it is handed each address a connection
    is about to be made to, after name resolution, whatever the URL's spelling of it,
    every attempt (happy eyeballs, the next address of a name, a new pooled connection),
    and refuses those the policy does not allow before any packet is sent."""

    def new_socket(addr_info: AddrInfo) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if not policy.allows_sockaddr(family, sockaddr):
            raise AddressNotAllowed()
        return socket.socket(family=family, type=type_, proto=proto)

    return new_socket


class WebhookClient(Protocol):
    """The HTTP client webhook records are POSTed with (a seam: the benchmarks put another in)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """POST `body` to `url`; the answer's status code and reason phrase, once its body is
        read (up to WEBHOOK_DRAIN_BYTES). Raises WebhookRefused when the URL or its address
        is not allowed, WebhookError when no answer came; the caller bounds the whole
        call in time."""
        ...


class AiohttpWebhooks:
    """Webhook POSTs on one aiohttp session: a keep-alive pool of at most
    FNHOST_WEBHOOK_MAX_CONNECTIONS connections shared by every webhook of the process.

    Chosen by measurement (bench/webhook_client_bench.py): about 0.08 CPU-ms per
    delivery with 32 in flight, where httpx took 2.0 (its connection pool does work
    for every request in flight on each one, and httpcore looks for a module that is
    not installed on every request). No cookies are kept (one tenant's webhook must
    not see a cookie set for another's), no redirect is followed (it could lead to an
    address the policy refuses), no proxy is taken from the environment, and no
    connection is made to an address the policy refuses (`guarded_sockets`).

    `resolver` is aiohttp's name resolver (default: the system's, in threads); tests put
    one in that answers without DNS.
    """

    def __init__(self, settings: Settings, resolver: AbstractResolver | None = None) -> None:
        self._settings = settings
        self._policy = WebhookPolicy(settings.webhook_networks)
        # The same few URLs come again and again: each is judged once.
        self._url_problem = functools.lru_cache(maxsize=URL_VERDICTS_MAX)(self._policy.url_problem)
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.webhook_max_connections,
            limit_per_host=0,
            keepalive_timeout=WEBHOOK_KEEPALIVE_S,
            resolver=self._resolver,
            socket_factory=guarded_sockets(self._policy),
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
        # Refused when the destination is set (400); one stored before that, or before
        # the operator narrowed FNHOST_WEBHOOK_ALLOWED_NETWORKS, is never sent.
        problem = self._url_problem(url)
        if problem is not None:
            raise WebhookRefused(problem.recorded)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await _drain(response)
                return response.status, response.reason or ""
        except TimeoutError:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressNotAllowed):
                raise WebhookRefused(REFUSED) from None
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
