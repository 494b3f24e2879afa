"""Shared fixtures: one MongoDB-wire server and one platform for the session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import MongoServer, Platform


@pytest.fixture(scope="session")
def mongo() -> Iterator[MongoServer]:
    server = MongoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    """The shared platform: gateway + scheduler with 2 stem cells and a long keep-alive."""
    p = Platform(mongo.url)
    try:
        p.start()
    except Exception:
        print(p.tail())
        p.stop()
        raise
    yield p
    p.stop()


@pytest.fixture
def tenant(platform: Platform) -> Iterator[httpx.Client]:
    client = platform.new_tenant()
    yield client
    client.close()
