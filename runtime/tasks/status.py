"""Task statuses (contract) and which may follow which."""

from __future__ import annotations

ENQUEUED = "Enqueued"
PROCESSED = "Processed"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
RETRYING = "Retrying"
STOPPING = "Stopping"
STOPPED = "Stopped"
EXPIRED = "Expired"
INVALID = "Invalid"

ALL = (ENQUEUED, PROCESSED, RUNNING, SUCCEEDED, FAILED, RETRYING, STOPPING, STOPPED, EXPIRED, INVALID)
FINAL = frozenset({SUCCEEDED, FAILED, STOPPED, EXPIRED, INVALID})
# A task in one of these may still be picked up by a consumer.
WAITING = frozenset({ENQUEUED, RETRYING})
# What `POST /v1/tasks/{id}/retry` accepts.
REDRIVABLE = frozenset({FAILED, STOPPED, EXPIRED})

# Destination conditions (contract).
SUCCESS = "Success"
RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
STOPPED_CONDITION = "Stopped"
