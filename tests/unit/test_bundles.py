"""Bundle validation and unpacking, on zips built in memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.bundles import (
    BundleLimits,
    handler_module_paths,
    inspect_bundle,
    unpack_bundle,
)
from runtime.errors import InvalidBundle, InvalidConfig, PayloadTooLarge

MB = 1 << 20
LIMITS = BundleLimits(max_bytes=10 * MB, max_unpacked_bytes=10 * MB, max_entries=100)
MAIN = b"def handler(event, context):\n    return event\n"

# Offsets inside the zip headers (APPNOTE 4.3.7 and 4.3.12).
LOCAL_SIG, LOCAL_FLAGS, LOCAL_SIZE = b"PK\x03\x04", 6, 22
CENTRAL_SIG, CENTRAL_FLAGS, CENTRAL_SIZE = b"PK\x01\x02", 8, 24


def make_zip(files: dict[str, bytes | str], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def patch_header(data: bytes, sig: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of every header with signature `sig` (single-entry zips)."""
    out = bytearray(data)
    start = out.find(sig)
    assert start >= 0
    while start >= 0:
        struct.pack_into(fmt, out, start + offset, value)
        start = out.find(sig, start + 4)
    return bytes(out)


def find_temp_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


# --- valid bundles -----------------------------------------------------------------


def test_bundle_without_manifest_uses_defaults() -> None:
    data = make_zip({"main.py": MAIN, "lib/util.py": "X = 1\n"})
    bundle = inspect_bundle(data, LIMITS)
    assert bundle.manifest == {}
    assert bundle.config.handler == "main.handler"
    assert bundle.config.memory_mb == 128
    assert bundle.entries == 2
    assert bundle.size == len(data)
    assert bundle.unpacked_size == len(MAIN) + len("X = 1\n")
    assert bundle.pickle is None and bundle.python is None


def test_bundle_with_json_manifest() -> None:
    manifest = {"handler": "app.run", "memory_mb": 512, "env": {"KEY": "value"},
                "async": {"max_retry_attempts": 0}}
    data = make_zip({"app.py": MAIN, "fnhost.json": json.dumps(manifest)})
    bundle = inspect_bundle(data, LIMITS)
    assert bundle.manifest == manifest
    assert bundle.config.handler == "app.run"
    assert bundle.config.memory_mb == 512
    assert bundle.config.env == {"KEY": "value"}
    assert bundle.config.async_.max_retry_attempts == 0


@pytest.mark.parametrize("name", ["fnhost.yaml", "fnhost.yml"])
def test_bundle_with_yaml_manifest(name: str) -> None:
    text = "handler: app.run\ntimeout_s: 5\nenv:\n  KEY: value\n"
    bundle = inspect_bundle(make_zip({"app.py": MAIN, name: text}), LIMITS)
    assert bundle.config.handler == "app.run"
    assert bundle.config.timeout_s == 5
    assert bundle.config.env == {"KEY": "value"}


def test_config_override_wins_key_by_key() -> None:
    manifest = {"memory_mb": 512, "timeout_s": 10,
                "async": {"max_retry_attempts": 0, "max_event_age_s": 60}}
    data = make_zip({"main.py": MAIN, "fnhost.json": json.dumps(manifest)})
    bundle = inspect_bundle(data, LIMITS, {"memory_mb": 1024, "async": {"max_retry_attempts": 5}})
    assert bundle.config.memory_mb == 1024
    assert bundle.config.timeout_s == 10
    assert bundle.config.async_.max_retry_attempts == 5
    assert bundle.config.async_.max_event_age_s == 60
    assert bundle.manifest == manifest


def test_override_with_unknown_key_is_refused() -> None:
    with pytest.raises(InvalidConfig) as info:
        inspect_bundle(make_zip({"main.py": MAIN}), LIMITS, {"pickle": "f.pkl"})
    assert info.value.field == "pickle"


def test_version_is_the_content_hash() -> None:
    data = make_zip({"main.py": MAIN})
    first = inspect_bundle(data, LIMITS)
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.version == first.sha256[:12]
    assert inspect_bundle(bytes(data), LIMITS).version == first.version
    other = make_zip({"main.py": MAIN + b"# changed\n"})
    assert inspect_bundle(other, LIMITS).version != first.version


def test_package_handler_found_without_init() -> None:
    bundle = inspect_bundle(make_zip({"pkg/mod.py": MAIN}), LIMITS, {"handler": "pkg.mod.run"})
    assert bundle.config.handler == "pkg.mod.run"
    inspect_bundle(make_zip({"pkg/mod/__init__.py": MAIN}), LIMITS, {"handler": "pkg.mod.run"})


