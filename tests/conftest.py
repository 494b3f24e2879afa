"""Shared fixtures: one MongoDB-wire server and one platform for the session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import MongoServer, Platform, Webhook, own_platform


@pytest.fixture(scope="session")
def mongo() -> Iterator[MongoServer]:
    server = MongoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    """The shared platform: gateway + scheduler with 2 stem cells and a long keep-alive,
    on a RabbitMQ vhost of its own (no other test run can consume its queues)."""
    with own_platform(mongo.url) as p:
        yield p


@pytest.fixture
def tenant(platform: Platform) -> Iterator[httpx.Client]:
    client = platform.new_tenant()
    yield client
    client.close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A local HTTP server that records the POSTs a webhook destination makes."""
    with Webhook() as hook:
        yield hook


@pytest.fixture
def second_gateway(platform: Platform) -> Iterator[str]:
    """Another gateway process of the shared platform, on a port of its own: its URL."""
    name = "gateway-2"
    try:
        yield platform.start_gateway(name)
    finally:
        platform.stop_role(name)
