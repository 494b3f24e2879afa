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


# Control message kinds.
CTL_FUNCTION = "function"  # a function changed or was deleted
CTL_HEARTBEAT = "heartbeat"  # a scheduler is alive
CTL_SCHEDULER_DOWN = "scheduler-down"

# AMQP headers on an invocation message.
H_TENANT = "tenant"
H_FUNCTION = "function"
H_REVISION = "revision"
H_REQUEST_ID = "request_id"
H_LOG_TAIL = "log_tail"
H_DEADLINE = "deadline_ms"

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

# Docker.
LABEL_ROLE = "fnhost.role"  # stem-cell container of fnhost
LABEL_SCHEDULER = "fnhost.scheduler"
LABEL_CELL = "fnhost.cell"
CONTAINER_RUN_DIR = "/run/fnhost"
CONTAINER_CODE_DIR = "/var/task"
CONTAINER_USER = "1000:1000"

# MongoDB collections.
C_TENANTS = "tenants"
C_API_KEYS = "api_keys"
C_FUNCTIONS = "functions"
C_VERSIONS = "versions"
BUNDLE_BUCKET = "bundles"
