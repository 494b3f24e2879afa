"""The admin key `fnhost up` generates is created 0600 in one step: never readable by
another account, not even between its creation and a later chmod."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import cli
from runtime.settings import load_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever mode the file gets is the one asked for."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_generated_key_is_created_0600(tmp_path: Path, open_umask: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # No chmod after the fact: the mode must come with the creation itself.
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)
    key, source = cli._admin_key(load_settings(data_dir=tmp_path, admin_key=None))
    path = tmp_path / "admin-key"
    assert source == str(path)
    assert mode(path) == 0o600, oct(mode(path))
    assert len(key) >= 32 and path.read_text().strip() == key


def test_the_key_is_kept_across_starts(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, admin_key=None)
    first, _ = cli._admin_key(settings)
    second, _ = cli._admin_key(settings)
    assert first == second


def test_a_key_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "admin-key"
    path.write_text("an-old-key\n")
    path.chmod(0o644)
    key, _ = cli._admin_key(load_settings(data_dir=tmp_path, admin_key=None))
    assert key == "an-old-key"
    assert mode(path) == 0o600, oct(mode(path))


def test_a_key_from_the_environment_writes_no_file(tmp_path: Path) -> None:
    key, source = cli._admin_key(load_settings(data_dir=tmp_path, admin_key="from-env-0123456789"))
    assert (key, source) == ("from-env-0123456789", "FNHOST_ADMIN_KEY")
    assert not (tmp_path / "admin-key").exists()