@pytest.mark.parametrize(
    "name", ["fast.pyc", "fast.so", "fast.cpython-311-x86_64-linux-gnu.so", "fast/__init__.pyc"]
)
def test_compiled_handler_module_found(name: str) -> None:
    inspect_bundle(make_zip({name: b"\0"}), LIMITS, {"handler": "fast.run"})


def test_handler_module_paths() -> None:
    assert handler_module_paths("main.handler") == ["main.py", "main/__init__.py"]
    assert handler_module_paths("a.b.c") == ["a/b.py", "a/b/__init__.py"]


def test_dot_slash_entries_are_normalised() -> None:
    bundle = inspect_bundle(make_zip({"./": b"", "./main.py": MAIN}), LIMITS)
    assert bundle.config.handler == "main.handler"


# --- refused archives --------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(100)])
def test_not_a_zip(body: bytes) -> None:
    with pytest.raises(InvalidBundle, match="the body is not a zip archive"):
        inspect_bundle(body, LIMITS)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.py", "'..'"),
        ("lib/../../evil.py", "'..'"),
        ("/etc/cron.d/evil", "absolute"),
        ("C:/evil.py", "absolute"),
        ("c:evil.py", "absolute"),
        ("lib\\evil.py", "backslash"),
        ("lib/\nevil.py", "control character"),
    ],
)
def test_bad_entry_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidBundle, match=re.escape(reason)) as info:
        inspect_bundle(make_zip({"main.py": MAIN, name: b"x"}), LIMITS)
    assert repr(name) in info.value.message


def test_nul_in_entry_name() -> None:
    # zipfile cuts a name at NUL, so the byte is patched in after writing.
    data = make_zip({"main.py": MAIN, "evilXname.py": b"x"})
    data = data.replace(b"evilXname.py", b"evil\0name.py")
    with pytest.raises(InvalidBundle, match="NUL"):
        inspect_bundle(data, LIMITS)


def test_empty_entry_name() -> None:
    # A file named "." normalises to nothing; the one-byte name sits right after each header.
    data = make_zip({"X": b"x"})
    data = patch_header(data, LOCAL_SIG, 30, "<B", ord("."))
    data = patch_header(data, CENTRAL_SIG, 46, "<B", ord("."))
    with pytest.raises(InvalidBundle, match="empty name"):
        inspect_bundle(data, LIMITS)


def test_symlink_entry() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", MAIN)
        link = zipfile.ZipInfo("secrets")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/shadow")
    with pytest.raises(InvalidBundle, match="'secrets' is a symbolic link"):
        inspect_bundle(buf.getvalue(), LIMITS)


def test_duplicate_entry() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("main.py", MAIN)
        zf.writestr("main.py", b"evil = 1\n")
    with pytest.raises(InvalidBundle, match=re.escape("'main.py' appears more than once")):
        inspect_bundle(buf.getvalue(), LIMITS)


def test_file_and_directory_with_one_name() -> None:
    with pytest.raises(InvalidBundle, match="both a file and a directory"):
        inspect_bundle(make_zip({"main.py": MAIN, "lib": b"x", "lib/a.py": b"y"}), LIMITS)


def test_encrypted_entry() -> None:
    data = make_zip({"main.py": MAIN})
    data = patch_header(data, CENTRAL_SIG, CENTRAL_FLAGS, "<H", 0x1)
    with pytest.raises(InvalidBundle, match="encrypted"):
        inspect_bundle(data, LIMITS)


def test_too_many_entries() -> None:
    files: dict[str, bytes | str] = {f"f{i}.py": b"" for i in range(101)}
    files["main.py"] = MAIN
    with pytest.raises(PayloadTooLarge, match="entries"):
        inspect_bundle(make_zip(files), LIMITS)


def test_zip_bomb_refused_from_central_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_zip({"main.py": MAIN, "zeros.bin": bytes(20 * MB)})
    assert len(data) < 100 * 1024

    def no_decompression(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect must not decompress a bomb")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_decompression)
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match=str(LIMITS.max_unpacked_bytes)):
        inspect_bundle(data, LIMITS)
    assert time.perf_counter() - started < 1.0


def test_suspicious_compression_ratio() -> None:
    data = make_zip({"main.py": MAIN, "zeros.bin": bytes(20 * MB)})
    roomy = BundleLimits(max_bytes=10 * MB, max_unpacked_bytes=100 * MB, max_entries=100)
    with pytest.raises(InvalidBundle, match="compression ratio"):
        inspect_bundle(data, roomy)


