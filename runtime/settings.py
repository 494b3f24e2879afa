"""The one settings object (FNHOST_* environment variables), built once at start-up."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.webhook_policy import Network, parse_networks

MB = 1 << 20
METRICS_TOKEN_MIN = 16  # characters of FNHOST_METRICS_TOKEN, so that it cannot be guessed


class SettingsError(Exception):
    """A setting with a bad value; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FNHOST_", extra="ignore", frozen=True)

    # Where things are.
    bind: str = "127.0.0.1:8080"
    # FNHOST_GATEWAY_SERVER: the gateway's HTTP server: uvicorn (with httptools, the
    # faster) or hypercorn.
    gateway_server: Literal["uvicorn", "hypercorn"] = "uvicorn"
    admin_key: SecretStr | None = None
    # FNHOST_METRICS_TOKEN: a bearer token that may read /metrics (so may the admin key);
    # for a Prometheus scraper, which then needs no admin rights.
    metrics_token: SecretStr | None = None
    cluster_secret: SecretStr | None = None
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    mongo_url: str | None = None
    mongo_db: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,60}$")] = "fnhost"
    embedded_mongo_port: Annotated[int, Field(ge=1, le=65535)] = 27017
    # FNHOST_MONGO_MAX_IDLE_S: a pooled MongoDB connection idle this long is closed by the
    # client rather than reused; below the embedded server's idle limit (300 s), which
    # closes idle connections from its side and so failed the first write after a pause.
    mongo_max_idle_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    data_dir: Path = Path("/var/lib/fnhost")
    log_level: Annotated[str, Field(pattern=r"^(?i:debug|info|warning|error)$")] = "info"

    # Scheduler and warm pool.
    scheduler_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0][:48] or "scheduler"
    )
    scheduler_bind: str = "127.0.0.1:0"
    scheduler_advertise: str | None = None
    runtime_image: str = "fnhost/python3.11"
    # FNHOST_STEM_CELLS: the stem cells a scheduler starts with, enough for the first
    # burst of a function at 20 at once: an idle one costs memory (its limit counts in
    # the memory budget, about 12 MB used), not CPU.
    stem_cells: Annotated[int, Field(ge=0, le=256)] = 20
    # FNHOST_MAX_CONTAINERS: live containers of a scheduler (stem cells included); 0: from
    # the host, one per 64 MB of its container memory budget (runtime/pool/memory.py),
    # since an idle container costs memory, not CPU. The memory budget bounds them too.
    max_containers: Annotated[int, Field(ge=0, le=4096)] = 0
    keep_alive_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # FNHOST_TENANT_HOST_SHARE: the most of a scheduler's container memory budget one
    # tenant holds, even with no other tenant waiting (1: the whole host). While others
    # wait, a tenant over an equal share gives way whatever this is (runtime/pool/share.py).
    tenant_host_share: Annotated[float, Field(gt=0, le=1)] = 1.0
    container_cpus: Annotated[float, Field(gt=0, le=64)] = 1.0
    container_pids: Annotated[int, Field(ge=16, le=65536)] = 256
    container_tmpfs_mb: Annotated[int, Field(ge=1, le=65536)] = 64
    stem_memory_mb: Annotated[int, Field(ge=64, le=16384)] = 128
    # FNHOST_STEM_CELLS_MIN, FNHOST_STEM_CELLS_MAX: the stem pool sizes itself between
    # these (FNHOST_STEM_CELLS is where it starts; 0 turns stem cells off): it grows to
    # a recent burst's concurrency and to a deployed function's max_concurrency, and
    # shrinks by one cell per FNHOST_STEM_CELLS_IDLE_S without a claim.
    stem_cells_min: Annotated[int, Field(ge=0, le=256)] = 4
    stem_cells_max: Annotated[int, Field(ge=0, le=256)] = 32
    stem_cells_idle_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # FNHOST_HOST_MEMORY_MB: the memory limits of a scheduler's live containers (stem
    # cells included) add up to at most this; 0: 75 % of the host's memory.
    host_memory_mb: Annotated[int, Field(ge=0, le=1 << 30)] = 0
    # FNHOST_SLOW_START_MS: a lease whose Docker engine calls (container start, memory
    # resize) took longer is marked slow, a sign of a host under pressure.
    slow_start_ms: Annotated[float, Field(gt=0, le=600_000)] = 1000.0
    container_start_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    # FNHOST_CONTAINER_LOG_BYTES: what Docker keeps of a container's own output (what a
    # function writes to its file descriptors 1 and 2 directly, or from a thread outside
    # an invocation; an invocation's captured logs are apart): one json-file log of at
    # most this size per container, set in the create call; 0: Docker keeps none.
    container_log_bytes: Annotated[int, Field(ge=0, le=1 << 30)] = 1 * MB
    # FNHOST_FREEZE_IDLE: how a warm container is frozen between invocations, so that
    # threads its function left running use no CPU while it idles: `cgroup` writes its
    # cgroup's freezer file (v1 or v2; microseconds), `docker` pauses it through the
    # engine (a round trip of ~10 ms to thaw), `auto` the first where the freezer file
    # is found and writable, else the second; `off` never freezes. Stem cells run no
    # function code and are never frozen.
    freeze_idle: Literal["auto", "cgroup", "docker", "off"] = "auto"
    # FNHOST_FREEZE_AFTER_S: a warm container idle this long is frozen (back-to-back
    # invocations do not pay for it); it is thawed when it is claimed.
    freeze_after_s: Annotated[float, Field(ge=0, le=3600)] = 0.1
    docker_threads: Annotated[int, Field(ge=1, le=256)] = 8
    sync_concurrency: Annotated[int, Field(ge=1, le=100000)] = 1024
    heartbeat_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # FNHOST_CONTROL_MAX_AGE_S: a control event (heartbeat, key revoked ...) stamped
    # further than this from the receiver's clock is dropped: a replay, or a host
    # whose clock is off.
    control_max_age_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # FNHOST_KEY_REFRESH_S: how often a gateway reloads every API key digest from the
    # database, the backstop of the control events that keep its set current.
    key_refresh_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # FNHOST_AUTH_FAILURES_PER_S, FNHOST_AUTH_HOLD_S: a source address past this many
    # unknown API keys within a second has each further 401 held this long (0: never),
    # so that a flood of made-up keys slows down to its connections' count a second.
    auth_failures_per_s: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    auth_hold_s: Annotated[float, Field(ge=0, le=60)] = 1.0

    # Limits.
    sync_payload_limit: Annotated[int, Field(ge=1024)] = 6 * MB
    async_payload_limit: Annotated[int, Field(ge=1024)] = 1 * MB
    # FNHOST_BATCH_MAX_TASKS: tasks one batch submission may carry (POST
    # /v1/functions/{name}/invocations/batch); its whole body is bounded by
    # FNHOST_ASYNC_PAYLOAD_LIMIT.
    batch_max_tasks: Annotated[int, Field(ge=1, le=10000)] = 100
    bundle_max_bytes: Annotated[int, Field(ge=1024)] = 50 * MB
    bundle_max_unpacked_bytes: Annotated[int, Field(ge=1024)] = 250 * MB
    bundle_max_entries: Annotated[int, Field(ge=1)] = 10000
    # FNHOST_BUNDLE_VERSIONS_KEPT: a function's newest uploads whose bundles stay in
    # GridFS (its current version always does); older ones are collected at the next
    # upload, and all of a deleted function's at once. A queued task runs the version
    # current when it is dispatched, so no task needs a collected bundle.
    bundle_versions_kept: Annotated[int, Field(ge=1, le=1000)] = 5
    # FNHOST_BUNDLE_COLLECT_GRACE_S: a bundle stored or re-uploaded this recently is never
    # collected: an upload stores its bundle before its version references it, and a
    # scheduler may still hold a function record from just before an update.
    bundle_collect_grace_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # FNHOST_BUNDLE_SWEEP_S: how often a scheduler deletes the bundles in GridFS that no
    # function or kept version references (the backstop of collection at upload/delete).
    bundle_sweep_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    # FNHOST_BUNDLE_CACHE_MB: the unpacked bundles on a scheduler's disk add up to at most
    # this; past it the least recently used are deleted, except those of versions with
    # a live container (which may then keep it over the bound).
    bundle_cache_mb: Annotated[int, Field(ge=1, le=1 << 30)] = 2048
    # FNHOST_UPLOADS_CONCURRENT: bundle uploads (PUT /v1/functions/{name}) one gateway
    # reads at once; another waits up to FNHOST_UPLOADS_WAIT_S for its turn, then gets
    # 503 with Retry-After. An upload is spooled to a temporary file (TMPDIR), never
    # held whole in memory.
    uploads_concurrent: Annotated[int, Field(ge=1, le=1000)] = 4
    uploads_wait_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # FNHOST_LOG_LIMIT_BYTES: an invocation's captured logs, keeping the tail; at most
    # 8 MB so that a task record (logs and up to 1 MB of result) stays below MongoDB's
    # 16 MB document limit. The scheduler cuts what an agent sends beyond it.
    log_limit_bytes: Annotated[int, Field(ge=4096, le=8 * MB)] = 256 * 1024
    # FNHOST_RESULT_LIMIT_BYTES: a handler's return value, serialised; a larger one is a
    # function error (Runtime.ResponseSizeTooLarge), whatever the agent reports. At most
    # 8 MB: a destination record carries the result (in base64 when it is not JSON).
    result_limit_bytes: Annotated[int, Field(ge=1024, le=8 * MB)] = 6 * MB
    sync_wait_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # FNHOST_DISCARD_BODY_MAX_BYTES, FNHOST_DISCARD_BODY_TIMEOUT_S: a request answered
    # before its body was read (401, 404, 413 ...) has the rest of its body read and
    # dropped, up to these bounds, so that the client can read the answer.
    discard_body_max_bytes: Annotated[int, Field(ge=0)] = 128 * MB
    discard_body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    # Destinations (`on_success` / `on_failure` of async invocations).
    # FNHOST_WEBHOOK_TIMEOUT_S: limit of one webhook POST, from connecting to the whole answer.
    webhook_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    # FNHOST_WEBHOOK_RETRY_ATTEMPTS: attempts in all for a webhook or queue destination.
    webhook_retry_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # FNHOST_WEBHOOK_BACKOFF_S: wait before the second attempt; it doubles after each one.
    webhook_backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    # FNHOST_WEBHOOK_MAX_CONNECTIONS: size of the one connection pool all webhooks share.
    webhook_max_connections: Annotated[int, Field(ge=1, le=10000)] = 100
    # FNHOST_WEBHOOK_ALLOWED_NETWORKS: comma-separated CIDRs webhooks may reach although
    # they are loopback, private, link-local or reserved (runtime/webhook_policy.py);
    # empty: public addresses only.
    webhook_allowed_networks: str = ""
    # FNHOST_DESTINATION_PUBLISH_TIMEOUT_S: limit of one publish to a queue destination
    # (until the broker confirms it) and of one submit to a function destination.
    destination_publish_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # FNHOST_DESTINATION_INLINE_S: a finished task's record gets one attempt of at most
    # this long before its queue message is acknowledged (a function destination's
    # submit keeps its own limit); if it fails or runs out, the outbox delivers it later.
    destination_inline_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # FNHOST_DESTINATION_CIRCUIT_S: after an attempt to a destination failed or timed
    # out, its next records skip the inline attempt for this long: straight to the outbox.
    destination_circuit_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # FNHOST_DESTINATION_SLOW_S: while an inline attempt to a destination has waited this
    # long, its next records skip the inline attempt too (they would likely wait as long).
    destination_slow_s: Annotated[float, Field(gt=0, le=60)] = 0.25
    # FNHOST_DESTINATION_CHAIN_MAX: function destinations in a row (a task's destination
    # submits a task whose destination submits ...): the one past this is refused and
    # recorded as a failed delivery, so a function whose destination is itself stops.
    destination_chain_max: Annotated[int, Field(ge=0, le=1000)] = 8
    # FNHOST_OUTBOX_CONCURRENCY: outbox attempts in flight at once on one scheduler.
    outbox_concurrency: Annotated[int, Field(ge=1, le=10000)] = 32
    # FNHOST_OUTBOX_PER_DESTINATION: of those, to one destination of a tenant (a dead one
    # cannot take all): a webhook's host (scheme, host and port, whatever its path and
    # query), a queue, a function.
    outbox_per_destination: Annotated[int, Field(ge=1, le=10000)] = 8
    # FNHOST_OUTBOX_TENANT_SLOTS: of those, for one tenant's records; 0: a quarter of
    # FNHOST_OUTBOX_CONCURRENCY (at least 1). Records past a cap wait for a slot without
    # using an attempt, and when slots are scarce the tenants take turns.
    outbox_tenant_slots: Annotated[int, Field(ge=0, le=10000)] = 0

    # Asynchronous tasks.
    task_retention_s: Annotated[float, Field(ge=60)] = 7 * 86400
    # FNHOST_EXPIRY_SWEEP_S: how often a scheduler deletes records past their retention.
    expiry_sweep_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    async_prefetch: Annotated[int, Field(ge=1, le=10000)] = 64
    timer_poll_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    queue_owners: Annotated[int, Field(ge=1, le=64)] = 2
    # FNHOST_QUEUE_OWNERS_MAX, FNHOST_PARTITION_BACKLOG, FNHOST_PARTITION_AFTER_S: a queue
    # with at least PARTITION_BACKLOG messages waiting for PARTITION_AFTER_S gets one more
    # consuming scheduler, up to QUEUE_OWNERS_MAX; empty for as long, back to QUEUE_OWNERS.
    queue_owners_max: Annotated[int, Field(ge=1, le=256)] = 8
    # FNHOST_QUEUE_IDLE_S: an owner stops consuming a tenant's queue after this long
    # with no message and no work hint; FNHOST_QUEUE_SWEEP_S: how often it reads the
    # depth of the owned queues it does not consume (the backstop of the hints).
    queue_idle_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    queue_sweep_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    partition_backlog: Annotated[int, Field(ge=1)] = 1000
    partition_after_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # FNHOST_SHUTDOWN_GRACE_S: on SIGTERM a scheduler takes no new task and waits this
    # long for the ones in hand; those still running then go back to their queue.
    shutdown_grace_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # FNHOST_RUNNING_WRITE_DELAY_S: a task's Running status is written once it has run
    # this long; a shorter task's Processed and Running go with its outcome, one write.
    running_write_delay_s: Annotated[float, Field(ge=0, le=60)] = 0.2
    # Back-pressure on async submissions (runtime/flow/backpressure.py).
    # FNHOST_BACKLOG_MESSAGES, FNHOST_BACKLOG_AGE_S: a queue (a tenant's, or a function's
    # own) with more messages waiting than this, or whose oldest waiting message is
    # estimated older than this, is past its threshold: new async submissions to it get
    # 429, the likelier the larger their producer's share of the backlog.
    backlog_messages: Annotated[int, Field(ge=1, le=100_000_000)] = 5000
    backlog_age_s: Annotated[float, Field(gt=0, le=604800)] = 300.0
    # FNHOST_BACKLOG_WAIT_S, FNHOST_BACKLOG_BURST: a queue whose backlog is more than
    # BACKLOG_WAIT_S of its consumers' work (depth over its recent drain rate: the wait
    # a message submitted now can expect) is past its threshold too, once a gateway has
    # put more than BACKLOG_BURST messages in it since it was last empty. Unlike the two
    # above, a producer several times faster than its function reaches it within a
    # second or two, even from an empty queue; a burst of up to BACKLOG_BURST is never
    # refused for it, however long its function takes to work it off.
    backlog_wait_s: Annotated[float, Field(gt=0, le=86400)] = 5.0
    backlog_burst: Annotated[int, Field(ge=0, le=100_000_000)] = 600
    # FNHOST_BACKLOG_POLL_S: how often a gateway reads the depth of the queues it
    # submitted to lately (a passive declare each, off the request path).
    backlog_poll_s: Annotated[float, Field(gt=0, le=60)] = 0.5

    # Per-tenant quotas (runtime/quotas.py): the defaults of every tenant; the admin
    # overrides them per tenant (PATCH /v1/tenants/{id} {"quotas": {...}}).
    # FNHOST_QUOTA_FUNCTIONS: functions a tenant may have.
    quota_functions: Annotated[int, Field(ge=0)] = 1000
    # FNHOST_QUOTA_BUNDLE_BYTES: bytes of the bundles stored for the tenant (each content
    # hash once); an upload that would pass it is refused with 413.
    quota_bundle_bytes: Annotated[int, Field(ge=0)] = 10 * 1024 * MB
    # FNHOST_QUOTA_VERSIONS: versions (uploads of new code) the store keeps for a tenant.
    quota_versions: Annotated[int, Field(ge=0)] = 10_000
    # FNHOST_QUOTA_QUEUED_TASKS: a tenant's tasks not yet started: waiting in its queues,
    # delayed, or waiting for a retry or a resume.
    quota_queued_tasks: Annotated[int, Field(ge=0)] = 1_000_000
    # FNHOST_QUOTA_TASK_RECORD_BYTES: payload, result and log bytes of the task records
    # the tenant's tasks keep for FNHOST_TASK_RETENTION_S.
    quota_task_record_bytes: Annotated[int, Field(ge=0)] = 20 * 1024 * MB
    # FNHOST_QUOTA_QUEUE_DESTINATIONS: distinct queue destinations named by the tenant's
    # functions (each is a queue on the broker).
    quota_queue_destinations: Annotated[int, Field(ge=0)] = 100
    # FNHOST_QUOTA_REFRESH_S: how often a gateway reads the usage of the tenants that
    # submitted to it lately (its view between readings is its own count on top).
    quota_refresh_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # FNHOST_DESTINATION_QUEUE_MAX_MESSAGES: a queue destination holds at most about this
    # many records (its x-max-length; a quorum queue takes one more before it refuses);
    # a record published to a full one is refused: retried, then a failed delivery.
    destination_queue_max_messages: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000

    # Dedicated-queue promotion: a function that holds up its tenant's queue gets a
    # queue of its own (see runtime/scheduler/flow.py for the signals).
    # FNHOST_PROMOTE_WAITING, FNHOST_PROMOTE_WAIT_S: promoted when this many of its
    # messages wait behind its dispatch window, or the oldest has waited this long.
    promote_waiting: Annotated[int, Field(ge=1, le=10000)] = 8
    promote_wait_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # FNHOST_PROMOTE_INFLIGHT, FNHOST_PROMOTE_SHARE: promoted when it holds this many of
    # its tenant's messages in hand and this share of the consumer's prefetch, or of
    # the tenant's messages in hand (or recent run time) while another of the tenant's
    # functions is active.
    promote_inflight: Annotated[int, Field(ge=1, le=100000)] = 16
    promote_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    # FNHOST_PROMOTE_BURST: a gateway that accepts this many submissions of one function
    # to its tenant's queue within a second promotes it at once, before a scheduler holds
    # a backlog of it; 0: FNHOST_PROMOTE_SHARE of FNHOST_ASYNC_PREFETCH (at least
    # FNHOST_PROMOTE_INFLIGHT), what a scheduler would promote it for.
    promote_burst: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    # FNHOST_DEMOTE_AFTER_S: a promoted function idle this long with its queue empty
    # goes back to its tenant's queue, and its queue is deleted.
    demote_after_s: Annotated[float, Field(gt=0, le=86400)] = 60.0

    @field_validator("bind", "scheduler_bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("expected HOST:PORT, for example 127.0.0.1:8080")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < METRICS_TOKEN_MIN:
            raise ValueError(f"must be at least {METRICS_TOKEN_MIN} characters")
        return value

    @field_validator("stem_cells_max")
    @classmethod
    def _check_stem_cells_max(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("stem_cells_min")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least FNHOST_STEM_CELLS_MIN ({minimum})")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        return ",".join(str(net) for net in parse_networks(value))

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("expected an amqp:// or amqps:// URL")
        return value

    @field_validator("mongo_url")
    @classmethod
    def _check_mongo(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("expected a mongodb:// URL")
        return value

    @property
    def webhook_networks(self) -> tuple[Network, ...]:
        """FNHOST_WEBHOOK_ALLOWED_NETWORKS, parsed."""
        return parse_networks(self.webhook_allowed_networks)

    @property
    def cluster_token(self) -> str:
        """The root of the cluster's keys (cluster_key), from the cluster secret or admin key."""
        secret = self.cluster_secret or self.admin_key
        if secret is None:
            raise SettingsError(
                "FNHOST_CLUSTER_SECRET: set it (or FNHOST_ADMIN_KEY) on gateways and schedulers"
            )
        return hashlib.sha256(f"fnhost-cluster:{secret.get_secret_value()}".encode()).hexdigest()

    def cluster_key(self, purpose: str) -> bytes:
        """A key of its own for each use of the cluster secret (signing control
        events, the sync hop's handshake): never sent, only used for HMACs."""
        return hmac.new(self.cluster_token.encode(), f"fnhost {purpose}".encode(), hashlib.sha256).digest()

    @property
    def cluster_id(self) -> str:
        """A public name of the cluster: schedulers and gateways ignore other clusters'
        heartbeats on a shared broker."""
        return hashlib.sha256(f"id:{self.cluster_token}".encode()).hexdigest()[:16]

    @property
    def effective_mongo_url(self) -> str:
        # The embedded MongoDB-wire server spends about a third of its time on the
        # bookkeeping of retryable writes; fnhost's writes are safe to repeat at its
        # own level (at-least-once), so it does without them there.
        return self.mongo_url or (
            f"mongodb://127.0.0.1:{self.embedded_mongo_port}/?retryWrites=false"
        )


def load_settings(**overrides: object) -> Settings:
    """Build the settings; a bad value raises SettingsError naming the FNHOST_ variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            value = os.environ.get(f"FNHOST_{field.upper()}")
            shown = f" (got {value!r})" if value is not None else ""
            lines.append(f"FNHOST_{field.upper()}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
