"""Wire names in one place: exchanges, queues, headers, labels, socket paths."""

from __future__ import annotations

# RabbitMQ.
INVOKE_EXCHANGE = "fnhost.invoke"  # direct; async invocations (per-tenant queues)
SYNC_EXCHANGE = "fnhost.sync"  # direct; routing key = scheduler id
CONTROL_EXCHANGE = "fnhost.control"  # fanout; invalidations and heartbeats
REPLY_TO = "amq.rabbitmq.reply-to"


def sync_queue(scheduler_id: str) -> str:
    return f"fnhost.sync.{scheduler_id}"


def tenant_queue(tenant_id: str) -> str:
    return f"fnhost.t.{tenant_id}"


def function_queue(tenant_id: str, function: str) -> str:
    """A function's dedicated queue (promoted or pinned). Tenant ids hold no dot."""
    return f"fnhost.f.{tenant_id}.{function}"


def function_route(tenant_id: str, function: str) -> str:
    """The routing key of a function's dedicated queue on the invoke exchange."""
    return f"f.{tenant_id}.{function}"


# Control message kinds.
CTL_FUNCTION = "function"  # a function changed or was deleted
CTL_HEARTBEAT = "heartbeat"  # a scheduler is alive
CTL_SCHEDULER_DOWN = "scheduler-down"
# A function moved between its tenant's queue and a dedicated queue of its own.
CTL_ROUTE = "route"
# A queue with a sustained backlog is consumed by more schedulers (or back to the default).
CTL_PARTITIONS = "partitions"
# A tenant's queue has work: its owners consume it (they stop once it is idle).
CTL_WORK = "work"

# AMQP headers on an invocation message.
H_TENANT = "tenant"
H_FUNCTION = "function"
H_REVISION = "revision"
H_REQUEST_ID = "request_id"
H_LOG_TAIL = "log_tail"
H_DEADLINE = "deadline_ms"
H_TASK_ID = "task_id"
H_CREATED_MS = "created_ms"
H_ATTEMPT = "attempt"
H_TASK_MODE = "task_mode"
# How many function destinations led to this task; absent: none (a client submitted it).
H_CHAIN_DEPTH = "chain_depth"
CTL_STOP_TASK = "stop-task"  # stop a running task: the scheduler running it kills its container
CTL_TENANT = "tenant"  # a tenant (and its queue) exists: schedulers start consuming it
# An API key was issued or revoked (`digest`, `tenant`, `revoked`): gateways update
# the digests they hold.
CTL_KEY = "key"
# Never sent: each process's control bus hands it to its own handlers when it is back
# from a broker outage, during which events may have been missed.
CTL_RESYNC = "resync"

# HTTP headers (contract, plus fnhost extensions prefixed X-Fnhost-).
HTTP_INVOCATION_TYPE = "x-invocation-type"
HTTP_FC_INVOCATION_TYPE = "x-fc-invocation-type"
HTTP_TASK_ID = "x-task-id"
HTTP_DELAY = "x-delay-seconds"
HTTP_LOG_TYPE = "x-log-type"
HTTP_REQUEST_ID = "X-Request-Id"
HTTP_FUNCTION_ERROR = "X-Function-Error"
HTTP_LOG_RESULT = "X-Log-Result"
HTTP_START = "X-Fnhost-Start"  # warm | stem | cold
HTTP_CONTAINER = "X-Fnhost-Container"
HTTP_VERSION = "X-Fnhost-Version"
HTTP_TIMINGS = "Server-Timing"  # init (specialisation) and run time in ms
LOG_TAIL_BYTES = 4096
# On every response whose body a function wrote: its content type is the function's
# word, so browsers must neither sniff another type from it nor run it as the API's
# origin (a dashboard on that origin holds keys): `sandbox` gives it an opaque origin.
FUNCTION_OUTPUT_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "sandbox"),
)

# Docker.
LABEL_ROLE = "fnhost.role"  # stem-cell container of fnhost
LABEL_SCHEDULER = "fnhost.scheduler"
LABEL_CELL = "fnhost.cell"
CONTAINER_RUN_DIR = "/run/fnhost"
CONTAINER_CODE_DIR = "/var/task"
# Functions run as a uid and gid that no host account has. Low ids (1000 ...) belong to
# people and services on the host; 1879048192-2147352575 is left unused by convention:
# above the subordinate ids useradd hands out (100000-600100000) and the container
# ranges of systemd-nspawn (524288-1879048191), below systemd's foreign range and 2^31
# (the largest id runc takes; tools reading ids as signed 32-bit numbers fail past it).
CONTAINER_IDS = range(1_879_048_192, 2_147_352_576)
CONTAINER_UID = 1_900_000_000
CONTAINER_GID = 1_900_000_000
CONTAINER_USER = f"{CONTAINER_UID}:{CONTAINER_GID}"

# MongoDB collections.
C_TENANTS = "tenants"
C_API_KEYS = "api_keys"
C_FUNCTIONS = "functions"
C_VERSIONS = "versions"
BUNDLE_BUCKET = "bundles"

# Destinations (where an async task's record goes: `on_success`, `on_failure`).
HTTP_DEST_TASK_ID = "X-Fnhost-Task-Id"  # on a webhook POST, so a receiver can drop repeats
HTTP_DEST_CONDITION = "X-Fnhost-Condition"
H_CONDITION = "condition"  # AMQP header on a record published to a queue destination


def destination_queue(tenant_id: str, name: str) -> str:
    """A queue destination, always inside the tenant's namespace. Tenant ids hold no dot,
    so the prefix cannot be forged by a queue name."""
    return f"fnhost.d.{tenant_id}.{name}"
