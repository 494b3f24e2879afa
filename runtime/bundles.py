"""Function bundles: validate an uploaded zip from its central directory, unpack it safely.

Every check runs on the archive's metadata before a byte is decompressed, so a zip
bomb or a path-traversal entry is refused at upload; `unpack_bundle` repeats the
name checks and caps the bytes it actually writes, because a stored bundle may
have been uploaded by an older, laxer version.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from runtime.errors import InvalidBundle, InvalidConfig, PayloadTooLarge
from runtime.models import CONFIG_KEYS, MANIFEST_EXTRA_KEYS, FunctionConfig, parse_config

MANIFEST_NAMES = ("fnhost.json", "fnhost.yaml", "fnhost.yml")
MAX_MANIFEST_BYTES = 64 * 1024
# An entry that claims to inflate more than this ratio (and past 1 MiB) is a bomb.
MAX_COMPRESSION_RATIO = 1000
RATIO_MIN_BYTES = 1 << 20
MAX_NAME_CHARS = 1024
MAX_NAME_PART_BYTES = 255
_CHUNK = 64 * 1024
_COMPRESSIONS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PYTHON_RE = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
# Errors a corrupt member raises while it is read (bz2 reports bad data as OSError).
_MEMBER_ERRORS = (
    zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, OSError,
    ValueError, RuntimeError,
)


@dataclass(frozen=True)
class BundleLimits:
    max_bytes: int
    max_unpacked_bytes: int
    max_entries: int


@dataclass(frozen=True)
class Bundle:
    """What an upload is, as learnt from its central directory and manifest."""

    sha256: str
    version: str
    size: int
    unpacked_size: int
    entries: int
    manifest: dict[str, Any]
    config: FunctionConfig
    pickle: str | None
    python: str | None


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    path: str  # normalised: no leading "./", no empty parts, no trailing "/"
    is_dir: bool


def handler_module_paths(handler: str) -> list[str]:
    """Where the module of handler `a.b.c` may live: `a/b.py`, `a/b/__init__.py`."""
    module, sep, _ = handler.rpartition(".")
    if not sep or not module:
        raise ValueError(f"handler {handler!r} has no module part")
    base = module.replace(".", "/")
    return [f"{base}.py", f"{base}/__init__.py"]


def inspect_bundle(
    data: bytes | IO[bytes],
    limits: BundleLimits,
    config_override: dict[str, Any] | None = None,
    runtime_python: str = "3.11",
) -> Bundle:
    """Validate an uploaded bundle without unpacking it and resolve its configuration.

    `data` is the bytes or a seekable file (an upload spooled to disk), read in place."""
    size = _check_size(data, limits)
    with _open_zip(data) as zf:
        entries = _check_archive(zf, limits)
        files = {e.path: e for e in entries if not e.is_dir}
        manifest = _read_manifest(zf, files)
        unpacked = sum(info.file_size for info in zf.infolist())
        count = len(zf.infolist())
    config = _resolve_config(manifest, config_override)
    pickle_name, python = _check_pickle(manifest, files, config, runtime_python)
    if pickle_name is None:
        _check_handler(config.handler, set(files))
    sha = _digest(data)
    return Bundle(
        sha256=sha, version=sha[:12], size=size, unpacked_size=unpacked, entries=count,
        manifest=manifest, config=config, pickle=pickle_name, python=python,
    )


def unpack_bundle(data: bytes | IO[bytes], dest: Path, limits: BundleLimits) -> None:
    """Unpack into `dest` atomically; an existing `dest` (same version) is kept as it is."""
    _check_size(data, limits)
    with _open_zip(data) as zf:
        entries = _check_archive(zf, limits)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(8)}"
        _mkdir(tmp)
        try:
            _extract(zf, entries, tmp, limits.max_unpacked_bytes)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not os.path.lexists(dest):
                    raise
                # Another unpack of the same version won the race: keep its copy.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _size(data: bytes | IO[bytes]) -> int:
    if isinstance(data, bytes):
        return len(data)
    return data.seek(0, os.SEEK_END)


def _digest(data: bytes | IO[bytes]) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    data.seek(0)
    digest = hashlib.sha256()
    while chunk := data.read(_CHUNK * 16):
        digest.update(chunk)
    return digest.hexdigest()


def _check_size(data: bytes | IO[bytes], limits: BundleLimits) -> int:
    size = _size(data)
    if size > limits.max_bytes:
        raise PayloadTooLarge(
            f"bundle is {size} bytes, over the limit of {limits.max_bytes} bytes "
            "(bundle_max_bytes)"
        )
    return size


@contextmanager
def _open_zip(data: bytes | IO[bytes]) -> Iterator[zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, NotImplementedError):
        raise InvalidBundle("the body is not a zip archive") from None
    with zf:
        yield zf


def _check_archive(zf: zipfile.ZipFile, limits: BundleLimits) -> list[_Entry]:
    """Every check that needs only the central directory; returns the entries to unpack."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise PayloadTooLarge(
            f"bundle has {len(infos)} entries, over the limit of {limits.max_entries} "
            "(bundle_max_entries)"
        )
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_unpacked_bytes:
        raise PayloadTooLarge(
            f"bundle unpacks to {declared} bytes, over the limit of "
            f"{limits.max_unpacked_bytes} bytes (bundle_max_unpacked_bytes)"
        )
    entries: list[_Entry] = []
    seen: set[str] = set()
    for info in infos:
        path = _entry_path(info)
        shown = repr(info.orig_filename[:200])
        _check_entry_kind(info, shown)
        if path in seen:
            raise InvalidBundle(f"bundle entry {shown} appears more than once")
        seen.add(path)
        if path:  # a "./" entry names the root itself
            entries.append(_Entry(info, path, info.orig_filename.endswith("/")))
    files = {e.path for e in entries if not e.is_dir}
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        while parent:
            if parent in files:
                raise InvalidBundle(f"bundle entry {parent!r} is both a file and a directory")
            parent = parent.rpartition("/")[0]
    return entries


