"""The warm pool in-process against the real Docker engine (no gateway, RabbitMQ or MongoDB).

Each pool gets its own scheduler id and data dir; every container it starts is
labelled with that id, and the fixtures force-remove whatever is left under
the label, even when a test fails.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from runtime import constants as c
from runtime.errors import Throttled, Unavailable
from runtime.pool import select
from runtime.pool.container import Container, FunctionKey, StartKind, State
from runtime.pool.engine import DockerEngine
from runtime.pool.pool import RESERVE_MIN_IDLE_S, InitError, Lease, Pool, Spec, slow_start
from runtime.settings import load_settings
from tests.harness import FUNCTIONS

PoolFactory = Callable[..., Awaitable[Pool]]


@pytest.fixture(scope="module")
def docker_client() -> docker.DockerClient:
    client = docker.from_env()
    client.ping()
    return client


def owned(client: docker.DockerClient, scheduler_id: str) -> list[str]:
    """Ids of every container (running or not) labelled with this scheduler id."""
    found = client.api.containers(all=True, filters={"label": [f"{c.LABEL_SCHEDULER}={scheduler_id}"]})
    return [str(item["Id"]) for item in found]


def exists(client: docker.DockerClient, docker_id: str) -> bool:
    try:
        client.api.inspect_container(docker_id)
    except docker.errors.NotFound:
        return False
    return True


def gone(client: docker.DockerClient, docker_id: str) -> bool:
    return not exists(client, docker_id)


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `check` (run in a thread, so Docker calls do not block the pool) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(check):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """functions/hello unpacked in a local folder, as the bundle cache would leave it."""
    dest = tmp_path_factory.mktemp("bundles") / "hello"
    shutil.copytree(FUNCTIONS / "hello", dest)
    return dest


@pytest.fixture
async def make_pool(docker_client: docker.DockerClient) -> AsyncIterator[PoolFactory]:
    """Starts pools with the given settings; closes them and clears their containers after.

    The data dir is a short path of its own (cell sockets must fit a unix socket path).
    """
    started: list[tuple[Pool, DockerEngine, str]] = []
    data_dirs: list[str] = []

    async def make(**overrides: Any) -> Pool:
        scheduler_id = "pooltest-" + secrets.token_hex(4)
        data_dir = Path(tempfile.mkdtemp(prefix="fnpool-"))
        data_dirs.append(str(data_dir))
        overrides.setdefault("stem_cells_min", 1)  # a light pool, as the test platform's
        settings = load_settings(data_dir=data_dir, scheduler_id=scheduler_id, **overrides)
        engine = DockerEngine(settings)
        pool = Pool(settings, engine)
        started.append((pool, engine, scheduler_id))
        await pool.start()
        return pool

    yield make
    for pool, engine, scheduler_id in started:
        try:
            await asyncio.wait_for(pool.close(), 60)
        finally:
            engine.close()
            for docker_id in await asyncio.to_thread(owned, docker_client, scheduler_id):
                await asyncio.to_thread(docker_client.api.remove_container, docker_id, force=True)
    for data_dir in data_dirs:
        shutil.rmtree(data_dir, ignore_errors=True)


def spec_for(bundle: Path, tenant: str = "tenant-a", function: str = "hello", **kwargs: Any) -> Spec:
    async def load() -> Path:
        return bundle

    fields: dict[str, Any] = {
        "handler": "main.handler",
        "memory_mb": 128,
        "max_concurrency": 10,
        "timeout_s": 10,
    }
    fields.update(kwargs)
    version = fields.pop("version", "v1")
    return Spec(key=FunctionKey(tenant, function, version), bundle=load, **fields)


async def call(lease: Lease, event: bytes = b'{"name": "pool"}') -> dict[str, Any]:
    """One invocation through the leased container's agent; the decoded answer header."""
    agent = lease.container.agent
    assert agent is not None
    header, body = await agent.request(
        {
            "op": "invoke",
            "request_id": secrets.token_hex(8),
            "task_id": None,
            "deadline_ms": int(time.time() * 1000 + 10_000),
            "attempt": 1,
            "content_type": "application/json",
        },
        event,
    )
    assert header.get("ok"), header
    header["result"] = body[: int(header["result_len"])]
    return header


