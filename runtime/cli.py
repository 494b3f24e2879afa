"""`fnhost`: run the gateway, the scheduler, or the whole platform (`fnhost up`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import uvloop

from runtime import embedded_mongo
from runtime.settings import Settings, SettingsError, load_settings

log = logging.getLogger("fnhost")
KEEP_ALIVE_S = 75  # longer than the idle timeout of common load balancers (60 s)


def _setup_logging(settings: Settings, role: str) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s",
    )
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_gateway(settings: Settings) -> None:
    from gateway.app import create_app

    app = create_app(settings)
    host, _, port = settings.bind.rpartition(":")
    if settings.gateway_server == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [settings.bind]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.keep_alive_timeout = KEEP_ALIVE_S

        async def main() -> None:
            stop = _stop_event()
            await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

        uvloop.run(main())
        return
    import uvicorn

    # httptools parses a request in C: about half the gateway's CPU per async
    # invoke under Hypercorn and h11 (measured, bench/async_bench.py).
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host.strip("[]"), port=int(port), loop="none", http="httptools",
            ws="none", lifespan="on", access_log=False, server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S, log_config=None,
        )
    )
    uvloop.run(server.serve())  # stops on SIGINT / SIGTERM, after the lifespan's shutdown


def run_scheduler(settings: Settings) -> None:
    from runtime.scheduler.service import run_scheduler as run

    async def main() -> None:
        await run(settings, _stop_event())

    uvloop.run(main())


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _admin_key(settings: Settings) -> tuple[str, str]:
    """The admin key and where it came from; generated once and kept in the data dir."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value(), "FNHOST_ADMIN_KEY"
    path = settings.data_dir / "admin-key"
    try:
        # Created 0600 in one step: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others: its mode is now 0600", path)
            path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as key_file:
            key_file.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)


def _start_embedded_mongo(settings: Settings) -> subprocess.Popen[bytes] | None:
    port = settings.embedded_mongo_port
    if _port_open(port):
        log.info("reusing the MongoDB-wire server already on 127.0.0.1:%d", port)
        return None
    storage = settings.data_dir / "mongo"
    storage.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("secantus") is None:
        raise SystemExit(
            "FNHOST_MONGO_URL is unset and the embedded server is not installed: "
            "pip install 'fnhost[embedded]' or set FNHOST_MONGO_URL"
        )
    logfile = open(settings.data_dir / "mongo.log", "ab")
    proc = subprocess.Popen(
        embedded_mongo.command(port, storage),
        stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the embedded MongoDB-wire server did not start: see {logfile.name}")
        time.sleep(0.1)
    log.info("started the embedded MongoDB-wire server on 127.0.0.1:%d", port)
    return proc


def run_up(settings: Settings) -> None:
    """The whole platform in the foreground; Ctrl-C or SIGTERM stops what it started."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key, key_source = _admin_key(settings)
    mongo = _start_embedded_mongo(settings) if settings.mongo_url is None else None
    env = {**os.environ, "FNHOST_ADMIN_KEY": key, "FNHOST_MONGO_URL": settings.effective_mongo_url}
    roles = ("scheduler", "gateway")
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(role: str) -> None:
        children[role] = subprocess.Popen([sys.executable, "-m", "runtime.cli", role], env=env)

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for role in roles:
        spawn(role)
    url = f"http://{settings.bind}"
    key_hint = "$FNHOST_ADMIN_KEY" if key_source == "FNHOST_ADMIN_KEY" else f"$(cat {key_source})"
    print(
        f"\nfnhost is starting on {url}\n"
        f"  admin key: {key_hint}\n"
        f"  create a tenant: curl -s -X POST {url}/v1/tenants "
        f"-H \"Authorization: Bearer {key_hint}\" -d '{{\"name\": \"demo\"}}'\n"
        f"  readiness: curl -s {url}/readyz\n",
        flush=True,
    )
    restarts: dict[str, float] = {}
    try:
        while not stopping:
            time.sleep(0.2)
            for role, proc in list(children.items()):
                if proc.poll() is not None and not stopping:
                    wait = 1.0 if time.monotonic() - restarts.get(role, 0) > 30 else 5.0
                    log.warning("%s exited with %s; restarting in %.0f s", role, proc.returncode, wait)
                    time.sleep(wait)
                    restarts[role] = time.monotonic()
                    spawn(role)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in children.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if mongo is not None:
            mongo.terminate()
            mongo.wait(timeout=30)
        print("fnhost stopped", flush=True)


SERVER_COMMANDS = ("up", "gateway", "scheduler", "check-settings")


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if not args_in or args_in[0] not in SERVER_COMMANDS:
        # The user's verbs (deploy, invoke, submit, tasks, functions) speak the HTTP API
        # through the SDK, which imports nothing of the server.
        from fnhost.cli import main as user_cli

        user_cli.main(args=args_in, prog_name="fnhost")
        return
    parser = argparse.ArgumentParser(prog="fnhost", description=__doc__)
    parser.add_argument("command", choices=SERVER_COMMANDS)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"fnhost: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _setup_logging(settings, args.command)
    if args.command == "up":
        run_up(settings)
    elif args.command == "gateway":
        run_gateway(settings)
    elif args.command == "scheduler":
        run_scheduler(settings)
    else:
        print("settings are valid")


if __name__ == "__main__":
    main()
