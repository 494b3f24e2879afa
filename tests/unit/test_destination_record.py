"""The destination record (contract): shape, payload encoding, timestamp, conditions."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from runtime.destinations import CONDITIONS, Delivery, build_record, payload_value, timestamp

AT = datetime(2026, 11, 25, 16, 0, 0, 123456, tzinfo=UTC)


def record(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "task_id": "task-1",
        "function": "thumbnail",
        "version": "3f2a9c",
        "condition": "Success",
        "invoke_count": 1,
        "payload": b'{"image": "a.png"}',
        "content_type": "application/json",
        "status_code": 200,
        "function_error": None,
        "result": b'{"ok": true}',
        "result_content_type": "application/json",
        "now": AT,
    }
    fields.update(overrides)
    return build_record(**fields)


def test_conditions_are_the_contract_values() -> None:
    assert CONDITIONS == ("Success", "RetriesExhausted", "EventAgeExceeded", "Stopped")


@pytest.mark.parametrize("condition", ["Success", "RetriesExhausted", "EventAgeExceeded", "Stopped"])
def test_record_shape(condition: str) -> None:
    rec = record(condition=condition, invoke_count=3)
    assert rec == {
        "version": "1.0",
        "timestamp": "2026-11-25T16:00:00.123Z",
        "requestContext": {
            "requestId": "req-1",
            "taskId": "task-1",
            "function": "thumbnail:3f2a9c",
            "condition": condition,
            "approximateInvokeCount": 3,
        },
        "requestPayload": {"image": "a.png"},
        "responseContext": {"statusCode": 200, "functionError": None},
        "responsePayload": {"ok": True},
    }
    # Key order as the contract writes it, and it serialises as is.
    assert list(rec) == [
        "version", "timestamp", "requestContext", "requestPayload", "responseContext", "responsePayload",
    ]
    assert orjson.loads(orjson.dumps(rec)) == rec


@pytest.mark.parametrize("error", ["Unhandled", "Timeout"])
def test_function_error(error: str) -> None:
    failure = b'{"errorType": "ValueError", "errorMessage": "bad", "stackTrace": []}'
    rec = record(condition="RetriesExhausted", function_error=error, result=failure)
    assert rec["responseContext"] == {"statusCode": 200, "functionError": error}
    assert rec["responsePayload"]["errorType"] == "ValueError"


def test_invalid_function_error_raises() -> None:
    with pytest.raises(ValueError, match="functionError"):
        record(function_error="Crashed")


@pytest.mark.parametrize("condition", ["success", "Failed", "", "Expired"])
def test_invalid_condition_raises(condition: str) -> None:
    with pytest.raises(ValueError, match="condition"):
        record(condition=condition)


def test_binary_payload_is_base64() -> None:
    data = bytes(range(256))
    rec = record(payload=data, content_type="application/octet-stream", result=b"\x89PNG",
                 result_content_type="image/png")
    assert rec["requestPayload"] == base64.b64encode(data).decode()
    assert rec["responsePayload"] == base64.b64encode(b"\x89PNG").decode()


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None, "application/xml"])
def test_json_looking_bytes_without_json_type_are_base64(content_type: str | None) -> None:
    rec = record(payload=b'{"a": 1}', content_type=content_type)
    assert rec["requestPayload"] == base64.b64encode(b'{"a": 1}').decode()


def test_invalid_json_with_json_type_is_base64() -> None:
    rec = record(payload=b'{"a": ', result=b"not json", result_content_type="application/json")
    assert rec["requestPayload"] == base64.b64encode(b'{"a": ').decode()
    assert rec["responsePayload"] == base64.b64encode(b"not json").decode()


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON",
     "application/vnd.api+json", "application/problem+json; charset=utf-8"],
)
def test_json_types(content_type: str) -> None:
    assert payload_value(b'[1, "two", null]', content_type) == [1, "two", None]


def test_json_scalars_are_values() -> None:
    assert payload_value(b'"text"', "application/json") == "text"
    assert payload_value(b"42", "application/json") == 42
    assert payload_value(b"null", "application/json") is None


@pytest.mark.parametrize("result", [None, b""])
def test_missing_or_empty_result_is_null(result: bytes | None) -> None:
    rec = record(result=result, result_content_type=None)
    assert rec["responsePayload"] is None
    rec = record(result=result, result_content_type="application/json")
    assert rec["responsePayload"] is None


def test_empty_payload_is_null() -> None:
    assert record(payload=b"", content_type=None)["requestPayload"] is None


def test_timestamp_format() -> None:
    assert timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    # Converted to UTC; a naive time is taken as UTC; microseconds cut to milliseconds.
    plus2 = timezone(timedelta(hours=2))
    assert timestamp(datetime(2026, 1, 2, 5, 4, 5, 999999, tzinfo=plus2)) == "2026-01-02T03:04:05.999Z"
    assert timestamp(datetime(2026, 1, 2, 3, 4, 5, 1000)) == "2026-01-02T03:04:05.001Z"


def test_timestamp_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    rec = record(now=None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["timestamp"])
    at = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
    assert before <= at <= datetime.now(UTC)


def test_delivery_to_dict() -> None:
    d = Delivery(type="webhook", target="http://x/", status="failed", attempts=3, error="HTTP 500",
                 duration_ms=12.34567)
    assert d.to_dict() == {"type": "webhook", "target": "http://x/", "status": "failed", "attempts": 3,
                           "error": "HTTP 500", "duration_ms": 12.346}
    assert orjson.loads(orjson.dumps(d.to_dict()))["status"] == "failed"