def stems(pool: Pool) -> list[Container]:
    return [container for container in pool.containers if container.state is State.STEM]


async def test_stem_cells_specialise_refill_and_reuse(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    pool = await make_pool(stem_cells=2, keep_alive_s=300)
    await pool.wait_for_stem_cells(2, timeout=60)
    stem_ids = {s.docker_id for s in stems(pool)}
    assert len(stem_ids) == 2 and None not in stem_ids

    spec = spec_for(bundle_dir)
    lease = await pool.acquire(spec, wait_s=10)
    assert lease.start is StartKind.STEM
    container = lease.container
    assert container.docker_id in stem_ids
    assert container.state is State.BUSY and container.key == spec.key
    answer = await call(lease)
    assert answer["result"] == b'{"message":"hello, pool"}'

    # The stem pool refills in the background; the specialised one is not counted.
    await pool.wait_for_stem_cells(2, timeout=60)
    assert container not in stems(pool)

    pool.release(container)
    assert pool.stats()["containers"].get("ready") == 1
    again = await pool.acquire(spec, wait_s=10)
    assert again.start is StartKind.WARM
    assert again.container is container
    assert (await call(again))["result"] == b'{"message":"hello, pool"}'
    pool.release(container)

    # Same code and name, other tenant / other function / other version: never that container.
    for other in (
        spec_for(bundle_dir, tenant="tenant-b"),
        spec_for(bundle_dir, function="hello-too"),
        spec_for(bundle_dir, version="v2"),
    ):
        lease = await pool.acquire(other, wait_s=10)
        assert lease.start is not StartKind.WARM
        assert lease.container is not container
        assert lease.container.docker_id != container.docker_id
        assert lease.container.key == other.key
        pool.release(lease.container)
    # ... and it is still there, READY for its own function.
    assert select.warm(pool.containers, spec.key) is container
    assert pool.counters["warm_starts"] == 1


async def test_keep_alive_expiry_removes_the_container(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    pool = await make_pool(stem_cells=1, keep_alive_s=1)
    await pool.wait_for_stem_cells(1, timeout=60)
    lease = await pool.acquire(spec_for(bundle_dir), wait_s=10)
    container = lease.container
    docker_id = container.docker_id
    assert docker_id is not None
    await call(lease)
    pool.release(container)
    released = time.monotonic()

    # Until it is gone it is READY or REMOVING, never a stem cell again.
    while container in pool.containers or await asyncio.to_thread(exists, docker_client, docker_id):
        assert container.state in (State.READY, State.REMOVING), container.state
        assert docker_id not in {s.docker_id for s in stems(pool)}
        assert time.monotonic() - released < 3.0, "the idle container outlived its keep-alive"
        await asyncio.sleep(0.05)
    assert container.state is State.REMOVING
    assert time.monotonic() - released >= 1.0
    assert pool.counters["expired"] == 1
    # Stem cells never expire; the pool still holds one, and it is not the expired container.
    await asyncio.sleep(1.5)
    await pool.wait_for_stem_cells(1, timeout=60)
    assert all(s.docker_id != docker_id and s.key is None for s in stems(pool))
    assert pool.counters["expired"] == 1


async def test_cold_start_and_lru_eviction_at_max_containers(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    pool = await make_pool(stem_cells=0, max_containers=2, keep_alive_s=300)
    a, b, third = (spec_for(bundle_dir, function=name) for name in ("fa", "fb", "fc"))

    lease_a = await pool.acquire(a, wait_s=10)
    assert lease_a.start is StartKind.COLD
    assert (await call(lease_a))["result"] == b'{"message":"hello, pool"}'
    lease_b = await pool.acquire(b, wait_s=10)
    assert lease_b.start is StartKind.COLD
    # Both slots are busy: a third function finds no room and gives up after wait_s.
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await pool.acquire(third, wait_s=0.5)
    assert time.monotonic() - started >= 0.45

    pool.release(lease_b.container)
    pool.release(lease_a.container)  # a is now the most recently used
    container_a, container_b = lease_a.container, lease_b.container
    lease_c = await pool.acquire(third, wait_s=10)
    assert lease_c.start is StartKind.COLD
    assert pool.counters["evictions"] == 1
    assert container_b.state is State.REMOVING
    assert container_a.state is State.READY
    b_id = container_b.docker_id
    assert b_id is not None
    await eventually(lambda: not exists(docker_client, b_id), 10, "evicted b removed")
    assert (await call(lease_c))["result"] == b'{"message":"hello, pool"}'
    pool.release(lease_c.container)
    warm_a = await pool.acquire(a, wait_s=10)
    assert warm_a.start is StartKind.WARM and warm_a.container is container_a
    pool.release(container_a)
    assert len(owned(docker_client, pool._settings.scheduler_id)) <= 2


async def test_max_concurrency_queues_then_throttles(make_pool: PoolFactory, bundle_dir: Path) -> None:
    pool = await make_pool(stem_cells=1, keep_alive_s=300)
    await pool.wait_for_stem_cells(1, timeout=60)
    spec = spec_for(bundle_dir, max_concurrency=1)
    first = await pool.acquire(spec, wait_s=10)

    started = time.monotonic()
    with pytest.raises(Throttled):
        await pool.acquire(spec, wait_s=1.0)
    waited = time.monotonic() - started
    assert 0.95 <= waited < 5, waited
    assert sum(1 for x in pool.containers if x.key == spec.key) == 1

    # A waiter gets the container as soon as the holder releases it.
    waiter = asyncio.create_task(pool.acquire(spec, wait_s=10))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    pool.release(first.container)
    second = await asyncio.wait_for(waiter, 5)
    assert second.start is StartKind.WARM and second.container is first.container
    pool.release(second.container)


async def test_import_error_discards_the_container(
    make_pool: PoolFactory, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "main.py").write_text(
        "raise RuntimeError('cannot start')\n\ndef handler(e, c):\n    return 1\n"
    )
    pool = await make_pool(stem_cells=1, keep_alive_s=300)
    await pool.wait_for_stem_cells(1, timeout=60)
    docker_id = stems(pool)[0].docker_id
    assert docker_id is not None
    with pytest.raises(InitError) as info:
        await pool.acquire(spec_for(broken, function="broken"), wait_s=10)
    assert info.value.error["errorType"] == "Runtime.ImportModuleError"
    assert "cannot start" in info.value.error["errorMessage"]
    assert info.value.start is StartKind.STEM
    await eventually(lambda: not exists(docker_client, docker_id), 10, "failed container removed")
    assert all(x.docker_id != docker_id for x in pool.containers)


async def test_close_removes_every_container(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    pool = await make_pool(stem_cells=2, keep_alive_s=300)
    scheduler_id = pool._settings.scheduler_id
    await pool.wait_for_stem_cells(2, timeout=60)
    busy = await pool.acquire(spec_for(bundle_dir), wait_s=10)
    idle = await pool.acquire(spec_for(bundle_dir, function="other"), wait_s=10)
    pool.release(idle.container)
    assert busy.container.state is State.BUSY
    await pool.wait_for_stem_cells(2, timeout=60)
    assert len(await asyncio.to_thread(owned, docker_client, scheduler_id)) == 4
    await pool.close()
    assert await asyncio.to_thread(owned, docker_client, scheduler_id) == []


@pytest.mark.parametrize("delay_s", [0.0, 0.15, 0.3, 0.6])
async def test_close_while_stem_cells_are_starting(
    make_pool: PoolFactory, docker_client: docker.DockerClient, delay_s: float
) -> None:
    """Closing while stem cells are being created, started or greeted leaves nothing behind."""
    pool = await make_pool(stem_cells=3, keep_alive_s=300)
    scheduler_id = pool._settings.scheduler_id
    await asyncio.sleep(delay_s)
    await pool.close()
    assert all(x.state is State.REMOVING for x in pool.containers)
    # The engine's calls run in threads: give a create still in flight a moment, then look.
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(owned, docker_client, scheduler_id) == []
    with pytest.raises(Unavailable):
        await pool.acquire(spec_for(FUNCTIONS / "hello"), wait_s=1)


async def test_socket_path_too_long_fails_at_start(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / ("d" * 80), scheduler_id="pooltest-" + "x" * 40)
    engine = DockerEngine(settings)
    try:
        with pytest.raises(RuntimeError, match="FNHOST_DATA_DIR"):
            await Pool(settings, engine).start()
    finally:
        engine.close()


async def test_dead_stem_cells_are_skipped(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    """Stem cells that died while idle are discarded on use; the acquire still succeeds."""
    pool = await make_pool(stem_cells=2, keep_alive_s=300)
    await pool.wait_for_stem_cells(2, timeout=60)
    dead = [s.docker_id for s in stems(pool)]
    for docker_id in dead:
        await asyncio.to_thread(docker_client.api.kill, docker_id)
    lease = await pool.acquire(spec_for(bundle_dir), wait_s=10)
    assert lease.container.docker_id not in dead
    assert (await call(lease))["result"] == b'{"message":"hello, pool"}'
    pool.release(lease.container)
    for docker_id in dead:
        assert docker_id is not None
        await eventually(partial(gone, docker_client, docker_id), 10, "dead stem removed")


async def test_an_unreachable_docker_engine_is_unavailable(
    make_pool: PoolFactory, bundle_dir: Path, tmp_path: Path
) -> None:
    """Not the function's fault: Unavailable (an async task waits and tries again),
    never the Docker SDK's own exception (which crash-looped the message), and no
    container is left half made."""
    pool = await make_pool(stem_cells=0)
    if pool._engine._client is not None:
        pool._engine._client.close()
    pool._engine._client = docker.DockerClient(
        base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41", timeout=5
    )
    with pytest.raises(Unavailable, match="Docker engine"):
        await pool.acquire(spec_for(bundle_dir), wait_s=2)
    await eventually(lambda: not pool.containers, 10, "the failed container dropped")
    # The Docker SDK's unix connection leaves its socket to the garbage collector
    # when connect() fails: collect it here, its ResourceWarning is not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def memory_limit_mb(client: docker.DockerClient, docker_id: str) -> int:
    """The memory limit the engine enforces on a container, in MB."""
    return int(client.api.inspect_container(docker_id)["HostConfig"]["Memory"]) >> 20


async def test_memory_budget_evicts_idle_containers_of_other_functions_lru_first(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    """Far below FNHOST_MAX_CONTAINERS, the memory budget is what runs out: the least
    recently used idle containers of other functions go, so a new function starts at
    once (wait_s is too short to wait for anything) instead of waiting."""
    pool = await make_pool(stem_cells=0, host_memory_mb=512, keep_alive_s=300)
    assert pool.memory_budget_mb == 512
    fa, fb, fc = (spec_for(bundle_dir, function=name) for name in ("fa", "fb", "fc"))  # 128 MB each
    leases = [await pool.acquire(spec, wait_s=10) for spec in (fa, fb, fc)]
    for lease in leases:  # released in this order: fa is the least recently used
        pool.release(lease.container)
        await asyncio.sleep(0.01)
    container_a, container_b, container_c = (lease.container for lease in leases)

    big = spec_for(bundle_dir, function="fd", memory_mb=256)
    lease_d = await pool.acquire(big, wait_s=0.2)  # 384 + 256 > 512: fa goes
    assert lease_d.start is StartKind.COLD
    assert container_a.state is State.REMOVING
    assert container_b.state is State.READY and container_c.state is State.READY
    assert pool.counters["evictions_memory"] == 1 and pool.counters["evictions"] == 1
    assert pool.stats()["memory_mb"] == {"budget": 512, "live": 512}
    assert lease_d.container.docker_id is not None
    assert await asyncio.to_thread(memory_limit_mb, docker_client, lease_d.container.docker_id) == 256
    assert (await call(lease_d))["result"] == b'{"message":"hello, pool"}'

    # Another 256 MB function while fd is busy: both idle ones go.
    lease_e = await pool.acquire(spec_for(bundle_dir, function="fe", memory_mb=256), wait_s=0.2)
    assert container_b.state is State.REMOVING and container_c.state is State.REMOVING
    assert pool.counters["evictions_memory"] == 3
    assert pool.stats()["memory_mb"]["live"] == 512

    # Now everything is busy: a third has to wait for room, and gets it when one is released.
    third = asyncio.create_task(pool.acquire(spec_for(bundle_dir, function="ff"), wait_s=10))
    await asyncio.sleep(0.3)
    assert not third.done()
    pool.release(lease_e.container)
    lease_f = await asyncio.wait_for(third, 10)
    assert lease_f.start is StartKind.COLD and lease_e.container.state is State.REMOVING
    assert pool.counters["evictions_memory"] == 4
    assert select.memory_in_use(pool.containers) <= 512
    pool.release(lease_f.container)
    pool.release(lease_d.container)

    # A function bigger than the whole budget is told so.
    with pytest.raises(Unavailable, match="memory budget"):
        await pool.acquire(spec_for(bundle_dir, function="huge", memory_mb=1024), wait_s=0.2)
    for docker_id in (container_a.docker_id, container_b.docker_id, container_c.docker_id):
        assert docker_id is not None
        await eventually(partial(gone, docker_client, docker_id), 10, "evicted container removed")


async def test_stem_cells_of_a_claimed_memory_size_spare_the_next_function_a_resize(
    make_pool: PoolFactory, bundle_dir: Path, docker_client: docker.DockerClient
) -> None:
    pool = await make_pool(stem_cells=2, stem_memory_mb=128, keep_alive_s=300)
    await pool.wait_for_stem_cells(2, timeout=60)
    assert {s.memory_mb for s in stems(pool)} == {128}

    first = await pool.acquire(spec_for(bundle_dir, function="big-1", memory_mb=256), wait_s=10)
    assert first.start is StartKind.STEM
    assert first.engine_ms > 0  # a 128 MB cell resized to 256 MB
    assert pool.stats()["stem_cells"]["sizes"] == {"256": 2}
    # The refill starts a 256 MB cell in place of the one claimed.
    await eventually(lambda: any(s.memory_mb == 256 for s in stems(pool)), 30, "a 256 MB stem cell")
    matching = next(s for s in stems(pool) if s.memory_mb == 256)
    assert matching.docker_id is not None
    assert await asyncio.to_thread(memory_limit_mb, docker_client, matching.docker_id) == 256

    second = await pool.acquire(spec_for(bundle_dir, function="big-2", memory_mb=256), wait_s=10)
    assert second.start is StartKind.STEM
    assert second.container is matching
    assert second.engine_ms == 0  # no resize
    assert (await call(second))["result"] == b'{"message":"hello, pool"}'
    print(f"specialisation: {first.init_ms:.1f} ms with a resize, {second.init_ms:.1f} ms without")
    stats = pool.stats()["stem_cells"]
    assert stats["target"] == 2 and stats["min"] == 1 and stats["max"] == 32
    pool.release(first.container)
    pool.release(second.container)


async def test_stem_pool_grows_on_cold_starts_and_shrinks_when_idle(
    make_pool: PoolFactory, bundle_dir: Path
) -> None:
    pool = await make_pool(stem_cells=1, stem_cells_max=3, stem_cells_idle_s=2, keep_alive_s=300)
    await pool.wait_for_stem_cells(1, timeout=60)
    # Two new functions at once: one takes the stem cell, the other starts cold.
    leases = await asyncio.gather(
        pool.acquire(spec_for(bundle_dir, function="g1"), wait_s=10),
        pool.acquire(spec_for(bundle_dir, function="g2"), wait_s=10),
    )
    assert sorted(lease.start.value for lease in leases) == ["cold", "stem"]
    assert pool.stats()["stem_cells"]["target"] == 2
    await pool.wait_for_stem_cells(2, timeout=30)

    # No claim for FNHOST_STEM_CELLS_IDLE_S: back to the minimum (1), one cell removed.
    await eventually(lambda: len(stems(pool)) == 1, 10, "the stem pool shrunk")
    assert pool.stats()["stem_cells"]["target"] == 1
    assert pool.counters["stem_cells_shrunk"] == 1
    for lease in leases:
        pool.release(lease.container)


async def test_idle_warm_containers_give_way_to_the_stem_reserve(
    make_pool: PoolFactory, bundle_dir: Path
) -> None:
    """Every slot held by other functions' idle warm containers: a stem cell is kept all
    the same, so a new function starts from it, not cold."""
    pool = await make_pool(stem_cells=1, stem_cells_max=1, max_containers=2, keep_alive_s=300)
    await pool.wait_for_stem_cells(1, timeout=60)
    first = await pool.acquire(spec_for(bundle_dir, function="f1"), wait_s=10)
    await pool.wait_for_stem_cells(1, timeout=60)
    second = await pool.acquire(spec_for(bundle_dir, function="f2"), wait_s=10)
    assert (first.start, second.start) == (StartKind.STEM, StartKind.STEM)
    pool.release(first.container)
    pool.release(second.container)  # both slots taken by idle warm containers
    # Once idle for RESERVE_MIN_IDLE_S, the least recently used gives way to a stem cell.
    await pool.wait_for_stem_cells(1, timeout=RESERVE_MIN_IDLE_S + 30)
    assert pool.counters["reserve_evictions"] == 1
    assert first.container.state is State.REMOVING
    assert second.container.state is State.READY
    third = await pool.acquire(spec_for(bundle_dir, function="f3"), wait_s=10)
    assert third.start is StartKind.STEM
    assert (await call(third))["result"] == b'{"message":"hello, pool"}'
    pool.release(third.container)


async def test_a_warm_container_in_use_lately_is_not_taken_for_the_reserve(
    make_pool: PoolFactory, bundle_dir: Path
) -> None:
    pool = await make_pool(stem_cells=1, stem_cells_max=1, max_containers=1, keep_alive_s=300)
    await pool.wait_for_stem_cells(1, timeout=60)
    spec = spec_for(bundle_dir, function="busy-one")
    deadline = time.monotonic() + RESERVE_MIN_IDLE_S * 2
    while time.monotonic() < deadline:  # used again and again, never idle for long
        lease = await pool.acquire(spec, wait_s=10)
        pool.release(lease.container)
        await asyncio.sleep(0.2)
    assert lease.container.state is State.READY
    assert pool.counters["reserve_evictions"] == 0


async def test_concurrent_cold_starts_are_judged_per_start(
    make_pool: PoolFactory, bundle_dir: Path
) -> None:
    pool = await make_pool(stem_cells=0, keep_alive_s=300)
    leases = await asyncio.gather(*(
        pool.acquire(spec_for(bundle_dir, function=f"burst-{i}"), wait_s=30) for i in range(4)
    ))
    assert all(lease.start is StartKind.COLD for lease in leases)
    # The engine had several of them in hand at once, and knew it.
    assert max(lease.alongside for lease in leases) >= 2
    for lease in leases:
        assert lease.slow == slow_start(lease.engine_ms, lease.alongside, 1000.0)
        pool.release(lease.container)