def test_compressed_size_over_limit() -> None:
    data = make_zip({"main.py": MAIN, "blob.bin": os.urandom(64 * 1024)}, zipfile.ZIP_STORED)
    small = BundleLimits(max_bytes=32 * 1024, max_unpacked_bytes=10 * MB, max_entries=100)
    with pytest.raises(PayloadTooLarge, match="32768"):
        inspect_bundle(data, small)


# --- manifests and configuration ---------------------------------------------------


def test_missing_handler_module() -> None:
    with pytest.raises(InvalidBundle) as info:
        inspect_bundle(make_zip({"app.py": MAIN}), LIMITS)
    assert info.value.field == "handler"
    assert info.value.message == (
        "handler module 'main' not found in the bundle (looked for main.py, main/__init__.py)"
    )


def test_missing_handler_hints_at_a_wrapping_folder() -> None:
    with pytest.raises(InvalidBundle, match="at the zip's root") as info:
        inspect_bundle(make_zip({"myfn/main.py": MAIN}), LIMITS)
    assert info.value.field == "handler"


@pytest.mark.parametrize(
    ("name", "text"),
    [("fnhost.json", "{not json"), ("fnhost.yaml", "handler: [unclosed"),
     ("fnhost.json", b"\xff\xfe")],
)
def test_bad_manifest_syntax(name: str, text: str | bytes) -> None:
    with pytest.raises(InvalidBundle, match=re.escape(f"{name} is not valid")) as info:
        inspect_bundle(make_zip({"main.py": MAIN, name: text}), LIMITS)
    assert info.value.field == name


@pytest.mark.parametrize("text", ["[1, 2]", '"main.handler"', "null"])
def test_manifest_not_a_mapping(text: str) -> None:
    with pytest.raises(InvalidBundle, match="mapping"):
        inspect_bundle(make_zip({"main.py": MAIN, "fnhost.json": text}), LIMITS)


def test_yaml_aliases_refused() -> None:
    text = "env: &e {A: b}\nasync: *e\n"
    with pytest.raises(InvalidBundle, match="aliases"):
        inspect_bundle(make_zip({"main.py": MAIN, "fnhost.yaml": text}), LIMITS)


def test_two_manifests_refused() -> None:
    data = make_zip({"main.py": MAIN, "fnhost.json": "{}", "fnhost.yaml": "{}"})
    with pytest.raises(InvalidBundle, match="more than one manifest"):
        inspect_bundle(data, LIMITS)


def test_manifest_too_large() -> None:
    text = json.dumps({"env": {"K": "v" * (70 * 1024)}})
    with pytest.raises(InvalidBundle, match="larger than 65536"):
        inspect_bundle(make_zip({"main.py": MAIN, "fnhost.json": text}), LIMITS)


def test_manifest_in_a_folder_is_just_a_file() -> None:
    data = make_zip({"main.py": MAIN, "sub/fnhost.json": "{not json"})
    assert inspect_bundle(data, LIMITS).manifest == {}


def test_unknown_manifest_key() -> None:
    data = make_zip({"main.py": MAIN, "fnhost.json": json.dumps({"memroy_mb": 512})})
    with pytest.raises(InvalidConfig, match="memroy_mb") as info:
        inspect_bundle(data, LIMITS)
    assert info.value.field == "memroy_mb"


def test_bad_config_value_names_the_field() -> None:
    data = make_zip({"main.py": MAIN, "fnhost.json": json.dumps({"memory_mb": 1})})
    with pytest.raises(InvalidConfig) as info:
        inspect_bundle(data, LIMITS)
    assert info.value.field == "memory_mb"


def test_bad_override_value_names_the_field() -> None:
    with pytest.raises(InvalidConfig) as info:
        inspect_bundle(make_zip({"main.py": MAIN}), LIMITS, {"async": {"max_retry_attempts": 99}})
    assert info.value.field == "async.max_retry_attempts"


# --- pickled callables -------------------------------------------------------------


def pickled(python: str) -> bytes:
    manifest = {"pickle": "function.pkl", "python": python, "handler": "fn.call"}
    return make_zip({"function.pkl": b"\x80\x05.", "fnhost.json": json.dumps(manifest)})


def test_pickled_bundle_needs_no_handler_module() -> None:
    bundle = inspect_bundle(pickled("3.11.9"), LIMITS)
    assert bundle.pickle == "function.pkl"
    assert bundle.python == "3.11.9"


def test_pickled_python_mismatch() -> None:
    with pytest.raises(InvalidBundle) as info:
        inspect_bundle(pickled("3.12.1"), LIMITS)
    assert info.value.field == "python"
    assert info.value.message.startswith(
        "bundle was pickled with Python 3.12 but runtime python3.11 runs 3.11"
    )


