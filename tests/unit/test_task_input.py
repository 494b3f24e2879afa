"""gateway/task_input.py: task ids, delays, and the body of a batch submission."""

from __future__ import annotations

import json

import orjson
import pytest

from gateway.task_input import Entry, delay_header, parse_batch, task_id
from runtime.errors import BadRequest, Conflict


def body(tasks: object, **extra: object) -> bytes:
    # Python writes float("inf") as Infinity, which is no JSON: as 1e999, a number past
    # a float's range.
    return json.dumps({"tasks": tasks, **extra}).replace("Infinity", "1e999").encode()


def test_task_id_rules() -> None:
    assert task_id(None, "X-Task-Id") is None
    assert task_id("order-42:a.b_c", "X-Task-Id") == "order-42:a.b_c"
    assert task_id("x" * 128, "X-Task-Id") == "x" * 128
    for bad in ("", "x" * 129, "a b", "a/b", "é", "a\n", "a\x00"):
        with pytest.raises(BadRequest) as err:
            task_id(bad, "X-Task-Id")
        assert err.value.field == "X-Task-Id"


def test_delay_header_rules() -> None:
    assert delay_header(None, "X-Delay-Seconds") == 0.0
    assert delay_header("2.5", "X-Delay-Seconds") == 2.5
    assert delay_header("86400", "X-Delay-Seconds") == 86400.0
    for bad in ("-1", "86401", "abc", "", "nan", "inf", "-inf"):
        with pytest.raises(BadRequest) as err:
            delay_header(bad, "X-Delay-Seconds")
        assert err.value.field == "X-Delay-Seconds"
        assert "X-Delay-Seconds must be a number from 0 to 86400" in err.value.message


def test_valid_entries_in_order() -> None:
    entries = parse_batch(body([
        {"payload": {"n": 1}},
        {"payload": [1, "two", None], "task_id": "t-1", "delay_s": 5},
        {"task_id": "t-2", "delay_s": 0.25},
        {"payload": "text"},
        {},
    ]), 100)
    assert entries == [
        Entry(b'{"n":1}', None, 0.0),
        Entry(b'[1,"two",null]', "t-1", 5.0),
        Entry(b"null", "t-2", 0.25),
        Entry(b'"text"', None, 0.0),
        Entry(b"null", None, 0.0),
    ]


def test_payload_kept_as_sent() -> None:
    payload = {"big": 2**63 - 1, "neg": -(2**63), "float": 1.5, "text": "héllo \u2603", "deep": [[[1]]]}
    [entry] = parse_batch(body([{"payload": payload}]), 1)
    assert isinstance(entry, Entry)
    assert orjson.loads(entry.payload) == payload


def test_bad_entries_are_their_own_errors() -> None:
    entries = parse_batch(body([
        {"payload": 1},
        {"task_id": "has space"},
        {"task_id": 7},
        {"delay_s": -1},
        {"delay_s": 86401},
        {"delay_s": "5"},
        {"delay_s": True},
        {"delay_s": 10**400},
        {"priority": 3},
        "not an object",
        {"payload": 2**64},  # an integer JSON allows and no JSON encoder here keeps
        {"payload": [1.5, float("inf")]},  # sent as 1e999: not read as infinity (null)
        {"payload": 2},
    ]), 100)
    assert isinstance(entries[0], Entry) and isinstance(entries[-1], Entry)
    fields = []
    for entry in entries[1:-1]:
        assert isinstance(entry, BadRequest), entry
        assert entry.status == 400 and entry.message
        fields.append(entry.field)
    assert fields == [
        "tasks[1].task_id", "tasks[2].task_id", "tasks[3].delay_s", "tasks[4].delay_s",
        "tasks[5].delay_s", "tasks[6].delay_s", "tasks[7].delay_s", "tasks[8].priority",
        "tasks[9]", "tasks[10].payload", "tasks[11].payload",
    ]


def test_deep_payload_is_refused_by_name() -> None:
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    [entry] = parse_batch(body([{"payload": deep}]), 1)
    assert isinstance(entry, BadRequest) and entry.field == "tasks[0].payload"


def test_repeated_task_id_later_one_conflicts() -> None:
    entries = parse_batch(body([
        {"task_id": "a"}, {"task_id": "b"}, {"task_id": "a"}, {"task_id": "bad id"}, {"task_id": "a"},
    ]), 100)
    assert isinstance(entries[0], Entry) and isinstance(entries[1], Entry)
    for i in (2, 4):
        conflict = entries[i]
        assert isinstance(conflict, Conflict) and conflict.status == 409, conflict
        assert conflict.field == f"tasks[{i}].task_id"
        assert "tasks[0]" in conflict.message
    assert isinstance(entries[3], BadRequest) and entries[3].status == 400


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b'"tasks"', b"null", b'{"tasks": []}', b'{"tasks": {}}',
    b'{"tasks": null}', b"{}", b'{"tasks": [{}], "other": 1}', b'{"tasks": [NaN]}',
    b'{"tasks": [{"payload": Infinity}]}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
])
def test_malformed_body_is_a_400_for_the_request(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_batch(raw, 100)


def test_bound_on_tasks() -> None:
    assert len(parse_batch(body([{}] * 3), 3)) == 3
    with pytest.raises(BadRequest) as err:
        parse_batch(body([{}] * 4), 3)
    assert err.value.field == "tasks" and "at most 3" in err.value.message


def test_field_names_in_errors_are_short_and_encodable() -> None:
    """An unknown field's name goes back in the error: never a lone surrogate (the answer
    could not be encoded) nor a megabyte of name."""
    raw = b'{"tasks": [{"\\ud800x": 1}, {"' + b"k" * 10_000 + b'": 1}]}'
    surrogate, long = parse_batch(raw, 10)
    for error in (surrogate, long):
        assert isinstance(error, BadRequest)
        assert len(error.message) < 200 and len(error.field or "") < 100
        assert error.to_json_bytes()  # encodable
    assert isinstance(surrogate, BadRequest) and surrogate.field == "tasks[0].\\ud800x"
    with pytest.raises(BadRequest) as err:
        parse_batch(b'{"tasks": [{}], "\\udfff": 1}', 10)
    assert err.value.to_json_bytes() and err.value.field == "\\udfff"
