"""Starts real fnhost processes (gateway, scheduler) against the real services for tests.

RabbitMQ: the vhost in FNHOST_TEST_AMQP_URL (scripts/test creates it).
MongoDB-wire server: FNHOST_TEST_MONGO_URL, or a SecantusDB process started here.
Docker: the local engine, with the runtime image built by scripts/build-image.
Every platform gets its own database, scheduler id and data dir.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
AMQP_URL = os.environ.get("FNHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/fnhost-test")
ADMIN_KEY = "test-admin-key-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class MongoServer:
    """A SecantusDB process (MongoDB wire protocol), or an external URL."""

    def __init__(self) -> None:
        self.url = os.environ.get("FNHOST_TEST_MONGO_URL", "")
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def start(self) -> None:
        if self.url:
            return
        port = free_port()
        self._dir = tempfile.mkdtemp(prefix="fnhost-test-mongo-")
        exe = Path(sys.executable).with_name("secantusd-py")
        self.proc = subprocess.Popen(
            [str(exe), "--host", "127.0.0.1", "--port", str(port), "--storage-path", self._dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(port, 60, self.proc)
        self.url = f"mongodb://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class Platform:
    """A gateway and a scheduler as separate processes, as in production."""

    def __init__(self, mongo_url: str, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="fnhost-test-data-"))
        self.scheduler_id = "test-" + secrets.token_hex(4)
        self.env = {
            **os.environ,
            "FNHOST_BIND": f"127.0.0.1:{self.port}",
            "FNHOST_ADMIN_KEY": ADMIN_KEY,
            "FNHOST_CLUSTER_SECRET": secrets.token_hex(16),
            "FNHOST_AMQP_URL": AMQP_URL,
            "FNHOST_MONGO_URL": mongo_url,
            "FNHOST_MONGO_DB": "t" + secrets.token_hex(6),
            "FNHOST_DATA_DIR": str(self.data_dir),
            "FNHOST_SCHEDULER_ID": self.scheduler_id,
            "FNHOST_STEM_CELLS": "2",
            "FNHOST_HEARTBEAT_S": "0.5",
        }
        self.env.update({f"FNHOST_{k.upper()}": str(v) for k, v in settings.items()})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start_role(self, role: str) -> subprocess.Popen[bytes]:
        log_path = self.data_dir / f"{role}.log"
        self.logs[role] = log_path
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", role],
                env=self.env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            )
        self.procs[role] = proc
        return proc

    def stop_role(self, role: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(role, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start(self, scheduler: bool = True, ready_timeout: float = 60) -> Platform:
        if scheduler:
            self.start_role("scheduler")
        gateway = self.start_role("gateway")
        wait_port(self.port, 30, gateway)
        if scheduler:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(f"{self.url}/readyz", timeout=5)
                if last.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"platform not ready: {last.text if last else 'no answer'}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        out = []
        for role, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {role} ---\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        for role in ("gateway", "scheduler"):
            self.stop_role(role)
        self.remove_containers()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def remove_containers(self) -> int:
        """Remove containers left by this platform's scheduler (a killed one leaves them)."""
        import docker

        client = docker.from_env()
        try:
            found = client.containers.list(
                all=True, filters={"label": f"fnhost.scheduler={self.scheduler_id}"}
            )
            for container in found:
                container.remove(force=True)
            return len(found)
        finally:
            client.close()

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
        )

    def new_tenant(self, name: str | None = None) -> httpx.Client:
        """A client authenticated as a fresh tenant."""
        with self.admin() as admin:
            r = admin.post("/v1/tenants", json={"name": name or "t-" + secrets.token_hex(4)})
            r.raise_for_status()
            key = r.json()["api_key"]
        client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        client.tenant_id = r.json()["id"]  # type: ignore[attr-defined]
        return client