def _entry_path(info: zipfile.ZipInfo) -> str:
    # orig_filename still holds what zipfile cuts at a NUL in `filename`.
    raw = info.orig_filename
    shown = repr(raw[:200])
    if not raw:
        raise InvalidBundle("bundle has an entry with an empty name")
    if _CONTROL_RE.search(raw):
        raise InvalidBundle(f"bundle entry {shown} has a NUL or control character in its name")
    if "\\" in raw:
        raise InvalidBundle(f"bundle entry {shown} has a backslash in its name")
    if raw.startswith("/") or _DRIVE_RE.match(raw):
        raise InvalidBundle(f"bundle entry {shown} is an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidBundle(f"bundle entry {shown} has a '..' path component")
    if len(raw) > MAX_NAME_CHARS or any(len(p.encode()) > MAX_NAME_PART_BYTES for p in parts):
        raise InvalidBundle(f"bundle entry {shown} has a name that is too long")
    if not parts and not raw.endswith("/"):
        raise InvalidBundle(f"bundle entry {shown} has an empty name")
    return "/".join(parts)


def _check_entry_kind(info: zipfile.ZipInfo, shown: str) -> None:
    # Unix modes live in the high 16 bits; other systems leave them 0, so the check is
    # made whatever create_system says.
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidBundle(f"bundle entry {shown} is a symbolic link")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidBundle(f"bundle entry {shown} is not a regular file or directory")
    if info.flag_bits & 0x1:
        raise InvalidBundle(f"bundle entry {shown} is encrypted")
    if info.compress_type not in _COMPRESSIONS:
        raise InvalidBundle(
            f"bundle entry {shown} uses unsupported compression method {info.compress_type}"
        )
    if info.file_size > RATIO_MIN_BYTES and (
        info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    ):
        raise InvalidBundle(
            f"bundle entry {shown} claims a compression ratio over {MAX_COMPRESSION_RATIO}:1"
        )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    try:
        with zf.open(info) as src:
            return src.read(cap + 1)
    except _MEMBER_ERRORS as exc:
        raise _corrupt(info, exc) from None


def _read_manifest(zf: zipfile.ZipFile, files: dict[str, _Entry]) -> dict[str, Any]:
    present = [name for name in MANIFEST_NAMES if name in files]
    if not present:
        return {}
    if len(present) > 1:
        raise InvalidBundle(f"bundle has more than one manifest: {', '.join(present)}")
    name = present[0]
    info = files[name].info
    if info.file_size > MAX_MANIFEST_BYTES:
        raise InvalidBundle(f"{name} is larger than {MAX_MANIFEST_BYTES} bytes", field=name)
    raw = _read_member(zf, info, MAX_MANIFEST_BYTES)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidBundle(f"{name} is larger than {MAX_MANIFEST_BYTES} bytes", field=name)
    try:
        text = raw.decode("utf-8")
        manifest = json.loads(text) if name.endswith(".json") else _load_yaml(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError, RecursionError) as exc:
        detail = str(exc).replace("\n", " ")[:300]
        raise InvalidBundle(f"{name} is not valid: {detail}", field=name) from None
    if not isinstance(manifest, dict):
        raise InvalidBundle(f"{name} must hold a mapping of settings", field=name)
    for key in manifest:
        if key not in CONFIG_KEYS | MANIFEST_EXTRA_KEYS:
            raise InvalidConfig(f"unknown key {key!r} in {name}", field=str(key))
    return manifest


def _load_yaml(text: str) -> Any:
    # Aliases let a few bytes stand for an exponentially large document; a manifest
    # has no use for them.
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError("YAML aliases are not allowed")
    return yaml.safe_load(text)


def _resolve_config(manifest: dict[str, Any], override: dict[str, Any] | None) -> FunctionConfig:
    merged = {key: value for key, value in manifest.items() if key in CONFIG_KEYS}
    for key, value in (override or {}).items():
        if key not in CONFIG_KEYS:
            raise InvalidConfig(f"unknown config key {key!r}", field=str(key))
        base = merged.get(key)
        if key == "async" and isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return parse_config(merged)


def _check_pickle(
    manifest: dict[str, Any], files: dict[str, _Entry], config: FunctionConfig, runtime_python: str
) -> tuple[str | None, str | None]:
    pickle_name = manifest.get("pickle")
    python = manifest.get("python")
    if pickle_name is not None and (not isinstance(pickle_name, str) or not pickle_name):
        raise InvalidConfig("pickle must name a file in the bundle", field="pickle")
    if python is not None and (not isinstance(python, str) or not _PYTHON_RE.match(python)):
        raise InvalidConfig("python must be a version like 3.11 or 3.11.9", field="python")
    if pickle_name is None:
        return None, python
    if pickle_name not in files:
        raise InvalidBundle(f"pickle file {pickle_name[:200]!r} not found in the bundle",
                            field="pickle")
    if python is None:
        raise InvalidConfig("python (the version that pickled the bundle) is required "
                            "with pickle", field="python")
    pickled = ".".join(python.split(".")[:2])
    if pickled != ".".join(runtime_python.split(".")[:2]):
        raise InvalidBundle(
            f"bundle was pickled with Python {pickled} but runtime {config.runtime} runs "
            f"{runtime_python}; pickle it again with Python {runtime_python}",
            field="python",
        )
    return pickle_name, python


def _check_handler(handler: str, files: set[str]) -> None:
    paths = handler_module_paths(handler)
    if any(_module_present(files, path) for path in paths):
        return
    module = handler.rpartition(".")[0]
    message = (
        f"handler module {module!r} not found in the bundle (looked for {', '.join(paths)})"
    )
    tops = {name.partition("/")[0] for name in files if "/" in name}
    if any(_module_present(files, f"{top}/{path}") for top in tops for path in paths):
        message += "; the code must be at the zip's root, not inside a folder"
    raise InvalidBundle(message, field="handler")


def _module_present(files: set[str], source_path: str) -> bool:
    """`a/b.py` or its compiled forms `a/b.pyc`, `a/b.so`, `a/b.<abi tag>.so`."""
    base = source_path.removesuffix(".py")
    if source_path in files or f"{base}.pyc" in files:
        return True
    ext = re.compile(re.escape(base) + r"(\.[A-Za-z0-9_-]+)?\.so")
    return any(ext.fullmatch(name) for name in files)


def _mkdir(path: Path) -> None:
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)  # the umask may have narrowed it


