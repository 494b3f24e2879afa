"""The `max_rate` config key: optional, bounds naming the field, in the manifest, the
config part and PATCH alike."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from runtime.bundles import BundleLimits, inspect_bundle
from runtime.errors import InvalidConfig
from runtime.models import CONFIG_KEYS, FunctionConfig, merge_config, parse_config

LIMITS = BundleLimits(max_bytes=1 << 20, max_unpacked_bytes=1 << 20, max_entries=10)


def bundle(manifest: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", "def handler(event, context):\n    return event\n")
        zf.writestr("fnhost.json", json.dumps(manifest))
    return buf.getvalue()


def test_unlimited_by_default() -> None:
    assert "max_rate" in CONFIG_KEYS
    assert FunctionConfig().max_rate is None
    assert parse_config({}).dump()["max_rate"] is None


@pytest.mark.parametrize("value", [0.001, 0.5, 5, 100000])
def test_accepted_values(value: float) -> None:
    assert parse_config({"max_rate": value}).max_rate == value


@pytest.mark.parametrize("value", [0, -1, 100000.5, "fast", [5], {"per_s": 5}])
def test_refused_values_name_the_field(value: object) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_config({"max_rate": value})
    assert info.value.field == "max_rate"
    assert "max_rate" in info.value.message


def test_patch_sets_and_clears_it() -> None:
    limited = merge_config(parse_config({"memory_mb": 256}), {"max_rate": 20})
    assert limited.max_rate == 20 and limited.memory_mb == 256
    assert merge_config(limited, {"timeout_s": 5}).max_rate == 20  # untouched
    assert merge_config(limited, {"max_rate": None}).max_rate is None
    with pytest.raises(InvalidConfig) as info:
        merge_config(limited, {"max_rate": 0})
    assert info.value.field == "max_rate"


def test_manifest_and_config_part() -> None:
    assert inspect_bundle(bundle({"max_rate": 7.5}), LIMITS).config.max_rate == 7.5
    overridden = inspect_bundle(bundle({"max_rate": 7.5}), LIMITS, {"max_rate": 2})
    assert overridden.config.max_rate == 2
    with pytest.raises(InvalidConfig) as info:
        inspect_bundle(bundle({"max_rate": -3}), LIMITS)
    assert info.value.field == "max_rate"
