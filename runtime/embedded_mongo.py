"""The embedded MongoDB-wire server (SecantusDB), as its own process:

    python -m runtime.embedded_mongo --port 27017 --storage-path DIR

It is started this way rather than with `secantusd-py` because that command
takes no way to turn off the server's TTL monitor (its config file has the key,
but the value is not passed on). The monitor decodes every document of each
collection with a TTL index under a lock, once a minute: with a week of task
records, a pause of seconds for every client. fnhost's schedulers expire task
records by an indexed range delete instead (TaskStore.delete_expired).

`--standalone` as well: no replica-set advertisement, so no oplog write per
changed document (fnhost uses neither change streams nor transactions).

The server closes a client connection that sent nothing for `--idle-timeout-s`
(its own default, 300 s, made explicit here); fnhost's client retires pooled
connections sooner (FNHOST_MONGO_MAX_IDLE_S), so it never writes on one the
server has closed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

# The server's own default: a client connection idle this long is closed.
IDLE_TIMEOUT_S = 300.0


def command(port: int, storage: Path, host: str = "127.0.0.1",
            idle_timeout_s: float = IDLE_TIMEOUT_S) -> list[str]:
    """The command line that runs the server (with this interpreter)."""
    return [sys.executable, "-m", "runtime.embedded_mongo", "--host", host, "--port", str(port),
            "--storage-path", str(storage), "--idle-timeout-s", str(idle_timeout_s)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.embedded_mongo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--idle-timeout-s", type=float, default=IDLE_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        from secantus.server import SecantusDBServer
    except ImportError:
        raise SystemExit("the embedded server is not installed: pip install 'fnhost[embedded]'") from None
    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=args.storage_path,
        replica_set_name=None,
        enable_test_commands=False,
        ttl_sweep_seconds=0,
        client_idle_timeout_s=args.idle_timeout_s,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.start()
    server.wait()


if __name__ == "__main__":
    main()
