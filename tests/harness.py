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
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from runtime import embedded_mongo

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
AMQP_URL = os.environ.get("FNHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/fnhost-test")
ADMIN_KEY = "test-admin-key-" + secrets.token_hex(8)
# Where the tests' webhook receivers listen (tests/harness.Webhook, tests/hanging.py).
WEBHOOK_ALLOWED_NETWORKS = "127.0.0.1/32"


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
        self.proc = subprocess.Popen(
            embedded_mongo.command(port, Path(self._dir)),  # as `fnhost up` runs it
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(port, 60, self.proc)
        self.url = f"mongodb://127.0.0.1:{port}/?retryWrites=false"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class Platform:
    """A gateway and a scheduler as separate processes, as in production."""

    def __init__(self, mongo_url: str, root: Path = ROOT, **settings: Any) -> None:
        """`root`: the checkout whose code the processes run (a benchmark may compare
        another one's)."""
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="fnhost-test-data-"))
        self.scheduler_id = "test-" + secrets.token_hex(4)
        self.scheduler_ids = [self.scheduler_id]
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
            # A light pool: a test that is about the stem-cell reserve sets its own.
            "FNHOST_STEM_CELLS": "2",
            "FNHOST_STEM_CELLS_MIN": "1",
            "FNHOST_STEM_CELLS_MAX": "4",
            "FNHOST_HEARTBEAT_S": "0.5",
            # The tests' webhook receivers listen on 127.0.0.1; only there: other loopback
            # addresses (127.0.0.2, [::1]) stay refused for the tests that show so.
            "FNHOST_WEBHOOK_ALLOWED_NETWORKS": WEBHOOK_ALLOWED_NETWORKS,
        }
        self.env.update({f"FNHOST_{k.upper()}": str(v) for k, v in settings.items()})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start_role(self, role: str, name: str | None = None, **settings: Any) -> subprocess.Popen[bytes]:
        """Start `fnhost <role>`; `name` (default: the role) names its process and log,
        and `settings` are FNHOST_* settings of its own."""
        name = name or role
        log_path = self.data_dir / f"{name}.log"
        self.logs[name] = log_path
        env = {**self.env, **{f"FNHOST_{k.upper()}": str(v) for k, v in settings.items()}}
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", role],
                env=env, cwd=self.root, stdout=log_file, stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def start_gateway(self, name: str) -> str:
        """Another gateway process of this platform, on a port of its own: its URL, once
        it is ready."""
        port = free_port()
        proc = self.start_role("gateway", name, bind=f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        wait_port(port, 30, proc)
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.1)
        return url

    def start_scheduler(self, scheduler_id: str) -> subprocess.Popen[bytes]:
        """Another scheduler of this platform, with an id (and data folder) of its own."""
        data_dir = self.data_dir / scheduler_id
        data_dir.mkdir(exist_ok=True)
        self.scheduler_ids.append(scheduler_id)
        return self.start_role(
            "scheduler", scheduler_id, scheduler_id=scheduler_id, data_dir=data_dir
        )

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
        for name in ["gateway", *self.procs]:
            self.stop_role(name)
        self.remove_containers()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def remove_containers(self) -> int:
        """Remove containers left by this platform's scheduler (a killed one leaves them)."""
        import docker

        client = docker.from_env()
        try:
            found = []
            for scheduler_id in self.scheduler_ids:
                found += client.containers.list(
                    all=True, filters={"label": f"fnhost.scheduler={scheduler_id}"}
                )
            for container in found:
                container.remove(force=True)
            return len(found)
        finally:
            client.close()

    def metrics(self, url: str | None = None) -> str:
        """The text of /metrics (of this platform's gateway, or of another at `url`),
        read with the admin key as a scraper would with FNHOST_METRICS_TOKEN."""
        r = httpx.get(f"{url or self.url}/metrics",
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        r.raise_for_status()
        return r.text

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


class NoBroker:
    """A broker connection for `Destinations` used only with webhooks: it opens a
    confirm channel at start, which webhook deliveries never use."""

    class _Channel:
        async def close(self) -> None:
            return None

    async def channel(self, **_: Any) -> NoBroker._Channel:
        return NoBroker._Channel()


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
        rabbitmq_cli([ctl, "-q", "add_vhost", self.name])
        rabbitmq_cli([ctl, "-q", "set_permissions", "-p", self.name, self.user, ".*", ".*", ".*"])
        return self

    def delete(self) -> None:
        """Best effort: a vhost left behind (a stalled or absent broker) fails no test."""
        ctl = shutil.which("rabbitmqctl")
        if ctl is not None:
            with contextlib.suppress(RuntimeError):
                rabbitmq_cli([ctl, "-q", "delete_vhost", self.name])


RABBITMQCTL_TIMEOUT_S = 60.0


def rabbitmq_cli(args: list[str], timeout: float = RABBITMQCTL_TIMEOUT_S) -> str:
    """Run a RabbitMQ CLI tool (`args` with its path first), bounded: a stalled broker must
    fail the test, not hang the session; returns its output.

    Its own session, so that a timeout kills the whole group: as root the wrapper runs
    the Erlang CLI under `su`, which killing only the direct child would leave behind.
    """
    command = " ".join(args)
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()  # at least the direct child, should the group kill be refused
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            raise RuntimeError(
                f"`{command}` did not finish in {timeout:.0f} s: "
                "is the RabbitMQ broker stalled? (see /var/log/rabbitmq/)"
            ) from None
    if proc.returncode != 0:
        raise RuntimeError(f"`{command}` failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode()


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


# -- asynchronous invocations ---------------------------------------------------

FINAL_STATUSES = frozenset({"Succeeded", "Failed", "Stopped", "Expired", "Invalid"})


def submit_event(client: httpx.Client, name: str, payload: Any = None,
                 headers: dict[str, str | bytes] | None = None,
                 content: bytes | None = None) -> httpx.Response:
    """An async (`X-Invocation-Type: Event`) invocation of `name` with a JSON payload,
    or raw `content` when given."""
    import json

    body = content if content is not None else (b"" if payload is None else json.dumps(payload).encode())
    # Values may be bytes (a header that is not ASCII); httpx takes str and bytes alike.
    sent: Any = {"Content-Type": "application/json", "X-Invocation-Type": "Event", **(headers or {})}
    return client.post(f"/v1/functions/{name}/invocations", content=body, headers=sent)


class Submitters:
    """Threads submitting Event invocations of `name` with `event` back to back (or
    `interval_s` apart), each answer kept with when it came (seconds from the start),
    until stopped, `seconds` or `limit` submissions."""

    def __init__(self, client: httpx.Client, name: str, event: Any, *, threads: int,
                 seconds: float = float("inf"), limit: int = sys.maxsize,
                 interval_s: float = 0.0) -> None:
        self.client, self.name, self.event = client, name, event
        self.seconds, self.limit, self.interval_s = seconds, limit, interval_s
        self.answers: list[tuple[float, httpx.Response]] = []
        self.started = 0.0
        self._issued = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self.started < self.seconds:
            with self._lock:
                if self._issued >= self.limit:
                    return
                self._issued += 1
            r = submit_event(self.client, self.name, self.event)
            with self._lock:
                self.answers.append((time.monotonic() - self.started, r))
            if self.interval_s:
                self._stop.wait(self.interval_s)

    def responses(self) -> list[httpx.Response]:
        with self._lock:
            return [r for _, r in self.answers]

    def count(self, status: int) -> int:
        with self._lock:
            return sum(r.status_code == status for _, r in self.answers)

    def first(self, status: int) -> tuple[float, httpx.Response] | None:
        with self._lock:
            return next(((at, r) for at, r in self.answers if r.status_code == status), None)

    def done(self) -> bool:
        with self._lock:
            return len(self.answers) >= self.limit

    def __enter__(self) -> Submitters:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def wait_task(client: httpx.Client, task_id: str, statuses: set[str] | frozenset[str] = FINAL_STATUSES,
              timeout: float = 30.0, function: str | None = None,
              until: Any = None) -> dict[str, Any]:
    """Poll `GET /v1/tasks/{task_id}` until its status is in `statuses` (and `until(task)`
    holds, when given); returns the task, or fails naming the last one seen."""
    deadline = time.monotonic() + timeout
    params = {"function": function} if function else None
    task: dict[str, Any] = {}
    while True:
        r = client.get(f"/v1/tasks/{task_id}", params=params)
        if r.status_code == 200:
            task = r.json()
            if task["status"] in statuses and (until is None or until(task)):
                return task
        elif r.status_code != 404:
            raise AssertionError(f"GET /v1/tasks/{task_id}: {r.status_code} {r.text[:500]}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"task {task_id} did not reach {sorted(statuses)} in {timeout} s: {task}"
            )
        time.sleep(0.1)


def list_all_tasks(client: httpx.Client, limit: int = 50, **filters: str) -> list[dict[str, Any]]:
    """Every task `GET /v1/tasks` shows for `filters`, following `next_cursor`."""
    tasks: list[dict[str, Any]] = []
    params: dict[str, Any] = {**filters, "limit": limit}
    for _ in range(1000):
        r = client.get("/v1/tasks", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        tasks.extend(body["tasks"])
        if not body["next_cursor"]:
            return tasks
        params["cursor"] = body["next_cursor"]
    raise AssertionError("GET /v1/tasks paging did not end after 1000 pages")


# -- destinations: a webhook receiver and a queue reader --------------------------


class Webhook:
    """A real HTTP server on 127.0.0.1 (a thread) that records every POST it gets.

    `status` is what it answers (200 by default; 500 makes every delivery fail), after
    answering 500 to its first `fail_first` POSTs; `host` is where it listens (a
    loopback address: 127.0.0.2 and ::1 are outside WEBHOOK_ALLOWED_NETWORKS). Use it
    as a context manager; `url` is where to point a `webhook` destination.
    """

    def __init__(self, status: int = 200, fail_first: int = 0, host: str = "127.0.0.1") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.status = status
        self.fail_first = fail_first
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                import json

                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = None
                post = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                        "raw": raw, "json": body, "at": time.time()}
                with hook._arrived:
                    hook.posts.append(post)
                    hook._arrived.notify_all()
                    status = 500 if len(hook.posts) <= hook.fail_first else hook.status
                answer = b'{"ok": true}' if status < 400 else b'{"error": "on purpose"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender that went away (a killed scheduler) is no test failure

        self._server = Server((host, 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def records(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far."""
        with self._lock:
            return [p["json"] for p in self.posts]

    def wait(self, count: int = 1, timeout: float = 30.0, task_id: str | None = None) -> list[dict[str, Any]]:
        """Wait until `count` POSTs arrived (those of `task_id` only, when given); returns them."""
        deadline = time.monotonic() + timeout

        def matching() -> list[dict[str, Any]]:
            if task_id is None:
                return list(self.posts)
            return [p for p in self.posts
                    if isinstance(p["json"], dict)
                    and p["json"].get("requestContext", {}).get("taskId") == task_id]

        with self._arrived:
            while len(found := matching()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the webhook got {len(found)} of {count} POSTs in {timeout} s"
                        f"{' for task ' + task_id if task_id else ''}: {[p['json'] for p in self.posts]}"
                    )
                self._arrived.wait(left)
            return found


def read_queue(amqp_url: str, queue: str, count: int = 1, timeout: float = 15.0
               ) -> list[tuple[dict[str, Any], bytes]]:
    """Take `count` messages from a durable RabbitMQ queue (waiting for it to be declared
    and filled): a list of (headers plus `content_type` and `message_id`, body)."""
    import asyncio

    import aio_pika
    from aiormq.exceptions import ChannelNotFoundEntity

    async def run() -> list[tuple[dict[str, Any], bytes]]:
        got: list[tuple[dict[str, Any], bytes]] = []
        deadline = time.monotonic() + timeout
        connection = await aio_pika.connect(amqp_url)
        try:
            while len(got) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"queue {queue}: {len(got)} of {count} messages in {timeout} s")
                channel = await connection.channel()
                try:
                    q = await channel.declare_queue(queue, passive=True)
                    while len(got) < count:
                        message = await q.get(no_ack=False, fail=False)
                        if message is None:
                            break
                        meta = {**dict(message.headers or {}), "content_type": message.content_type,
                                "message_id": message.message_id}
                        got.append((meta, message.body))
                        await message.ack()
                    await channel.close()
                except ChannelNotFoundEntity:
                    pass  # not declared yet: the first record declares it
                if len(got) < count:
                    await asyncio.sleep(0.1)
            return got
        finally:
            await connection.close()

    async def bounded() -> list[tuple[dict[str, Any], bytes]]:
        try:
            return await asyncio.wait_for(run(), timeout + 15)
        except TimeoutError:
            raise AssertionError(f"queue {queue}: the broker did not answer in {timeout + 15} s") from None

    return asyncio.run(bounded())


def eventually(check: Any, timeout: float, what: str) -> Any:
    """Call `check` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def queue_state(amqp_url: str, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of a RabbitMQ queue; None while it does not exist."""
    import asyncio

    import aio_pika
    from aiormq.exceptions import ChannelNotFoundEntity

    async def read() -> tuple[int, int] | None:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return None
            result = declared.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)
        finally:
            await connection.close()

    return asyncio.run(read())


def consumers(amqp_url: str, queue: str) -> int | None:
    """Consumers of a RabbitMQ queue; None while it does not exist."""
    state = queue_state(amqp_url, queue)
    return None if state is None else state[1]
