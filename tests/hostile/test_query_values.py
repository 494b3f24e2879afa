"""Query values a caller makes up get a 400 in the error format, never a 500: times
past what a date holds, before the epoch or near the end of the calendar, huge
limits, forged cursors."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.harness import assert_error, deploy, submit_event, wait_task

BAD_TIMES = [
    "99999999999999999999",  # epoch seconds past a date's range
    "1" + "0" * 400,  # past a float's range (inf)
    "999999999999.5",  # year 33658
    "0001-01-01T00:00:00",  # before the epoch: no task is older
    "0001-01-02",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999",  # a millisecond more does not fit in a date
    "nan",
    "2026-13-01",
]


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("value", BAD_TIMES)
def test_out_of_range_times_are_400(tenant: httpx.Client, field: str, value: str) -> None:
    r = tenant.get("/v1/tasks", params={field: value})
    assert_error(r, 400, "bad_request", field)


@pytest.mark.parametrize("value", ["99999999999999999999", "1" * 5000, "-1", "0", "501", "1e3",
                                   "٣", "+5", " 5"])
def test_bad_limits_are_400(tenant: httpx.Client, value: str) -> None:
    assert_error(tenant.get("/v1/tasks", params={"limit": value}), 400, "bad_request", "limit")


def cursor(micros: object, key: object) -> str:
    return base64.urlsafe_b64encode(json.dumps([micros, key]).encode()).decode()


@pytest.mark.parametrize("value", [
    cursor(10**30, "k"), cursor(-(10**30), "k"), cursor(-1, "k"), cursor(253402300799999999, "k"),
    cursor(1_700_000_000_000_000, {"$gt": ""}), cursor("x", "k"), "not base64 !", "e30=",
])
def test_forged_cursors_are_400(tenant: httpx.Client, value: str) -> None:
    assert_error(tenant.get("/v1/tasks", params={"cursor": value}), 400, "bad_request", "cursor")


def test_times_in_range_still_list(tenant: httpx.Client) -> None:
    assert deploy(tenant, "listed", "hello").status_code == 201
    r = submit_event(tenant, "listed", {"name": "x"})
    assert r.status_code == 202, r.text
    wait_task(tenant, r.headers["x-task-id"])
    for since, until in [("0", None), ("1970-01-01T00:00:00Z", None),
                         ("0", "8999-01-01T00:00:00Z"), (None, "1970-01-02")]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        r = tenant.get("/v1/tasks", params=params)
        assert r.status_code == 200, (params, r.text)
        tasks = r.json()["tasks"]
        expected = 0 if until == "1970-01-02" else 1
        assert len(tasks) == expected, (params, tasks)