def _extract(zf: zipfile.ZipFile, entries: list[_Entry], root: Path, cap: int) -> None:
    # Names are checked ("..", absolute, backslash) and no symlink is ever created under
    # the fresh `root`, so every path below stays inside it.
    made: set[str] = set()
    written = 0
    for entry in entries:
        parts = entry.path.split("/")
        dirs = parts if entry.is_dir else parts[:-1]
        for depth in range(1, len(dirs) + 1):
            sub = "/".join(dirs[:depth])
            if sub not in made:
                _mkdir(root / sub)
                made.add(sub)
        if entry.is_dir:
            continue
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(root / entry.path, flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            written = _copy_member(zf, entry.info, out, written, cap)


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], written: int, cap: int
) -> int:
    """Copy one entry in chunks, counting the bytes actually produced against `cap`."""
    try:
        src = zf.open(info)
    except _MEMBER_ERRORS as exc:
        raise _corrupt(info, exc) from None
    with src:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except _MEMBER_ERRORS as exc:
                raise _corrupt(info, exc) from None
            if not chunk:
                return written
            written += len(chunk)
            if written > cap:
                raise InvalidBundle(
                    f"bundle unpacks to more than {cap} bytes (bundle_max_unpacked_bytes); "
                    f"stopped at entry {info.orig_filename[:200]!r}, whose declared size is wrong"
                )
            out.write(chunk)


def _corrupt(info: zipfile.ZipInfo, exc: BaseException) -> InvalidBundle:
    return InvalidBundle(f"bundle entry {info.orig_filename[:200]!r} is corrupt: {exc}")
