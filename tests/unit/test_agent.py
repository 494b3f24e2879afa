"""The in-container agent, run as a local subprocess against a socket the test listens on."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from runtime.agent import __main__ as agent_main
from runtime.agent.protocol import pack
from tests import agentwire

REPO = Path(__file__).resolve().parents[2]

HANDLERS = """
import asyncio
import os
import sys

print("loading handlers")
print("loading warning", file=sys.stderr)


def echo(event, context):
    return event


def kind(event, context):
    value = event.decode() if isinstance(event, bytes) else event
    return {"type": type(event).__name__, "value": value}


def text(event, context):
    return "héllo text"


def raw(event, context):
    return b"\\x00\\x01binary\\xff"


def nothing(event, context):
    return None


def boom(event, context):
    print("about to fail")
    raise ValueError("it broke: " + str(event))


def exits(event, context):
    sys.exit(4)


def interrupted(event, context):
    raise KeyboardInterrupt


def unserialisable(event, context):
    return {"when": object()}


def ctx(event, context):
    return {
        "request_id": context.request_id,
        "task_id": context.task_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "attempt": context.attempt,
        "deadline_ms": context.deadline_ms,
        "remaining": context.get_remaining_time_in_millis(),
        "env": os.environ.get("GREETING"),
        "cwd": os.getcwd(),
    }


def chatty(event, context):
    for i in range(event["lines"]):
        print(f"line {i:04d}")
    return event["lines"]


def interleaved(event, context):
    print("one")
    print("two", file=sys.stderr)
    sys.stdout.write("three\\n")
    sys.stdout.buffer.write(b"four\\n")
    sys.stderr.write("five\\n")
    return "done"


async def coroutine(event, context):
    await asyncio.sleep(0)
    return {"async": True}


