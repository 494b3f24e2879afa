"""Follows the Docker engine: is it up, and what happens to this scheduler's containers.

The SDK's event stream is a blocking generator that simply ends when the engine
goes away, so it runs in a thread of its own (not the engine's executor, where it
would hold a thread for ever) and is opened again, every `RETRY_S`, until the
engine answers. Everything it learns is handed to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import docker

from runtime import constants as c

log = logging.getLogger(__name__)
RETRY_S = 0.5
# Bounds the version probe that tells whether the engine answers (not the stream).
PROBE_TIMEOUT_S = 5.0
# Container events that say a container is going or gone.
ACTIONS = frozenset({"kill", "die", "destroy", "oom"})


class EngineEvents:
    """Calls `on_up()` each time the stream is (re)established, `on_down(reason)` when
    it breaks and the engine does not answer, and `on_event(action, cell)` for each
    kill, die, destroy or oom of one of `scheduler_id`'s containers; all on `loop`."""

    def __init__(
        self,
        scheduler_id: str,
        loop: asyncio.AbstractEventLoop,
        on_up: Callable[[], Any],
        on_down: Callable[[str], Any],
        on_event: Callable[[str, str], Any],
    ) -> None:
        self._filters = {"type": "container", "label": [f"{c.LABEL_SCHEDULER}={scheduler_id}"]}
        self._loop = loop
        self._on_up = on_up
        self._on_down = on_down
        self._on_event = on_event
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(callback, *args)

    def _follow(self) -> None:
        down = False
        while not self._closed.is_set():
            reason = "the event stream ended"
            try:
                client = docker.DockerClient.from_env(version="auto", timeout=PROBE_TIMEOUT_S)
            except Exception as exc:
                reason = f"{exc!s:.300}"
            else:
                stream: Any = None
                try:
                    stream = self._stream = client.api.events(decode=True, filters=self._filters)
                    if not self._closed.is_set():  # else close() may have missed the stream
                        down = False
                        self._post(self._on_up)
                        for event in stream:
                            if self._closed.is_set():
                                break
                            action = str(event.get("Action") or event.get("status") or "")
                            attributes = (event.get("Actor") or {}).get("Attributes") or {}
                            cell = attributes.get(c.LABEL_CELL)
                            if action in ACTIONS and cell:
                                self._post(self._on_event, action, str(cell))
                except Exception as exc:
                    reason = f"{exc!s:.300}"
                finally:
                    self._stream = None
                    with contextlib.suppress(Exception):
                        if stream is not None:
                            stream.close()
                    with contextlib.suppress(Exception):
                        client.close()
                if self._closed.is_set():
                    return
            # The stream broke or could not be opened: the engine is down unless it
            # still answers (then the stream is simply opened again).
            if not down and not self._answers() and not self._closed.is_set():
                down = True
                log.warning("the Docker engine is not reachable: %s", reason)
                self._post(self._on_down, reason)
            self._closed.wait(RETRY_S)

    def _answers(self) -> bool:
        try:
            client = docker.DockerClient.from_env(version="auto", timeout=PROBE_TIMEOUT_S)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                client.close()
