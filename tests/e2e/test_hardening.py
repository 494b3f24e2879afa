"""Function containers are hardened: seen from the Docker engine and from inside the function.

DESIGN.md section 5: non-root user, read-only root filesystem with a tmpfs /tmp,
all capabilities dropped, no-new-privileges, a pids limit, memory and CPU
limits from the function's config, no network, read-only code and socket mounts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from runtime.constants import CONTAINER_GID, CONTAINER_UID, CONTAINER_USER
from tests.harness import MongoServer, Platform, deploy, function_zip, invoke, own_platform

MB = 1 << 20

PROBE = """
import errno
import os
import socket
import time


def writable(path):
    try:
        with open(os.path.join(path, "probe.txt"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, "probe.txt"))
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__


def resolve(name):
    try:
        return socket.getaddrinfo(name, 80)[0][4][0]
    except OSError as exc:
        return type(exc).__name__


def handler(event, context):
    time.sleep(float((event or {}).get("sleep", 0)))
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "write_task": writable("/var/task"),
        "write_root": writable("/"),
        "write_run": writable("/run/fnhost"),
        "write_tmp": writable("/tmp"),
        "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "interfaces": sorted(os.listdir("/sys/class/net")),
        "loopback": connect("127.0.0.1", 1),
        "outside": connect("1.1.1.1", 53),
        "dns": resolve("example.com"),
    }
"""

HOG = """
def handler(event, context):
    chunks = []
    for _ in range(64):
        chunks.append(bytearray(16 << 20))  # 1 GB in all, each page touched
    return len(chunks)
"""


@pytest.fixture(scope="module")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    """This module's own platform (own vhost), standing in for the session one."""
    with own_platform(mongo.url) as p:
        yield p


@pytest.fixture(scope="module")
def client(platform: Platform) -> Iterator[httpx.Client]:
    c = platform.new_tenant()
    r = deploy(c, "probe", function_zip(PROBE), {"memory_mb": 128, "timeout_s": 20})
    assert r.status_code == 201, r.text
    yield c
    c.close()


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    d = docker.from_env()
    yield d
    d.close()


def inspect(engine: docker.DockerClient, container: str) -> dict[str, Any]:
    attrs: dict[str, Any] = engine.api.inspect_container(container)
    return attrs


def check_hardened(attrs: dict[str, Any], memory_mb: int) -> None:
    config, host = attrs["Config"], attrs["HostConfig"]
    assert attrs["State"]["Running"] is True
    assert config["User"] == CONTAINER_USER
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in (host.get("Tmpfs") or {})
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges" in (host.get("SecurityOpt") or [])
    assert host["Privileged"] is False
    assert (host.get("PidsLimit") or 0) > 0
    assert host["Memory"] == memory_mb * MB
    assert host["MemorySwap"] == memory_mb * MB
    assert host["NanoCpus"] > 0
    assert host["NetworkMode"] == "none"
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    for path in ("/run/fnhost", "/var/task"):
        assert path in mounts, mounts
        assert mounts[path]["RW"] is False, mounts[path]
    assert set(mounts) <= {"/run/fnhost", "/var/task", "/tmp"}, mounts  # nothing else mounted


def test_ready_container_is_hardened(client: httpx.Client, engine: docker.DockerClient) -> None:
    r = invoke(client, "probe", {})
    assert r.status_code == 200, r.text
    container = r.headers["x-fnhost-container"]
    # Kept warm after the call: still running, READY for the next one.
    check_hardened(inspect(engine, container), 128)


def test_busy_container_is_hardened(client: httpx.Client, engine: docker.DockerClient) -> None:
    """Inspected while it runs an invocation (the warm container of the previous call)."""
    warm = invoke(client, "probe", {})
    container = warm.headers["x-fnhost-container"]
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(invoke(client, "probe", {"sleep": 2})))
    thread.start()
    try:
        time.sleep(0.7)
        attrs = inspect(engine, container)
        top = engine.api.top(container, ps_args="-o uid,pid,args")
        check_hardened(attrs, 128)
    finally:
        thread.join(30)
    assert answers and answers[0].status_code == 200
    assert answers[0].headers["x-fnhost-container"] == container
    # Every process in it runs as the functions' uid, not root.
    uid_col = top["Titles"].index("UID")
    assert top["Processes"], top
    assert {row[uid_col] for row in top["Processes"]} <= {str(CONTAINER_UID)}, top


def test_from_inside(client: httpx.Client) -> None:
    r = invoke(client, "probe", {})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["uid"] == CONTAINER_UID and seen["euid"] == CONTAINER_UID
    assert seen["gid"] == CONTAINER_GID
    assert (seen["write_task"], seen["write_root"], seen["write_run"]) == ("EROFS",) * 3, seen
    assert seen["write_tmp"] == "ok"
    assert int(seen["cap_eff"], 16) == 0
    assert seen["no_new_privs"] == "1"
    assert seen["interfaces"] == ["lo"]
    assert seen["loopback"] == "ECONNREFUSED"
    assert seen["outside"] in ("ENETUNREACH", "EHOSTUNREACH"), seen["outside"]
    assert seen["dns"] == "gaierror"


def test_memory_limit_follows_the_function(client: httpx.Client, engine: docker.DockerClient) -> None:
    """A function bigger than a stem cell: the container is resized up, swap included."""
    r = deploy(client, "big", function_zip(PROBE), {"memory_mb": 512})
    assert r.status_code == 201, r.text
    r = invoke(client, "big", {})
    assert r.status_code == 200, r.text
    check_hardened(inspect(engine, r.headers["x-fnhost-container"]), 512)


def test_out_of_memory_is_reported(client: httpx.Client, engine: docker.DockerClient) -> None:
    r = deploy(client, "hog", function_zip(HOG), {"memory_mb": 128, "timeout_s": 20})
    assert r.status_code == 201, r.text
    r = invoke(client, "hog", {})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-function-error") == "Unhandled"
    body = r.json()
    assert body["errorType"] == "Runtime.ExitError"
    assert "out of memory (128 MB)" in body["errorMessage"], body
    # The next call gets a fresh container and fails the same way, cleanly.
    again = invoke(client, "hog", {})
    assert again.json()["errorType"] == "Runtime.ExitError"
    assert again.headers["x-fnhost-container"] != r.headers["x-fnhost-container"]
