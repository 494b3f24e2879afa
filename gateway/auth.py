"""Authentication as pure ASGI middleware: sets scope["tenant"] or answers 401.

`/v1/...` takes a tenant's API key (the admin key on admin routes); `/metrics`,
which names tenants and functions, takes the admin key or FNHOST_METRICS_TOKEN
(what a Prometheus scraper sends as `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import asyncio
import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth_failures import FailedAuth
from gateway.errors import error_response
from gateway.metrics import AUTH_HELD, AUTH_REFUSED
from gateway.state import Services
from runtime.errors import FnhostError, Forbidden, Unauthorized

ADMIN_PATHS = ("/v1/tenants",)
METRICS_PATH = "/metrics"
# Under the admin paths, what a tenant may do for itself with its own key: its keys.
OWN_KEYS = re.compile(r"^/v1/tenants/(?P<tenant>[^/]+)/keys(?:/[^/]+)?$")


def bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def matches(token: str, secrets: tuple[bytes, ...]) -> bool:
    """Whether `token` is one of `secrets`, in constant time: each is compared in full."""
    given = token.encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret)
    return found


class AuthMiddleware:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        admin = services.settings.admin_key
        self.admin_key = admin.get_secret_value().encode() if admin is not None else None
        token = services.settings.metrics_token
        self.metrics_keys = tuple(
            k for k in (self.admin_key, token.get_secret_value().encode() if token else None) if k
        )
        settings = services.settings
        self.failures = FailedAuth(settings.auth_failures_per_s, settings.auth_hold_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            if scope["type"] == "http" and scope["path"] == METRICS_PATH:
                await self._metrics(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        token = bearer(scope)
        if token is None:
            err = Unauthorized("missing Authorization: Bearer <api key>")
            await error_response(err)(scope, receive, send)
            return
        own = None
        if scope["path"].startswith(ADMIN_PATHS):
            if self.admin_key is not None and hmac.compare_digest(token.encode(), self.admin_key):
                scope["admin"] = True
                await self.app(scope, receive, send)
                return
            own = OWN_KEYS.match(scope["path"])
            if own is None:
                await error_response(Forbidden("this route needs the admin key"))(scope, receive, send)
                return
        tenant = await self.services.tenant_for_key(token)
        if tenant is None:
            AUTH_REFUSED.inc()
            await self._hold(scope)
            await error_response(Unauthorized("unknown API key"))(scope, receive, send)
            return
        if own is not None and own["tenant"] != tenant.id:
            await error_response(Forbidden("a tenant manages its own keys only"))(scope, receive, send)
            return
        scope["tenant"] = tenant
        await self.app(scope, receive, send)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = bearer(scope)
        if token is None:
            err: FnhostError = Unauthorized(
                "missing Authorization: Bearer <admin key or FNHOST_METRICS_TOKEN>"
            )
            await error_response(err)(scope, receive, send)
            return
        if not matches(token, self.metrics_keys):
            err = Forbidden("/metrics needs the admin key or FNHOST_METRICS_TOKEN")
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _hold(self, scope: Scope) -> None:
        """The tarpit of a source that sends made-up keys (gateway/auth_failures.py)."""
        client = scope.get("client")
        hold_s = self.failures.note(str(client[0]) if client else "?")
        if hold_s:
            AUTH_HELD.inc()
            self.failures.held += 1
            try:
                await asyncio.sleep(hold_s)
            finally:
                self.failures.held -= 1
