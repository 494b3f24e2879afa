"""The Celery baseline of bench/async_bench.py: one no-op task, like functions/noop.

bench/async_bench.py starts the worker itself, configured through the environment:

    BENCH_CELERY_BROKER      amqp://guest:guest@127.0.0.1:5672/fnhost-bench-celery
    BENCH_CELERY_BACKEND     mongodb://127.0.0.1:27017/fnhost_bench_celery, or rpc://
    BENCH_CELERY_QUEUE       the task queue (one per run and variant)
    BENCH_CELERY_QUEUE_TYPE  quorum (durable, like fnhost's tenant queues) or classic
    BENCH_CELERY_CONFIRM     1: the producer waits for the broker's publisher confirm
    BENCH_CELERY_TRACK_STARTED  1: task_track_started (a STARTED write before each task runs)

    cd bench && ../.venv/bin/celery -A celery_app worker --concurrency 2 --pool prefork \
        --without-gossip --without-mingle --without-heartbeat
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

TASK = "bench.noop"


def make_app(broker: str, backend: str, queue: str, queue_type: str, confirm: bool,
             track_started: bool = False) -> Celery:
    """A Celery app with late acks, persistent messages and a result backend; with
    `track_started` the worker also stores each task's STARTED state before running it."""
    app = Celery("fnhost_bench", broker=broker, backend=backend)
    app.conf.update(
        task_acks_late=True,
        task_default_queue=queue,
        task_queues=[
            Queue(queue, routing_key=queue, durable=True, queue_arguments={"x-queue-type": queue_type}),
        ],
        task_default_delivery_mode="persistent",
        broker_transport_options={"confirm_publish": confirm},
        broker_connection_retry_on_startup=True,
        # A quorum queue refuses a global QoS; Celery then sets a per-consumer prefetch.
        worker_detect_quorum_queues=True,
        # No remote-control (pidbox) queues.
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        task_track_started=track_started,
    )
    if backend.startswith("mongodb://"):
        app.conf.mongodb_backend_settings = {"taskmeta_collection": f"taskmeta_{queue}"}

    @app.task(name=TASK)
    def noop(event: object = None) -> None:
        """Does nothing and returns None."""
        return None

    return app


app = make_app(
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672/fnhost-bench-celery"),
    backend=os.environ.get("BENCH_CELERY_BACKEND", "rpc://"),
    queue=os.environ.get("BENCH_CELERY_QUEUE", "bench-noop"),
    queue_type=os.environ.get("BENCH_CELERY_QUEUE_TYPE", "quorum"),
    confirm=os.environ.get("BENCH_CELERY_CONFIRM", "1") == "1",
    track_started=os.environ.get("BENCH_CELERY_TRACK_STARTED", "0") == "1",
)
