"""The settings object: defaults, FNHOST_* variables, errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.models import FunctionConfig
from runtime.settings import MB, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FNHOST_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.bind == "127.0.0.1:8080"
    assert s.admin_key is None
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.mongo_url is None
    assert s.mongo_db == "fnhost"
    assert s.embedded_mongo_port == 27017
    assert s.data_dir == Path("/var/lib/fnhost")
    assert s.log_level == "info"
    assert s.scheduler_id
    assert s.stem_cells == 20
    assert s.stem_cells_min == 4
    assert s.max_containers == 0  # from the host's memory budget
    assert s.stem_cells_max == 32
    assert s.keep_alive_s == 300.0
    assert s.heartbeat_s == 1.0
    assert s.scheduler_bind == "127.0.0.1:0"
    assert s.scheduler_advertise is None
    assert s.cluster_secret is None
    assert s.sync_payload_limit == 6 * MB
    assert s.async_payload_limit == 1 * MB
    assert s.bundle_max_bytes == 50 * MB
    assert s.log_limit_bytes == 256 * 1024


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.bind = "0.0.0.0:80"


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FNHOST_BIND", "0.0.0.0:9000")
    monkeypatch.setenv("FNHOST_ADMIN_KEY", "s3cret")
    monkeypatch.setenv("FNHOST_AMQP_URL", "amqps://u:p@rabbit:5671/vh")
    monkeypatch.setenv("FNHOST_MONGO_URL", "mongodb://db:27017")
    monkeypatch.setenv("FNHOST_MONGO_DB", "fn_test")
    monkeypatch.setenv("FNHOST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FNHOST_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("FNHOST_SCHEDULER_ID", "sched-7")
    monkeypatch.setenv("FNHOST_STEM_CELLS", "0")
    monkeypatch.setenv("FNHOST_MAX_CONTAINERS", "8")
    monkeypatch.setenv("FNHOST_KEEP_ALIVE_S", "2.5")
    monkeypatch.setenv("FNHOST_HEARTBEAT_S", "0.25")
    monkeypatch.setenv("FNHOST_SYNC_PAYLOAD_LIMIT", "2048")
    s = load_settings()
    assert s.bind == "0.0.0.0:9000"
    assert s.admin_key is not None
    assert s.admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.amqp_url == "amqps://u:p@rabbit:5671/vh"
    assert s.mongo_url == "mongodb://db:27017"
    assert s.mongo_db == "fn_test"
    assert s.data_dir == tmp_path
    assert s.log_level == "DEBUG"
    assert s.scheduler_id == "sched-7"
    assert s.stem_cells == 0
    assert s.max_containers == 8
    assert s.keep_alive_s == 2.5
    assert s.heartbeat_s == 0.25
    assert s.sync_payload_limit == 2048


def test_env_var_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("fnhost_stem_cells", "7")
    assert load_settings().stem_cells == 7


def test_unrelated_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_NOT_A_SETTING", "whatever")
    monkeypatch.setenv("BIND", "garbage")
    assert load_settings().bind == "127.0.0.1:8080"


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_STEM_CELLS", "3")
    assert load_settings(stem_cells=9).stem_cells == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FNHOST_BIND", "foo"),
        ("FNHOST_BIND", "host:port"),
        ("FNHOST_SCHEDULER_BIND", "foo"),
        ("FNHOST_BIND", ":8080"),
        ("FNHOST_BIND", "host:99999"),
        ("FNHOST_STEM_CELLS", "x"),
        ("FNHOST_STEM_CELLS", "-1"),
        ("FNHOST_AMQP_URL", "http://x"),
        ("FNHOST_MONGO_URL", "x"),
        ("FNHOST_MONGO_URL", "postgres://db"),
        ("FNHOST_MAX_CONTAINERS", "-1"),
        ("FNHOST_MONGO_DB", "a/b"),
        ("FNHOST_LOG_LEVEL", "verbose"),
        ("FNHOST_SCHEDULER_ID", "a b"),
        ("FNHOST_HEARTBEAT_S", "0"),
        ("FNHOST_KEEP_ALIVE_S", "-5"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert f"{name}:" in message
    assert repr(value) in message


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_BIND", "foo")
    monkeypatch.setenv("FNHOST_MAX_CONTAINERS", "-1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "FNHOST_BIND" in str(info.value)
    assert "FNHOST_MAX_CONTAINERS" in str(info.value)


def test_invalid_override_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="FNHOST_STEM_CELLS"):
        load_settings(stem_cells=-1)


def test_empty_mongo_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_MONGO_URL", "")
    s = load_settings()
    assert s.mongo_url is None
    assert s.effective_mongo_url == "mongodb://127.0.0.1:27017/?retryWrites=false"


def test_effective_mongo_url_uses_embedded_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_EMBEDDED_MONGO_PORT", "27999")
    assert load_settings().effective_mongo_url == "mongodb://127.0.0.1:27999/?retryWrites=false"


def test_effective_mongo_url_prefers_configured_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_MONGO_URL", "mongodb+srv://cluster.example.com/")
    monkeypatch.setenv("FNHOST_EMBEDDED_MONGO_PORT", "27999")
    assert load_settings().effective_mongo_url == "mongodb+srv://cluster.example.com/"


def test_port_zero_picks_a_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_BIND", "0.0.0.0:0")
    monkeypatch.setenv("FNHOST_SCHEDULER_BIND", "10.0.0.5:0")
    s = load_settings()
    assert s.bind == "0.0.0.0:0"
    assert s.scheduler_bind == "10.0.0.5:0"


def test_stem_cells_match_the_default_function_memory() -> None:
    # A stem cell is reused without restart only when its memory size matches.
    assert load_settings().stem_memory_mb == FunctionConfig().memory_mb


def test_cluster_token_needs_a_secret() -> None:
    with pytest.raises(SettingsError, match="FNHOST_CLUSTER_SECRET"):
        _ = load_settings().cluster_token


def test_cluster_token_from_admin_key_or_cluster_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNHOST_ADMIN_KEY", "admin")
    from_admin = load_settings().cluster_token
    assert from_admin == load_settings().cluster_token
    assert "admin" not in from_admin
    monkeypatch.setenv("FNHOST_CLUSTER_SECRET", "cluster")
    from_secret = load_settings().cluster_token
    assert from_secret != from_admin
    monkeypatch.delenv("FNHOST_ADMIN_KEY")
    assert load_settings().cluster_token == from_secret


def test_hostile_tenant_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.container_log_bytes == 1 * MB
    assert s.freeze_idle == "auto"
    assert s.freeze_after_s == 0.1
    assert s.result_limit_bytes == 6 * MB
    monkeypatch.setenv("FNHOST_FREEZE_IDLE", "sometimes")
    with pytest.raises(SettingsError, match="FNHOST_FREEZE_IDLE"):
        load_settings()
    monkeypatch.setenv("FNHOST_FREEZE_IDLE", "docker")
    monkeypatch.setenv("FNHOST_CONTAINER_LOG_BYTES", "0")
    s = load_settings()
    assert (s.freeze_idle, s.container_log_bytes) == ("docker", 0)
    # A task record holds its logs and up to 1 MB of result in one MongoDB document (16 MB).
    monkeypatch.setenv("FNHOST_LOG_LIMIT_BYTES", str(16 * MB))
    with pytest.raises(SettingsError, match="FNHOST_LOG_LIMIT_BYTES"):
        load_settings()
    monkeypatch.delenv("FNHOST_LOG_LIMIT_BYTES")
    monkeypatch.setenv("FNHOST_RESULT_LIMIT_BYTES", str(9 * MB))
    with pytest.raises(SettingsError, match="FNHOST_RESULT_LIMIT_BYTES"):
        load_settings()
