"""The fnhost Python SDK: deploy functions, invoke them, submit tasks and follow them.

    from fnhost import Client

    with Client() as fn:                      # FNHOST_URL, FNHOST_API_KEY
        fn.deploy("functions/hello")
        print(fn.invoke("hello", {"name": "Ada"}))
        task = fn.submit("hello", {"name": "Grace"})
        print(task.result(timeout=30))

It talks to the HTTP API only and imports nothing of the server.
"""

from fnhost.aio import AsyncClient, AsyncTask
from fnhost.calls import TaskInput
from fnhost.client import Client, Task
from fnhost.errors import (
    BadRequest,
    Conflict,
    FnhostError,
    Forbidden,
    FunctionError,
    InvalidBundle,
    InvalidConfig,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    ServerError,
    TaskTimeout,
    Throttled,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "AsyncClient", "AsyncTask", "BadRequest", "Client", "Conflict", "FnhostError", "Forbidden",
    "FunctionError", "InvalidBundle", "InvalidConfig", "NotFound", "PayloadTooLarge",
    "QuotaExceeded", "ServerError", "Task", "TaskInput", "TaskTimeout", "Throttled",
    "Unauthorized", "Unavailable",
]
