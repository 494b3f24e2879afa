"""The quota rules (runtime/quotas.py): defaults, overrides, the checks' answers."""

from __future__ import annotations

import pytest

from runtime import quotas as q
from runtime.errors import BadRequest, QuotaExceeded
from runtime.models import FunctionConfig
from runtime.settings import Settings


def test_defaults_come_from_the_settings_and_overrides_win() -> None:
    settings = Settings(quota_functions=7, quota_queue_destinations=2)
    default = q.defaults(settings)
    assert set(default) == set(q.NAMES)
    assert default["functions"] == 7 and default["queue_destinations"] == 2
    mine = q.effective(default, {"functions": 1, "unknown": 5, "versions": "x"})
    assert mine == {**default, "functions": 1}


@pytest.mark.parametrize("body", [None, [], {}, {"disk": 1}, {"functions": -1},
                                  {"functions": 1.5}, {"functions": True}, {"functions": "3"},
                                  {"functions": 1 << 63}])
def test_bad_overrides_are_400(body: object) -> None:
    with pytest.raises(BadRequest):
        q.parse_overrides(body)


def test_overrides_set_or_reset() -> None:
    assert q.parse_overrides({"functions": 0, "queued_tasks": None}) == {
        "functions": 0, "queued_tasks": None}


def test_a_count_is_429_once_used_up() -> None:
    q.check_count(q.FUNCTIONS, 2, 1, 3)
    with pytest.raises(QuotaExceeded) as info:
        q.check_count(q.FUNCTIONS, 3, 1, 3)
    assert info.value.status == 429 and info.value.quota == "functions"
    assert info.value.retry_after_s is None  # only deleting a function frees one
    with pytest.raises(QuotaExceeded) as queued:
        q.check_count(q.QUEUED_TASKS, 5, 1, 5)
    assert queued.value.retry_after_s == q.QUEUED_RETRY_AFTER_S
    q.check_count(q.FUNCTIONS, 10, 0, 3)  # adding nothing is never refused


def test_bytes_over_the_quota_are_413() -> None:
    q.check_bytes(q.BUNDLE_BYTES, 10, 90, 100)
    with pytest.raises(QuotaExceeded) as info:
        q.check_bytes(q.BUNDLE_BYTES, 10, 91, 100)
    assert info.value.status == 413 and info.value.retry_after_s is None


def test_queue_destinations() -> None:
    config = FunctionConfig.model_validate({"async": {
        "on_success": {"type": "queue", "name": "a"}, "on_failure": {"type": "webhook", "url": "https://x/"},
    }})
    assert q.queue_destinations(config) == {"a"}
    q.check_destinations({"a", "b"}, set(), {"a"}, 2)  # names one in use already
    q.check_destinations({"a"}, {"b"}, {"c"}, 2)  # swaps its own for a new one
    with pytest.raises(QuotaExceeded) as info:
        q.check_destinations({"a", "b"}, set(), {"c"}, 2)
    assert info.value.quota == "queue_destinations" and info.value.status == 429
    # A quota lowered below use refuses new names only, never a config that keeps its own.
    q.check_destinations({"a", "b"}, {"c"}, {"c"}, 1)
