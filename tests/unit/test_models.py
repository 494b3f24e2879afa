"""Function configuration: defaults, bounds, env, destinations, PATCH merging, names."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.errors import InvalidConfig
from runtime.models import (
    MAX_ENV_BYTES,
    AsyncConfig,
    FunctionConfig,
    QueueDestination,
    WebhookDestination,
    check_name,
    merge_config,
    parse_config,
)


def refused(data: object) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as info:
        parse_config(data)
    return info.value


# defaults


def test_defaults() -> None:
    config = parse_config({})
    assert config == FunctionConfig()
    assert config.handler == "main.handler"
    assert config.runtime == "python3.11"
    assert config.memory_mb == 128
    assert config.timeout_s == 30
    assert config.max_concurrency == 10
    assert config.env == {}
    assert config.dedicated_queue is False
    assert config.paused is False
    assert config.async_ == AsyncConfig()
    assert config.async_.task_mode is True
    assert config.async_.max_retry_attempts == 2
    assert config.async_.max_event_age_s == 21600
    assert config.async_.retry_backoff_s == 1.0
    assert config.async_.on_success is None
    assert config.async_.on_failure is None


def test_config_is_frozen() -> None:
    config = FunctionConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.memory_mb = 512


def test_not_a_mapping() -> None:
    not_mappings: list[object] = [[], "memory_mb=128", None, 3]
    for data in not_mappings:
        assert refused(data).field == "config"


# bounds


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("memory_mb", 63, False),
        ("memory_mb", 64, True),
        ("memory_mb", 16384, True),
        ("memory_mb", 16385, False),
        ("timeout_s", 0, False),
        ("timeout_s", 900, True),
        ("timeout_s", 901, False),
        ("max_concurrency", 0, False),
        ("max_concurrency", 1, True),
        ("max_concurrency", 1000, True),
        ("max_concurrency", 1001, False),
    ],
)
def test_top_level_bounds(field: str, value: int, ok: bool) -> None:
    if ok:
        assert getattr(parse_config({field: value}), field) == value
    else:
        err = refused({field: value})
        assert err.field == field
        assert field in err.message


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("max_retry_attempts", 8, True),
        ("max_retry_attempts", 9, False),
        ("max_event_age_s", 0, False),
        ("max_event_age_s", 604800, True),
        ("max_event_age_s", 604801, False),
    ],
)
def test_async_bounds(field: str, value: int, ok: bool) -> None:
    if ok:
        assert getattr(parse_config({"async": {field: value}}).async_, field) == value
    else:
        err = refused({"async": {field: value}})
        assert err.field == f"async.{field}"
        assert f"async.{field}" in err.message


def test_unknown_key_names_the_field() -> None:
    err = refused({"memory": 128})
    assert err.field == "memory"
    assert "memory" in err.message
    assert err.code == "invalid_config"
    assert err.status == 400


def test_unknown_async_key_names_the_field() -> None:
    err = refused({"async": {"retries": 1}})
    assert err.field == "async.retries"


def test_python_attribute_name_is_not_a_config_key() -> None:
    # The API, the manifest and the store all say `async`; `async_` is unknown there.
    err = refused({"async_": {"max_retry_attempts": 5}})
    assert err.field == "async_"


def test_patch_with_python_attribute_name_names_that_key() -> None:
    with pytest.raises(InvalidConfig) as info:
        merge_config(FunctionConfig(), {"async_": {"max_retry_attempts": 5}})
    assert info.value.field == "async_"


def test_bad_handler_and_runtime() -> None:
    assert refused({"handler": "main"}).field == "handler"
    assert refused({"runtime": "python3.12"}).field == "runtime"


# env


def test_env_accepts_good_names() -> None:
    env = {"FOO": "1", "_private": "2", "Mixed_Case9": "3"}
    assert parse_config({"env": env}).env == env


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "A=B", "Ä", "A" * 129, "FOO\n"])
def test_env_refuses_bad_names(name: str) -> None:
    err = refused({"env": {name: "x"}})
    assert err.field == "env"


def test_env_size_limit() -> None:
    key = "K"
    at_limit = {key: "v" * (MAX_ENV_BYTES - len(key))}
    assert parse_config({"env": at_limit}).env == at_limit
    err = refused({"env": {key: "v" * (MAX_ENV_BYTES - len(key) + 1)}})
    assert err.field == "env"
    assert str(MAX_ENV_BYTES) in err.message


def test_env_size_counts_every_entry() -> None:
    env = {f"K{i:03d}": "v" * 96 for i in range(41)}  # 41 * 100 bytes
    assert refused({"env": env}).field == "env"


# destinations


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://example.com:8443/a?b=c"])
def test_webhook_destination(url: str) -> None:
    config = parse_config({"async": {"on_success": {"type": "webhook", "url": url}}})
    assert config.async_.on_success == WebhookDestination(type="webhook", url=url)


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "example.com", "http://", "http://a b", "file:///etc/passwd"]
)
def test_webhook_url_must_be_http(url: str) -> None:
    err = refused({"async": {"on_failure": {"type": "webhook", "url": url}}})
    assert err.field is not None
    assert err.field.startswith("async.on_failure")


@pytest.mark.parametrize("name", ["results", "a.b-c_d", "Q1", "x" * 100])
def test_queue_destination(name: str) -> None:
    config = parse_config({"async": {"on_failure": {"type": "queue", "name": name}}})
    assert config.async_.on_failure == QueueDestination(type="queue", name=name)


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a b", "a/b", "x" * 101])
def test_queue_name_pattern(name: str) -> None:
    err = refused({"async": {"on_failure": {"type": "queue", "name": name}}})
    assert err.field is not None
    assert err.field.startswith("async.on_failure")


@pytest.mark.parametrize("name", ["next-step", "f1", "a_b"])
def test_function_destination(name: str) -> None:
    config = parse_config({"async": {"on_success": {"type": "function", "name": name}}})
    assert config.async_.on_success is not None
    assert config.async_.on_success.type == "function"


@pytest.mark.parametrize("name", ["", "_x", "a.b", "a b", "x" * 65, "a\n"])
def test_function_name_pattern(name: str) -> None:
    err = refused({"async": {"on_success": {"type": "function", "name": name}}})
    assert err.field is not None
    assert err.field.startswith("async.on_success")


def test_unknown_destination_type() -> None:
    err = refused({"async": {"on_success": {"type": "email", "to": "ops@example.com"}}})
    assert err.field == "async.on_success"


def test_destination_extra_key() -> None:
    err = refused({"async": {"on_success": {"type": "queue", "name": "q", "ttl": 5}}})
    assert err.field is not None
    assert err.field.startswith("async.on_success")


# merge_config


def test_merge_changes_only_named_keys() -> None:
    current = parse_config(
        {"memory_mb": 512, "env": {"A": "1"}, "async": {"max_retry_attempts": 5}}
    )
    merged = merge_config(current, {"timeout_s": 60})
    assert merged.timeout_s == 60
    assert merged.memory_mb == 512
    assert merged.env == {"A": "1"}
    assert merged.async_ == current.async_
    assert current.timeout_s == 30


def test_merge_replaces_env_whole() -> None:
    current = parse_config({"env": {"A": "1", "B": "2"}})
    assert merge_config(current, {"env": {"C": "3"}}).env == {"C": "3"}


def test_merge_async_key_by_key() -> None:
    current = parse_config(
        {"async": {"max_retry_attempts": 5, "on_success": {"type": "queue", "name": "done"}}}
    )
    merged = merge_config(current, {"async": {"max_event_age_s": 60}})
    assert merged.async_.max_event_age_s == 60
    assert merged.async_.max_retry_attempts == 5
    assert merged.async_.on_success == QueueDestination(type="queue", name="done")


def test_merge_can_clear_a_destination() -> None:
    current = parse_config({"async": {"on_success": {"type": "queue", "name": "done"}}})
    assert merge_config(current, {"async": {"on_success": None}}).async_.on_success is None


def test_merge_empty_patch_is_identity() -> None:
    current = parse_config({"memory_mb": 1024, "paused": True})
    assert merge_config(current, {}) == current


def test_merge_validates_the_result() -> None:
    current = FunctionConfig()
    with pytest.raises(InvalidConfig) as info:
        merge_config(current, {"memory_mb": 1})
    assert info.value.field == "memory_mb"
    with pytest.raises(InvalidConfig) as info:
        merge_config(current, {"async": {"max_retry_attempts": 99}})
    assert info.value.field == "async.max_retry_attempts"
    with pytest.raises(InvalidConfig) as info:
        merge_config(current, {"nope": 1})
    assert info.value.field == "nope"


def test_merge_refuses_non_mapping() -> None:
    with pytest.raises(InvalidConfig) as info:
        merge_config(FunctionConfig(), ["memory_mb"])
    assert info.value.field == "config"


# check_name


@pytest.mark.parametrize("name", ["a", "A", "0", "resize", "my-func_2", "x" * 64])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "_a", "a.b", "a b", "a/b", "é", "x" * 65, "abc\n", "abc\r"]
)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        check_name(name, "tenant")
    assert info.value.field == "tenant"
    assert "tenant" in info.value.message


def test_check_name_truncates_long_names_in_message() -> None:
    with pytest.raises(InvalidConfig) as info:
        check_name("x" * 1000)
    assert "x" * 81 not in info.value.message
    assert info.value.field == "name"


# dump


def test_dump_uses_async() -> None:
    dumped: dict[str, Any] = parse_config(
        {"async": {"on_failure": {"type": "webhook", "url": "https://example.com/h"}}}
    ).dump()
    assert "async" in dumped
    assert "async_" not in dumped
    assert dumped["async"]["on_failure"] == {"type": "webhook", "url": "https://example.com/h"}
    assert set(dumped) == {
        "handler", "runtime", "memory_mb", "timeout_s", "max_concurrency", "env", "async",
        "dedicated_queue", "paused", "max_rate",
    }


def test_dump_round_trips() -> None:
    config = parse_config(
        {"memory_mb": 128, "env": {"A": "b"}, "async": {"on_success": {"type": "function", "name": "f"}}}
    )
    assert parse_config(config.dump()) == config
