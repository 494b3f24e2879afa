"""The MongoDB client's options: pooled connections are retired before the embedded
server closes them from its side (it does so after IDLE_TIMEOUT_S of silence)."""

from __future__ import annotations

from pathlib import Path

from runtime import embedded_mongo
from runtime.settings import Settings
from runtime.store.mongo import Mongo


async def test_pooled_connections_are_retired_before_the_server_closes_them() -> None:
    mongo = Mongo(Settings())
    try:
        idle = mongo.client.options.pool_options.max_idle_time_seconds
        assert idle is not None and idle < embedded_mongo.IDLE_TIMEOUT_S
    finally:
        await mongo.close()


async def test_the_idle_limit_is_a_setting() -> None:
    mongo = Mongo(Settings(mongo_max_idle_s=2.5))
    try:
        assert mongo.client.options.pool_options.max_idle_time_seconds == 2.5
    finally:
        await mongo.close()


def test_the_embedded_server_is_started_with_its_idle_limit() -> None:
    command = embedded_mongo.command(27017, Path("/tmp/x"), idle_timeout_s=7.0)
    assert command[command.index("--idle-timeout-s") + 1] == "7.0"