not_callable = 42
"""


class AgentProcess:
    """One agent subprocess and the host end of its socket."""

    def __init__(self, code_dir: Path) -> None:
        self.code_dir = code_dir
        self.sock_dir = tempfile.mkdtemp(prefix="fnh-agent-")
        self.path = os.path.join(self.sock_dir, "host.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(15)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.agent", self.path],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(15)
        self.hello, _ = self.read()

    def read(self) -> tuple[dict[str, Any], bytes]:
        return agentwire.read_frame(self.conn)

    def call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        return agentwire.call(self.conn, header, body)

    def init(self, handler: str = "handlers.echo", **extra: Any) -> tuple[dict[str, Any], bytes]:
        header = {
            "op": "init",
            "handler": handler,
            "code_dir": str(self.code_dir),
            "env": {"GREETING": "hi"},
            "function": "fn",
            "version": "v1",
            "memory_mb": 128,
            "log_limit": 65536,
            "pickle": None,
        }
        header.update(extra)
        return self.call(header)

    def invoke(
        self, body: bytes = b"", content_type: str | None = "application/json", **extra: Any
    ) -> tuple[dict[str, Any], bytes, bytes]:
        header: dict[str, Any] = {
            "op": "invoke",
            "request_id": "req-1",
            "task_id": None,
            "deadline_ms": int(time.time() * 1000) + 30_000,
            "attempt": 1,
            "content_type": content_type,
        }
        header.update(extra)
        answer, payload = self.call(header, body)
        n = answer["result_len"]
        return answer, payload[:n], payload[n:]

    def result(self, body: bytes = b"", content_type: str | None = "application/json", **extra: Any) -> bytes:
        answer, result, _ = self.invoke(body, content_type, **extra)
        assert answer["ok"], answer
        return result

    def close(self) -> int:
        self.conn.close()
        self.listener.close()
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


@pytest.fixture
def agent(code_dir: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(code_dir)
    try:
        yield proc
    finally:
        status = proc.close()
    assert status == 0, f"agent exited with {status}"


def loaded(agent: AgentProcess, handler: str, **extra: Any) -> AgentProcess:
    answer, _ = agent.init(handler, **extra)
    assert answer["ok"], answer
    return agent


# ----------------------------------------------------------------- hello / init


def test_hello(agent: AgentProcess) -> None:
    assert agent.hello["op"] == "hello"
    assert agent.hello["pid"] == agent.proc.pid
    assert agent.hello["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")


def test_init_ok_captures_import_output(agent: AgentProcess) -> None:
    answer, body = agent.init("handlers.echo")
    assert answer["ok"] is True
    assert isinstance(answer["init_ms"], int | float) and answer["init_ms"] >= 0
    assert answer["result_len"] == 0
    assert body == b"loading handlers\nloading warning\n"


def test_init_sets_env_and_cwd(agent: AgentProcess, code_dir: Path) -> None:
    loaded(agent, "handlers.ctx")
    result = agent.result(b"{}")
    data = json.loads(result)
    assert data["env"] == "hi"
    assert os.path.realpath(data["cwd"]) == os.path.realpath(code_dir)


def test_init_module_not_found(agent: AgentProcess) -> None:
    answer, _ = agent.init("missing.handler")
    assert answer["ok"] is False
    assert answer["error"]["errorType"] == "Runtime.ImportModuleError"
    assert "missing" in answer["error"]["errorMessage"]


def test_init_dependency_not_found(agent: AgentProcess, code_dir: Path) -> None:
    (code_dir / "needsdep.py").write_text("import not_installed_anywhere\n")
    answer, _ = agent.init("needsdep.handler")
    assert answer["error"]["errorType"] == "Runtime.ImportModuleError"
    assert "not_installed_anywhere" in answer["error"]["errorMessage"]
    assert any("needsdep.py" in frame for frame in answer["error"]["stackTrace"])


def test_init_handler_not_found(agent: AgentProcess) -> None:
    answer, _ = agent.init("handlers.nope")
    assert answer["ok"] is False
    assert answer["error"]["errorType"] == "Runtime.HandlerNotFound"
    assert "nope" in answer["error"]["errorMessage"]


def test_init_handler_not_callable(agent: AgentProcess) -> None:
    answer, _ = agent.init("handlers.not_callable")
    assert answer["error"]["errorType"] == "Runtime.HandlerNotFound"


def test_init_malformed_handler_name(agent: AgentProcess) -> None:
    answer, _ = agent.init("nodots")
    assert answer["error"]["errorType"] == "Runtime.MalformedHandlerName"


def test_init_syntax_error(agent: AgentProcess, code_dir: Path) -> None:
    (code_dir / "broken.py").write_text("def handler(event, context:\n    return 1\n")
    answer, _ = agent.init("broken.handler")
    error = answer["error"]
    assert answer["ok"] is False
    assert error["errorType"] == "Runtime.UserCodeSyntaxError"
    assert "broken" in error["errorMessage"]
    assert error["stackTrace"] and all(isinstance(line, str) for line in error["stackTrace"])
    assert any("broken.py" in line for line in error["stackTrace"])


def test_init_exception_during_import(agent: AgentProcess, code_dir: Path) -> None:
    (code_dir / "raises.py").write_text(
        textwrap.dedent(
            """
            print("importing raises")
            def helper():
                raise RuntimeError("boom at import")
            helper()
            """
        )
    )
    answer, body = agent.init("raises.handler")
    error = answer["error"]
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "boom at import" in error["errorMessage"]
    assert any("raises.py" in line and "helper" in line for line in error["stackTrace"])
    assert not any("importlib" in line for line in error["stackTrace"])
    assert body == b"importing raises\n"


def test_invoke_before_init(agent: AgentProcess) -> None:
    answer, _, _ = agent.invoke(b"{}")
    assert answer["ok"] is False
    assert answer["error"]["errorType"] == "Runtime.NotInitialized"


def test_second_init_refused(agent: AgentProcess) -> None:
    loaded(agent, "handlers.echo")
    answer, _ = agent.init("handlers.text")
    assert answer["error"]["errorType"] == "Runtime.AlreadyInitialized"
    result = agent.result(b'{"still": "echo"}')
    assert json.loads(result) == {"still": "echo"}


def test_unknown_op_keeps_serving(agent: AgentProcess) -> None:
    answer, _ = agent.call({"op": "frobnicate"})
    assert answer["ok"] is False
    assert answer["error"]["errorType"] == "Runtime.UnknownOperation"
    loaded(agent, "handlers.nothing")


def test_malformed_request_is_answered(agent: AgentProcess) -> None:
    loaded(agent, "handlers.echo")
    answer, _, _ = agent.invoke(b"{}", attempt="first")
    assert answer["ok"] is False
    assert answer["error"]["errorType"] == "Runtime.AgentError"
    assert agent.result(b"[1]") == b"[1]"


# ---------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "text/x+json"],
)
def test_json_in_json_out(agent: AgentProcess, content_type: str) -> None:
    loaded(agent, "handlers.echo")
    event = {"a": [1, 2.5, None, True], "s": "ünïcode"}
    answer, result, logs = agent.invoke(json.dumps(event).encode(), content_type)
    assert answer["ok"] is True
    assert answer["content_type"] == "application/json"
    assert json.loads(result) == event
    assert logs == b""
    assert answer["logs_truncated"] is False
    assert answer["duration_ms"] >= 0


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", None])
def test_non_json_payload_is_bytes(agent: AgentProcess, content_type: str | None) -> None:
    loaded(agent, "handlers.kind")
    result = agent.result(b"{not json}", content_type)
    assert json.loads(result) == {"type": "bytes", "value": "{not json}"}


def test_bytes_result(agent: AgentProcess) -> None:
    loaded(agent, "handlers.echo")
    data = bytes(range(256)) * 10
    answer, result, _ = agent.invoke(data, "application/octet-stream")
    assert answer["content_type"] == "application/octet-stream"
    assert result == data


def test_raw_bytes_result(agent: AgentProcess) -> None:
    loaded(agent, "handlers.raw")
    answer, result, _ = agent.invoke(b"")
    assert answer["content_type"] == "application/octet-stream"
    assert result == b"\x00\x01binary\xff"


def test_str_result(agent: AgentProcess) -> None:
    loaded(agent, "handlers.text")
    answer, result, _ = agent.invoke(b"")
    assert answer["content_type"] == "text/plain; charset=utf-8"
    assert result.decode("utf-8") == "héllo text"


def test_none_result(agent: AgentProcess) -> None:
    loaded(agent, "handlers.nothing")
    answer, result, _ = agent.invoke(b"{}")
    assert answer["ok"] is True
    assert answer["content_type"] == "application/json"
    assert result == b"null"


def test_empty_json_body_is_none(agent: AgentProcess) -> None:
    loaded(agent, "handlers.kind")
    result = agent.result(b"", "application/json")
    assert json.loads(result) == {"type": "NoneType", "value": None}


def test_invalid_json_payload(agent: AgentProcess) -> None:
    loaded(agent, "handlers.echo")
    answer, result, _ = agent.invoke(b"{bad json", "application/json")
    assert answer["ok"] is False
    assert answer["retryable"] is False
    assert answer["error"]["errorType"] == "Runtime.InvalidPayload"
    assert result == b""
    answer, _, _ = agent.invoke(b"\xff\xfe\xfa", "application/json")
    assert answer["error"]["errorType"] == "Runtime.InvalidPayload"


def test_unserialisable_result(agent: AgentProcess) -> None:
    loaded(agent, "handlers.unserialisable")
    answer, _, _ = agent.invoke(b"{}")
    assert answer["ok"] is False
    assert answer["retryable"] is False
    assert answer["error"]["errorType"] == "Runtime.ResultSerializationError"


def test_async_handler(agent: AgentProcess) -> None:
    loaded(agent, "handlers.coroutine")
    result = agent.result(b"{}")
    assert json.loads(result) == {"async": True}


# ------------------------------------------------------------------ errors


def test_handler_exception(agent: AgentProcess) -> None:
    loaded(agent, "handlers.boom")
    answer, _, logs = agent.invoke(b'"x"')
    assert answer["ok"] is False
    assert answer["retryable"] is True
    assert answer["result_len"] == 0
    error = answer["error"]
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "it broke: x"
    trace = error["stackTrace"]
    assert isinstance(trace, list) and all(isinstance(line, str) for line in trace)
    assert len(trace) == 1
    assert "handlers.py" in trace[0] and "in boom" in trace[0]
    assert 'raise ValueError("it broke: " + str(event))' in trace[0]
    assert logs == b"about to fail\n"
    # The agent is still serving.
    answer, _, _ = agent.invoke(b'"y"')
    assert answer["error"]["errorMessage"] == "it broke: y"


@pytest.mark.parametrize(
    ("handler", "error_type"), [("exits", "SystemExit"), ("interrupted", "KeyboardInterrupt")]
)
def test_system_exit_and_interrupt_are_errors(agent: AgentProcess, handler: str, error_type: str) -> None:
    loaded(agent, f"handlers.{handler}")
    for _ in range(2):
        answer, _, _ = agent.invoke(b"{}")
        assert answer["ok"] is False
        assert answer["error"]["errorType"] == error_type


# ----------------------------------------------------------------- context


def test_context(agent: AgentProcess) -> None:
    loaded(agent, "handlers.ctx", function="thumbs", version="abc123", memory_mb=512)
    deadline = int(time.time() * 1000) + 5_000
    result = agent.result(b"{}", request_id="req-42", task_id="task-7", attempt=3, deadline_ms=deadline)
    data = json.loads(result)
    assert data["request_id"] == "req-42"
    assert data["task_id"] == "task-7"
    assert data["function_name"] == "thumbs"
    assert data["function_version"] == "abc123"
    assert data["memory_limit_in_mb"] == 512
    assert data["attempt"] == 3
    assert data["deadline_ms"] == deadline
    assert 3_000 < data["remaining"] <= 5_000


def test_remaining_time_never_negative(agent: AgentProcess) -> None:
    loaded(agent, "handlers.ctx")
    result = agent.result(b"{}", deadline_ms=int(time.time() * 1000) - 1000)
    assert json.loads(result)["remaining"] == 0


# -------------------------------------------------------------------- logs


def test_stdout_and_stderr_interleaved(agent: AgentProcess) -> None:
    loaded(agent, "handlers.interleaved")
    answer, result, logs = agent.invoke(b"{}")
    assert result == b"done"
    assert logs == b"one\ntwo\nthree\nfour\nfive\n"
    assert answer["logs_truncated"] is False
    # Each invocation has its own logs.
    _, _, logs2 = agent.invoke(b"{}")
    assert logs2 == logs


def test_log_limit_keeps_the_tail(agent: AgentProcess) -> None:
    loaded(agent, "handlers.chatty", log_limit=1000)
    answer, result, logs = agent.invoke(json.dumps({"lines": 5000}).encode())
    assert json.loads(result) == 5000
    assert answer["logs_truncated"] is True
    assert len(logs) == 1000
    assert logs.endswith(b"line 4999\n")
    assert b"line 0000" not in logs
    # Under the limit: everything, not truncated.
    answer, _, logs = agent.invoke(json.dumps({"lines": 3}).encode())
    assert answer["logs_truncated"] is False
    assert logs == b"line 0000\nline 0001\nline 0002\n"


def test_default_log_limit(agent: AgentProcess) -> None:
    loaded(agent, "handlers.chatty", log_limit=None)
    answer, _, logs = agent.invoke(json.dumps({"lines": 40_000}).encode())  # 400 KB
    assert answer["logs_truncated"] is True
    assert len(logs) == 256 * 1024
    assert logs.endswith(b"line 39999\n")


# ------------------------------------------------------------------ pickle


def test_pickled_callable(agent: AgentProcess, code_dir: Path) -> None:
    factor = 7

    def multiply(event: Any, context: Any) -> dict[str, Any]:
        print("multiplying")
        return {"product": event["x"] * factor, "request": context.request_id}

    (code_dir / "handler.pkl").write_bytes(cloudpickle.dumps(multiply))
    answer, _ = agent.init("", pickle="handler.pkl")
    assert answer["ok"], answer
    answer, result, logs = agent.invoke(b'{"x": 6}', request_id="r-9")
    assert json.loads(result) == {"product": 42, "request": "r-9"}
    assert logs == b"multiplying\n"


def test_pickle_missing(agent: AgentProcess) -> None:
    answer, _ = agent.init("", pickle="absent.pkl")
    assert answer["error"]["errorType"] == "Runtime.ImportModuleError"


def test_pickle_not_callable(agent: AgentProcess, code_dir: Path) -> None:
    (code_dir / "data.pkl").write_bytes(cloudpickle.dumps({"not": "callable"}))
    answer, _ = agent.init("", pickle="data.pkl")
    assert answer["error"]["errorType"] == "Runtime.HandlerNotFound"


# --------------------------------------------------------------- lifecycle


def test_os_exit_in_handler_closes_the_socket(code_dir: Path) -> None:
    (code_dir / "dies.py").write_text("import os\ndef handler(e, c):\n    os._exit(3)\n")
    proc = AgentProcess(code_dir)
    try:
        loaded(proc, "dies.handler")
        proc.conn.sendall(pack({"op": "invoke", "request_id": "r", "content_type": None}))
        with pytest.raises(EOFError):
            proc.read()
    finally:
        status = proc.close()
    assert status == 3


def test_connect_failure_exits_nonzero(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import runtime.agent.__main__ as agent\n"
        "agent.CONNECT_TIMEOUT_S = 0.05\n"
        "sys.exit(agent.main(['agent', sys.argv[1]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "none.sock")],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert b"cannot connect" in done.stderr


# ------------------------------------------------------------ pure helpers


def test_log_buffer_does_not_split_utf8() -> None:
    buf = agent_main.LogBuffer(5)
    buf.add("ééé".encode())  # 6 bytes: the tail starts inside a character
    data, truncated = buf.getvalue()
    assert truncated is True
    assert data == "éé".encode()
    data.decode("utf-8")


def test_log_buffer_zero_limit() -> None:
    buf = agent_main.LogBuffer(0)
    buf.add(b"abc")
    assert buf.getvalue() == (b"", True)


def test_is_json_type() -> None:
    assert agent_main.is_json_type("application/json")
    assert agent_main.is_json_type(" application/json ; charset=UTF-8")
    assert agent_main.is_json_type("application/problem+json")
    assert not agent_main.is_json_type("application/jsonx")
    assert not agent_main.is_json_type("text/plain")
    assert not agent_main.is_json_type(None)
    assert not agent_main.is_json_type("")


def test_encode_result_rejects_nan() -> None:
    with pytest.raises(ValueError):
        agent_main.encode_result(float("nan"))
    assert agent_main.encode_result(bytearray(b"x")) == (b"x", "application/octet-stream")
