"""Real faults for tests: RabbitMQ stopped and started again, one process cut off from
RabbitMQ, a MongoDB-wire server stopped and started again on the same port and storage.

Every fault is a context manager that undoes itself on the way out, even when the
test fails, and waits until the service answers again.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from runtime import embedded_mongo
from tests.harness import AMQP_URL, free_port, rabbitmq_cli, submit_event, wait_port

BROKER_START_S = 120.0


def rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is not installed: cannot stop the broker")
    rabbitmq_cli([ctl, "-q", *args])


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """RabbitMQ's application stopped (every client connection dropped, none accepted)
    for the body of the `with`; started again after it and waited for."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        start_broker()


def start_broker() -> None:
    """Start RabbitMQ's application (a second time if the first start fails) and wait
    until it accepts connections."""
    try:
        rabbitmqctl("start_app")
    except RuntimeError:
        rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    wait_port(urlsplit(AMQP_URL).port or 5672, BROKER_START_S)


class RestartableMongo:
    """A MongoDB-wire server of the test's own, run as `fnhost up` runs it, that can be
    stopped and started again on the same port and storage (a database restart)."""

    def __init__(self, idle_timeout_s: float = embedded_mongo.IDLE_TIMEOUT_S) -> None:
        self.port = free_port()
        self.storage = Path(tempfile.mkdtemp(prefix="fnhost-test-mongo-"))
        self.idle_timeout_s = idle_timeout_s
        self.url = f"mongodb://127.0.0.1:{self.port}/?retryWrites=false"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RestartableMongo:
        command = embedded_mongo.command(self.port, self.storage, idle_timeout_s=self.idle_timeout_s)
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped for the body of the `with`; started again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)


class BrokerUser:
    """A RabbitMQ user of the test's own on one vhost, whose access can be cut (its
    connections closed and refused) and given back, while other users' go on."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.name = "fnhost-test-" + secrets.token_hex(4)
        self.password = secrets.token_hex(12)

    def url(self, base: str) -> str:
        parts = urlsplit(base)
        netloc = f"{self.name}:{self.password}@{parts.hostname}:{parts.port or 5672}"
        return urlunsplit(parts._replace(netloc=netloc))

    def create(self) -> BrokerUser:
        rabbitmqctl("add_user", self.name, self.password)
        self.allow()
        return self

    def allow(self) -> None:
        rabbitmqctl("set_permissions", "-p", self.vhost, self.name, ".*", ".*", ".*")

    @contextlib.contextmanager
    def cut_off(self) -> Iterator[None]:
        """The user's connections closed and refused for the body of the `with`."""
        rabbitmqctl("clear_permissions", "-p", self.vhost, self.name)
        try:
            rabbitmqctl("close_all_user_connections", self.name, "cut off by a test")
            yield
        finally:
            self.allow()

    def delete(self) -> None:
        with contextlib.suppress(RuntimeError):
            rabbitmqctl("delete_user", self.name)


def submit_when_back(client: httpx.Client, function: str, task_id: str, timeout: float = 60) -> None:
    """Submit `task_id` until the outage is over (503 meanwhile): it must be accepted,
    so no record of the refused submissions held the id."""
    deadline = time.monotonic() + timeout
    while (r := submit_event(client, function, {}, headers={"X-Task-Id": task_id})).status_code == 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)
    assert r.status_code == 202, r.text
