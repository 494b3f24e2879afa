"""The fnhost agent: runs inside a function container (stdlib only; cloudpickle lazily).

Usage: ``python3 -m fnhost_agent /run/fnhost/host.sock`` (in the image), or
``python -m runtime.agent SOCKET`` from a checkout.

The agent connects to the scheduler's unix socket, says ``hello``, then answers
one frame at a time as described in ``protocol.py``: ``init`` loads the handler
once, ``invoke`` runs it once per request. It captures what the handler writes
to ``sys.stdout``/``sys.stderr`` (bounded, keeping the tail), reports handler
errors the way AWS Lambda does (errorType, errorMessage, stackTrace) and never
dies from a handler error. It enforces no limits: the host owns timeouts,
memory and CPU. EOF on the socket ends the agent with status 0.
"""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import socket
import sys
import time
import types
from typing import Any

from .protocol import MAX_BODY_BYTES, PREFIX, ProtocolError, decode_header, pack, unpack_prefix

DEFAULT_SOCKET = "/run/fnhost/host.sock"
DEFAULT_LOG_LIMIT = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
_NO_DEADLINE_MS = 2**31 - 1


# --------------------------------------------------------------------------- logs


class LogBuffer:
    """Bytes written during one init or invocation, keeping only the last ``limit``."""

    __slots__ = ("buf", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.buf = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if self.limit == 0:
            return
        self.buf += data
        # Trim now and then (amortised), not on every write.
        if len(self.buf) > 2 * self.limit + 65536:
            del self.buf[: len(self.buf) - self.limit]

    def getvalue(self) -> tuple[bytes, bool]:
        """The kept bytes and whether older output was dropped."""
        truncated = self.total > self.limit
        if self.limit == 0:
            return b"", truncated
        data = bytes(self.buf[-self.limit :]) if len(self.buf) > self.limit else bytes(self.buf)
        if truncated:
            # Do not start in the middle of a UTF-8 sequence.
            start = 0
            while start < len(data) and start < 3 and (data[start] & 0xC0) == 0x80:
                start += 1
            data = data[start:]
        return data, truncated


# The capture in force (init or invoke), or None: output then goes to the
# container's own stdout/stderr.
_sink: LogBuffer | None = None


class _CaptureBinary(io.RawIOBase):
    """``sys.stdout.buffer`` of a captured stream."""

    def __init__(self, text: _CaptureText) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        sink = _sink
        raw = bytes(data)
        if sink is None:
            original = self._text.original
            original.flush()
            original.buffer.write(raw)
            original.buffer.flush()
        else:
            sink.add(raw)
        return len(raw)

    def fileno(self) -> int:
        return int(self._text.original.fileno())


class _CaptureText(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr`` for the agent's lifetime.

    Installed once, so a logging handler that kept a reference to the stream at
    import time is captured in later invocations too.
    """

    encoding = "utf-8"
    errors = "backslashreplace"
    line_buffering = True

    def __init__(self, original: Any, name: str) -> None:
        super().__init__()
        self.original = original
        self.name = name
        self._buffer = _CaptureBinary(self)

    @property
    def buffer(self) -> _CaptureBinary:
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.original.fileno())

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        sink = _sink
        if sink is None:
            self.original.write(s)
        else:
            sink.add(s.encode("utf-8", "backslashreplace"))
        return len(s)

    def flush(self) -> None:
        if _sink is None:
            self.original.flush()


# ------------------------------------------------------------------------- errors


def _frames(tb: Any) -> list[str]:
    """Formatted stack frames of a traceback, without the agent's and importlib's."""
    import importlib
    import traceback

    importlib_dir = os.path.dirname(importlib.__file__ or "") + os.sep
    keep = [
        fs
        for fs in traceback.extract_tb(tb)
        if fs.filename != __file__ and not fs.filename.startswith(("<frozen importlib", importlib_dir))
    ]
    return traceback.format_list(keep)


def _error(error_type: str, message: str, trace: list[str] | None = None) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": trace or []}


def _exception_error(exc: BaseException) -> dict[str, Any]:
    return _error(type(exc).__name__, _str(exc), _frames(exc.__traceback__))


def _str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not kill the agent
        return f"<unprintable {type(exc).__name__}>"


def _failure(
    error: dict[str, Any],
    retryable: bool,
    logs: bytes = b"",
    duration_ms: float = 0.0,
    truncated: bool = False,
) -> bytes:
    """An error answer frame; its body is the captured logs."""
    header = {
        "ok": False,
        "error": error,
        "retryable": retryable,
        "result_len": 0,
        "duration_ms": duration_ms,
        "logs_truncated": truncated,
    }
    return pack(header, logs)


# ------------------------------------------------------------------------ context


class Context:
    """The second argument of ``handler(event, context)``."""

    __slots__ = (
        "attempt",
        "deadline_ms",
        "function_name",
        "function_version",
        "memory_limit_in_mb",
        "request_id",
        "task_id",
    )

    def __init__(
        self,
        request_id: str,
        task_id: str | None,
        function_name: str,
        function_version: str,
        memory_limit_in_mb: int,
        attempt: int,
        deadline_ms: int | None,
    ) -> None:
        self.request_id = request_id
        self.task_id = task_id
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = memory_limit_in_mb
        self.attempt = attempt
        self.deadline_ms = deadline_ms

    @property
    def aws_request_id(self) -> str:
        """AWS Lambda's name for ``request_id``, for ported handlers."""
        return self.request_id

    def get_remaining_time_in_millis(self) -> int:
        if self.deadline_ms is None:
            return _NO_DEADLINE_MS
        return max(0, int(self.deadline_ms - time.time() * 1000))

    def __repr__(self) -> str:
        return (
            f"Context(request_id={self.request_id!r}, task_id={self.task_id!r}, "
            f"function_name={self.function_name!r}, function_version={self.function_version!r}, "
            f"attempt={self.attempt}, deadline_ms={self.deadline_ms})"
        )


# ---------------------------------------------------------------------- payloads


def is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def encode_result(result: Any) -> tuple[bytes, str]:
    """Serialise a handler's return value: raises TypeError/ValueError when it cannot."""
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result), "application/octet-stream"
    if isinstance(result, str):
        return result.encode("utf-8", "surrogatepass"), "text/plain; charset=utf-8"
    raw = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return raw.encode("utf-8"), "application/json"


# -------------------------------------------------------------------------- agent


class Agent:
    """State of one container: at most one handler, one invocation at a time."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.function = ""
        self.version = ""
        self.memory_mb = 0
        self.log_limit = DEFAULT_LOG_LIMIT

    def handle(self, header: dict[str, Any], body: bytes) -> bytes:
        """Exactly one answer frame per request frame, whatever goes wrong."""
        global _sink
        op = header.get("op")
        try:
            if op == "invoke":
                return self.invoke(header, body)
            if op == "init":
                return self.init(header)
            error = _error("Runtime.UnknownOperation", f"unknown op {op!r}")
        except Exception as exc:  # a malformed request: answer it, keep serving
            _sink = None
            error = _error("Runtime.AgentError", f"{op}: {type(exc).__name__}: {_str(exc)}")
        return _failure(error, retryable=False)

    # ---------------------------------------------------------------- init
    def init(self, header: dict[str, Any]) -> bytes:
        global _sink
        if self.handler is not None:
            message = "this agent already has a handler"
            return _failure(_error("Runtime.AlreadyInitialized", message), retryable=False)
        limit = header.get("log_limit")
        try:
            self.log_limit = DEFAULT_LOG_LIMIT if limit is None else max(0, int(limit))
        except (TypeError, ValueError):
            self.log_limit = DEFAULT_LOG_LIMIT
        self.function = str(header.get("function") or "")
        self.version = str(header.get("version") or "")
        try:
            self.memory_mb = int(header.get("memory_mb") or 0)
        except (TypeError, ValueError):
            self.memory_mb = 0

        logs = LogBuffer(self.log_limit)
        start = time.perf_counter()
        _sink = logs
        try:
            handler, error = self._load(header)
        finally:
            _sink = None
        init_ms = round((time.perf_counter() - start) * 1000, 3)
        log_bytes, truncated = logs.getvalue()
        answer: dict[str, Any] = {
            "ok": error is None,
            "init_ms": init_ms,
            "result_len": 0,
            "logs_truncated": truncated,
        }
        if error is None:
            self.handler = handler
        else:
            answer["error"] = error
            answer["retryable"] = False
        return pack(answer, log_bytes)

    def _load(self, header: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        code_dir = str(header.get("code_dir") or "/var/task")
        env = header.get("env") or {}
        try:
            os.environ.update({str(k): str(v) for k, v in dict(env).items()})
            os.chdir(code_dir)
        except (OSError, TypeError, ValueError) as exc:
            return None, _error("Runtime.InvalidConfig", f"cannot set up {code_dir!r}: {exc}")
        if code_dir not in sys.path[:1]:
            sys.path.insert(0, code_dir)

        pickled = header.get("pickle")
        if pickled:
            return self._load_pickle(code_dir, str(pickled))
        return self._load_module(str(header.get("handler") or ""))

    def _load_module(self, spec: str) -> tuple[Any, dict[str, Any] | None]:
        import importlib

        module_name, _, attr = spec.rpartition(".")
        if not module_name or not attr:
            return None, _error(
                "Runtime.MalformedHandlerName",
                f"Bad handler {spec!r}: expected 'module.function' (e.g. 'main.handler')",
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            return None, _error(
                "Runtime.ImportModuleError",
                f"Unable to import module '{module_name}': {_str(exc)}",
                _frames(exc.__traceback__),
            )
        except SyntaxError as exc:
            import traceback

            return None, _error(
                "Runtime.UserCodeSyntaxError",
                f"Syntax error in module '{module_name}': {_str(exc)}",
                _frames(exc.__traceback__) + traceback.format_exception_only(type(exc), exc),
            )
        except BaseException as exc:  # anything raised while importing user code
            return None, _error(
                "Runtime.ImportModuleError",
                f"Unable to import module '{module_name}': {type(exc).__name__}: {_str(exc)}",
                _frames(exc.__traceback__),
            )
        handler = getattr(module, attr, None)
        if handler is None:
            return None, _error(
                "Runtime.HandlerNotFound",
                f"Handler '{attr}' missing on module '{module_name}'",
            )
        if not callable(handler):
            return None, _error(
                "Runtime.HandlerNotFound",
                f"Handler '{attr}' on module '{module_name}' is not callable",
            )
        return handler, None

    def _load_pickle(self, code_dir: str, name: str) -> tuple[Any, dict[str, Any] | None]:
        path = os.path.join(code_dir, name)
        try:
            import cloudpickle

            with open(path, "rb") as f:
                handler = cloudpickle.load(f)
        except BaseException as exc:
            return None, _error(
                "Runtime.ImportModuleError",
                f"Unable to load pickled handler '{name}': {type(exc).__name__}: {_str(exc)}",
                _frames(exc.__traceback__),
            )
        if not callable(handler):
            return None, _error(
                "Runtime.HandlerNotFound",
                f"Pickled object in '{name}' is not callable ({type(handler).__name__})",
            )
        return handler, None

    # -------------------------------------------------------------- invoke
    def invoke(self, header: dict[str, Any], body: bytes) -> bytes:
        global _sink
        if self.handler is None:
            message = "invoke before a successful init"
            return _failure(_error("Runtime.NotInitialized", message), retryable=True)
        content_type = header.get("content_type")
        if is_json_type(content_type):
            if body.strip():
                try:
                    event: Any = json.loads(body)
                except ValueError as exc:  # also UnicodeDecodeError
                    message = f"Could not parse request body as JSON: {exc}"
                    return _failure(_error("Runtime.InvalidPayload", message), retryable=False)
            else:
                event = None
        else:
            event = body

        deadline = header.get("deadline_ms")
        context = Context(
            request_id=str(header.get("request_id") or ""),
            task_id=header.get("task_id"),
            function_name=self.function,
            function_version=self.version,
            memory_limit_in_mb=self.memory_mb,
            attempt=int(header.get("attempt") or 1),
            deadline_ms=int(deadline) if deadline is not None else None,
        )

        logs = LogBuffer(self.log_limit)
        error: dict[str, Any] | None = None
        retryable = True
        result = b""
        result_type = ""
        _sink = logs
        start = time.perf_counter()
        try:
            value = self.handler(event, context)
            if isinstance(value, types.CoroutineType):  # an async def handler
                import asyncio

                value = asyncio.run(value)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too
            error = _exception_error(exc)
            value = None
        duration_ms = round((time.perf_counter() - start) * 1000, 3)
        _sink = None

        if error is None:
            try:
                result, result_type = encode_result(value)
            except (TypeError, ValueError, RecursionError, OverflowError) as exc:
                error = _error(
                    "Runtime.ResultSerializationError",
                    f"Unable to serialise the result as JSON: {_str(exc)}",
                )
                retryable = False
        del value

        log_bytes, truncated = logs.getvalue()
        if error is None and len(result) + len(log_bytes) > MAX_BODY_BYTES:
            error = _error(
                "Runtime.ResponseSizeTooLarge",
                f"Result of {len(result)} bytes exceeds the {MAX_BODY_BYTES} byte frame limit",
            )
            retryable = False
            result = b""
        if error is not None:
            return _failure(error, retryable, log_bytes, duration_ms, truncated)
        return pack(
            {
                "ok": True,
                "content_type": result_type,
                "result_len": len(result),
                "duration_ms": duration_ms,
                "logs_truncated": truncated,
            },
            result + log_bytes,
        )


# ------------------------------------------------------------------------ wiring


def connect(path: str, timeout_s: float | None = None) -> socket.socket:
    """Connect to the scheduler's socket, waiting briefly if it is not there yet."""
    deadline = time.monotonic() + (CONNECT_TIMEOUT_S if timeout_s is None else timeout_s)
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except BaseException:
            sock.close()
            raise


def _read_frame(rfile: Any) -> tuple[dict[str, Any], bytes] | None:
    prefix = rfile.read(PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < PREFIX.size:
        raise ProtocolError("connection closed inside a frame prefix")
    header_len, body_len = unpack_prefix(prefix)
    raw = rfile.read(header_len)
    body = rfile.read(body_len) if body_len else b""
    if len(raw) < header_len or len(body) < body_len:
        raise ProtocolError("connection closed inside a frame")
    return decode_header(raw), body


def serve(sock: socket.socket) -> int:
    """Say hello, then answer frames until the host closes the socket."""
    agent = Agent()
    rfile = sock.makefile("rb")
    try:
        sock.sendall(pack({"op": "hello", "pid": os.getpid(), "python": platform.python_version()}))
        while True:
            frame = _read_frame(rfile)
            if frame is None:
                return 0
            header, body = frame
            sock.sendall(agent.handle(header, body))
            del frame, body
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        rfile.close()
        sock.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    path = argv[1] if len(argv) > 1 else DEFAULT_SOCKET
    real_stderr = sys.stderr
    # In a container the agent is PID 1, for which the kernel ignores SIGTERM
    # unless a handler is installed: without this, `docker stop` waits for
    # its timeout and then kills.
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.stdout = _CaptureText(sys.stdout, "<stdout>")
    sys.stderr = _CaptureText(sys.stderr, "<stderr>")
    try:
        sock = connect(path)
    except OSError as exc:
        print(f"fnhost-agent: cannot connect to {path}: {exc}", file=real_stderr)
        return 1
    try:
        return serve(sock)
    except ProtocolError as exc:
        print(f"fnhost-agent: protocol error: {exc}", file=real_stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