def zip_dir(folder: Path | str, extra: dict[str, str | bytes] | None = None) -> bytes:
    """Zip a function folder (files at the zip's root), plus extra entries."""
    folder = FUNCTIONS / folder if isinstance(folder, str) else folder
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_files(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def deploy(
    client: httpx.Client, name: str, bundle: bytes | str, config: dict[str, Any] | None = None
) -> httpx.Response:
    """PUT a function: a zip body, or multipart with a config part when `config` is given."""
    data = zip_dir(bundle) if isinstance(bundle, str) else bundle
    if config is None:
        return client.put(f"/v1/functions/{name}", content=data,
                          headers={"Content-Type": "application/zip"})
    import json

    return client.put(
        f"/v1/functions/{name}",
        files={"code": ("bundle.zip", data, "application/zip"),
               "config": (None, json.dumps(config), "application/json")},
    )


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """The response is `status` with the contract's JSON error body; returns `error`."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:2000]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    if field is not None:
        assert error.get("field") == field, body
    return error


def function_zip(source: str, manifest: dict[str, Any] | None = None,
                 extra: dict[str, str | bytes] | None = None) -> bytes:
    """A bundle with `source` as main.py, an optional fnhost.json and extra entries."""
    import json

    files: dict[str, str | bytes] = {"main.py": source}
    if manifest is not None:
        files["fnhost.json"] = json.dumps(manifest)
    files.update(extra or {})
    return zip_files(files)


def returns(value: Any) -> str:
    """The source of a main.py whose handler returns `value` (a JSON-able literal)."""
    return f"def handler(event, context):\n    return {value!r}\n"


class Vhost:
    """A fresh RabbitMQ vhost for one platform, made with rabbitmqctl on this machine.

    Every platform on the shared test vhost hears every scheduler's heartbeats on the
    fanout control exchange (the session platform's, and those of any other test run
    on this machine). A test about readiness or scheduler membership needs a platform
    that hears only its own processes: pass `amqp_url=vhost.url` to `Platform`.
    """

    def __init__(self) -> None:
        from urllib.parse import urlsplit, urlunsplit

        self.name = "fnhost-test-" + secrets.token_hex(4)
        parts = urlsplit(AMQP_URL)
        self.user = parts.username or "guest"
        self.url = urlunsplit(parts._replace(path="/" + self.name))

    def create(self) -> Vhost:
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            raise RuntimeError("rabbitmqctl is not installed: cannot create a test vhost")
        subprocess.run([ctl, "-q", "add_vhost", self.name], check=True, capture_output=True)
        subprocess.run([ctl, "-q", "set_permissions", "-p", self.name, self.user, ".*", ".*", ".*"],
                       check=True, capture_output=True)
        return self

    def delete(self) -> None:
        ctl = shutil.which("rabbitmqctl")
        if ctl is not None:
            subprocess.run([ctl, "-q", "delete_vhost", self.name], capture_output=True)


def container_gone(docker_id: str, timeout: float = 10.0) -> bool:
    """Whether the Docker engine has no container `docker_id` (an id or its prefix) by `timeout`."""
    import docker
    import docker.errors

    client = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.containers.get(docker_id)
            except docker.errors.NotFound:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
    finally:
        client.close()


def invoke(client: httpx.Client, name: str, event: Any = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    """A sync invocation of `name` with a JSON event (None sends an empty body)."""
    import json

    content = b"" if event is None else json.dumps(event).encode()
    return client.post(
        f"/v1/functions/{name}/invocations", content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@contextlib.contextmanager
def own_platform(mongo_url: str, **settings: Any) -> Iterator[Platform]:
    """A started platform on a RabbitMQ vhost of its own, stopped and deleted after.

    On its own vhost its gateway routes only to its own scheduler, never to one of
    another platform (or another test run) that shares the test vhost.
    """
    vhost = Vhost().create()
    platform = Platform(mongo_url, amqp_url=vhost.url, **settings)
    try:
        try:
            platform.start()
        except Exception:
            print(platform.tail())
            raise
        yield platform
    finally:
        platform.stop()
        vhost.delete()