def test_pickle_file_missing() -> None:
    manifest = {"pickle": "function.pkl", "python": "3.11"}
    data = make_zip({"main.py": MAIN, "fnhost.json": json.dumps(manifest)})
    with pytest.raises(InvalidBundle, match="not found") as info:
        inspect_bundle(data, LIMITS)
    assert info.value.field == "pickle"


@pytest.mark.parametrize("python", [None, "3", "three.eleven", 3.11])
def test_pickle_needs_a_python_version(python: object) -> None:
    manifest: dict[str, object] = {"pickle": "function.pkl"}
    if python is not None:
        manifest["python"] = python
    data = make_zip({"function.pkl": b".", "fnhost.json": json.dumps(manifest)})
    with pytest.raises(InvalidConfig) as info:
        inspect_bundle(data, LIMITS)
    assert info.value.field == "python"


# --- unpacking ---------------------------------------------------------------------


def test_unpack_writes_files_with_readable_modes(tmp_path: Path, umask: None) -> None:
    data = make_zip({"main.py": MAIN, "lib/": b"", "lib/deep/util.py": "X = 1\n"})
    dest = tmp_path / "cache" / "abc123"
    unpack_bundle(data, dest, LIMITS)
    assert (dest / "main.py").read_bytes() == MAIN
    assert (dest / "lib" / "deep" / "util.py").read_text() == "X = 1\n"
    for path in [dest / "main.py", dest / "lib" / "deep" / "util.py"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for path in [dest, dest / "lib", dest / "lib" / "deep"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert find_temp_dirs(dest.parent) == []


def test_unpack_rechecks_names(tmp_path: Path) -> None:
    data = make_zip({"main.py": MAIN, "../escaped.py": b"x"})
    dest = tmp_path / "cache" / "v1"
    with pytest.raises(InvalidBundle, match=re.escape("'..'")):
        unpack_bundle(data, dest, LIMITS)
    assert not dest.exists()
    assert not (tmp_path / "escaped.py").exists()
    assert not (tmp_path / "cache" / "escaped.py").exists()


def test_unpack_refuses_symlinks(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc")
    with pytest.raises(InvalidBundle, match="symbolic link"):
        unpack_bundle(buf.getvalue(), tmp_path / "v1", LIMITS)
    assert list(tmp_path.iterdir()) == []


def test_unpack_stops_a_zip_that_lies_about_sizes(tmp_path: Path) -> None:
    data = make_zip({"zeros.bin": bytes(2 * MB)})
    data = patch_header(data, LOCAL_SIG, LOCAL_SIZE, "<I", 100)
    data = patch_header(data, CENTRAL_SIG, CENTRAL_SIZE, "<I", 100)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("zeros.bin").file_size == 100
    small = BundleLimits(max_bytes=MB, max_unpacked_bytes=1000, max_entries=10)
    dest = tmp_path / "v1"
    # zipfile stops at the declared size and the CRC then fails; the byte cap is the
    # second line of defence (see test_unpack_counts_actual_bytes).
    with pytest.raises(InvalidBundle, match=re.escape("'zeros.bin'")):
        unpack_bundle(data, dest, small)
    assert list(tmp_path.iterdir()) == []


def test_unpack_counts_actual_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader that produces more than the central directory declared.
    data = make_zip({"a.bin": b"small", "b.bin": b"small"})

    def oversized(self: zipfile.ZipFile, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(bytes(600))

    monkeypatch.setattr(zipfile.ZipFile, "open", oversized)
    small = BundleLimits(max_bytes=MB, max_unpacked_bytes=1000, max_entries=10)
    with pytest.raises(InvalidBundle, match="more than 1000 bytes"):
        unpack_bundle(data, tmp_path / "v1", small)
    assert list(tmp_path.iterdir()) == []


def test_unpack_keeps_an_existing_dest(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    dest.mkdir()
    (dest / "marker").write_text("first")
    unpack_bundle(make_zip({"main.py": MAIN}), dest, LIMITS)
    assert sorted(p.name for p in dest.iterdir()) == ["marker"]
    assert find_temp_dirs(tmp_path) == []


def test_unpack_keeps_a_dest_that_appears_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "v1"
    real_rename = os.rename

    def racing_rename(src: Any, dst: Any) -> None:
        dest.mkdir()
        (dest / "marker").write_text("winner")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    unpack_bundle(make_zip({"main.py": MAIN}), dest, LIMITS)
    assert sorted(p.name for p in dest.iterdir()) == ["marker"]
    assert find_temp_dirs(tmp_path) == []
