"""The exception tree: statuses, codes and the JSON error body."""

from __future__ import annotations

import orjson
import pytest

import gateway.routes.functions  # noqa: F401  (defines an FnhostError subclass)
from runtime import errors
from runtime.errors import FnhostError


def subclasses(cls: type[FnhostError]) -> list[type[FnhostError]]:
    found: list[type[FnhostError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(subclasses(sub))
    return found


ALL = subclasses(FnhostError)
# Codes the contract (DESIGN.md) spells itself; every other code is snake_case.
CONTRACT_CODES = {"QuotaExceeded"}


def test_tree_is_found() -> None:
    names = {cls.__name__ for cls in ALL}
    assert {"BadRequest", "InvalidBundle", "InvalidConfig", "NotFound", "Throttled",
            "Unavailable", "UnsupportedMediaType"} <= names


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_status_and_code(cls: type[FnhostError]) -> None:
    assert isinstance(cls.status, int)
    assert 400 <= cls.status <= 599
    assert isinstance(cls.code, str) and cls.code
    assert cls.code == cls.code.lower() or cls.code in CONTRACT_CODES
    assert " " not in cls.code


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_subclass_body(cls: type[FnhostError]) -> None:
    exc = cls("something went wrong")
    assert str(exc) == "something went wrong"
    assert exc.to_json() == {"error": {"code": cls.code, "message": "something went wrong"}}
    assert orjson.loads(exc.to_json_bytes()) == exc.to_json()


def test_codes_are_unique() -> None:
    classes: list[type[FnhostError]] = [FnhostError, *ALL]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))


def test_base_is_internal_error() -> None:
    exc = FnhostError("boom")
    assert exc.status == 500
    assert exc.to_json() == {"error": {"code": "internal_error", "message": "boom"}}


def test_to_json_includes_field() -> None:
    exc = errors.InvalidConfig("memory_mb too large", field="memory_mb")
    assert exc.field == "memory_mb"
    assert exc.to_json() == {
        "error": {"code": "invalid_config", "message": "memory_mb too large", "field": "memory_mb"}
    }


def test_to_json_omits_field_when_absent() -> None:
    assert errors.NotFound("no such function").to_json() == {
        "error": {"code": "not_found", "message": "no such function"}
    }


def test_to_json_bytes_is_valid_json() -> None:
    exc = errors.BadRequest('quote " backslash \\ newline \n unicode é', field="a.b")
    raw = exc.to_json_bytes()
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == {
        "error": {
            "code": "bad_request",
            "message": 'quote " backslash \\ newline \n unicode é',
            "field": "a.b",
        }
    }


@pytest.mark.parametrize("cls", [errors.Throttled, errors.Unavailable])
def test_retry_after(cls: type[errors.Throttled] | type[errors.Unavailable]) -> None:
    assert cls("slow down").retry_after_s == 1
    assert cls("slow down", retry_after_s=7).retry_after_s == 7


def test_statuses() -> None:
    assert errors.BadRequest.status == 400
    assert errors.InvalidBundle.status == 400
    assert errors.InvalidConfig.status == 400
    assert errors.Unauthorized.status == 401
    assert errors.Forbidden.status == 403
    assert errors.NotFound.status == 404
    assert errors.Conflict.status == 409
    assert errors.PayloadTooLarge.status == 413
    assert errors.Throttled.status == 429
    assert errors.NotImplementedYet.status == 501
    assert errors.Unavailable.status == 503


def test_quota_exceeded_names_its_quota() -> None:
    exc = errors.QuotaExceeded("over", quota="functions", retry_after_s=5)
    assert exc.status == 429 and exc.retry_after_s == 5
    assert exc.to_json() == {"error": {"code": "QuotaExceeded", "message": "over", "quota": "functions"}}
    large = errors.QuotaExceeded("too big", quota="bundle_bytes", status=413, retry_after_s=5)
    assert large.status == 413 and large.retry_after_s is None  # a retry would not help
