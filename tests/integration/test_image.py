"""The runtime image with the real Docker engine: a hardened container, its agent, a function.

Needs a running Docker engine and the image ``fnhost/python3.11`` (scripts/test
starts the one and builds the other with scripts/build-image). Neither is
skipped: a missing engine or image fails with a message saying what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from runtime.agent.protocol import SOCKET_NAME
from runtime.constants import CONTAINER_GID, CONTAINER_UID, CONTAINER_USER
from tests import agentwire

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("FNHOST_RUNTIME_IMAGE", "fnhost/python3.11")
FUNCTIONS = REPO / "functions"

PROBE = """
import os, socket

def handler(event, context):
    def writable(path):
        try:
            with open(os.path.join(path, ".probe"), "w") as f:
                f.write("x")
            os.unlink(os.path.join(path, ".probe"))
            return True
        except OSError:
            return False

    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1).close()
        network = True
    except OSError:
        network = False
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "root_writable": writable("/"),
        "task_writable": writable("/var/task"),
        "socket_dir_writable": writable("/run/fnhost"),
        "tmp_writable": writable("/tmp"),
        "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "network": network,
    }
"""


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"Docker engine not reachable ({exc}): start dockerd, e.g. via scripts/test",
            pytrace=False,
        )
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.fail(f"image {IMAGE} is missing: run scripts/build-image", pytrace=False)
    yield client
    client.close()


class Container:
    """A hardened function container, as the scheduler starts it, and its agent's socket."""

    def __init__(self, client: docker.DockerClient, task_dir: Path) -> None:
        self.client = client
        # Short path: unix socket paths are limited to 108 bytes.
        self.sock_dir = tempfile.mkdtemp(prefix="fnh-it-")
        os.chmod(self.sock_dir, 0o755)
        path = os.path.join(self.sock_dir, SOCKET_NAME)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o666)
        self.listener.listen(1)
        self.listener.settimeout(30)
        self.conn: socket.socket | None = None
        start = time.perf_counter()
        self.container = client.containers.run(
            IMAGE,
            detach=True,
            user=CONTAINER_USER,
            read_only=True,
            tmpfs={"/tmp": "rw,size=64m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=256,
            mem_limit="256m",
            memswap_limit="256m",
            nano_cpus=1_000_000_000,
            network_mode="none",
            volumes={
                self.sock_dir: {"bind": "/run/fnhost", "mode": "ro"},
                str(task_dir): {"bind": "/var/task", "mode": "ro"},
            },
        )
        try:
            self.conn, _ = self.listener.accept()
        except TimeoutError:
            logs = self.container.logs().decode(errors="replace")
            raise AssertionError(f"no connection from the agent in 30 s; logs:\n{logs}") from None
        self.conn.settimeout(30)
        self.hello, _ = self.read()
        self.start_ms = (time.perf_counter() - start) * 1000

    def read(self) -> tuple[dict[str, Any], bytes]:
        assert self.conn is not None
        return agentwire.read_frame(self.conn)

    def call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        assert self.conn is not None
        return agentwire.call(self.conn, header, body)

    def init(self, function: str, handler: str = "main.handler") -> dict[str, Any]:
        answer, _ = self.call(
            {
                "op": "init",
                "handler": handler,
                "code_dir": "/var/task",
                "env": {},
                "function": function,
                "version": "v1",
                "memory_mb": 256,
                "log_limit": 65536,
                "pickle": None,
            }
        )
        return answer

    def invoke(self, event: Any = None) -> tuple[dict[str, Any], bytes, bytes]:
        body = b"" if event is None else json.dumps(event).encode()
        answer, payload = self.call(
            {
                "op": "invoke",
                "request_id": "req-it",
                "task_id": None,
                "deadline_ms": int(time.time() * 1000) + 30_000,
                "attempt": 1,
                "content_type": "application/json",
            },
            body,
        )
        n = answer["result_len"]
        return answer, payload[:n], payload[n:]

    def close_socket(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def remove(self) -> None:
        self.close_socket()
        self.listener.close()
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture
def task_dir() -> Iterator[Path]:
    # On the same filesystem as functions/, so bundles can be hard-linked in.
    base = REPO / ".build"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="task-", dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def container(client: docker.DockerClient, task_dir: Path) -> Iterator[Container]:
    box = Container(client, task_dir)
    try:
        yield box
    finally:
        box.remove()


def link_function(name: str, task_dir: Path) -> None:
    for item in (FUNCTIONS / name).iterdir():
        if item.is_file():
            os.link(item, task_dir / item.name)


def test_hello_function_in_hardened_container(container: Container, task_dir: Path) -> None:
    assert container.hello["op"] == "hello"
    assert container.hello["python"].startswith("3.11.")
    # The bundle arrives after the container started (a stem cell being specialised).
    link_function("hello", task_dir)
    answer = container.init("hello")
    assert answer["ok"] is True, answer
    answer, result, logs = container.invoke({"name": "Ada"})
    assert answer["ok"] is True, answer
    assert answer["content_type"] == "application/json"
    assert json.loads(result) == {"message": "hello, Ada"}
    assert logs == b""
    _, result, _ = container.invoke()
    assert json.loads(result) == {"message": "hello, world"}


def test_container_is_hardened(container: Container, task_dir: Path) -> None:
    (task_dir / "probe.py").write_text(PROBE)
    (task_dir / "probe.py").chmod(0o644)
    assert container.init("probe", "probe.handler")["ok"]
    answer, result, _ = container.invoke({})
    assert answer["ok"] is True, answer
    assert json.loads(result) == {
        "uid": CONTAINER_UID,
        "gid": CONTAINER_GID,
        "root_writable": False,
        "task_writable": False,
        "socket_dir_writable": False,
        "tmp_writable": True,
        "cap_eff": "0000000000000000",
        "no_new_privs": "1",
        "network": False,
    }


def test_function_error_is_reported(container: Container, task_dir: Path) -> None:
    link_function("always-fails", task_dir)
    assert container.init("always-fails")["ok"]
    answer, _, _ = container.invoke({})
    assert answer["ok"] is False
    assert answer["retryable"] is True
    assert answer["error"]["errorType"] == "ValueError"
    assert answer["error"]["errorMessage"] == "this function always fails"
    assert any("/var/task/main.py" in line for line in answer["error"]["stackTrace"])


def test_socket_eof_stops_the_container(container: Container, task_dir: Path) -> None:
    link_function("noop", task_dir)
    assert container.init("noop")["ok"]
    container.close_socket()
    assert container.container.wait(timeout=30)["StatusCode"] == 0


def test_crash_closes_the_socket(container: Container, task_dir: Path) -> None:
    link_function("crash", task_dir)
    assert container.init("crash")["ok"]
    with pytest.raises(EOFError):
        container.invoke({})
    assert container.container.wait(timeout=30)["StatusCode"] == 3
