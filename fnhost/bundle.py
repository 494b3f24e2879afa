"""Function bundles from what a user has at hand: a directory, a zip file, or a callable.

A directory is zipped as it is (caches and version-control metadata left out); a
callable is serialised with cloudpickle next to a manifest naming the Python version
that pickled it. The runtime unpickles it only inside the function's container, so
it must run the same Python minor version as this process: checked here, before
anything is uploaded.
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fnhost.errors import InvalidBundle

# The Python of each runtime a pickled callable can run on.
RUNTIME_PYTHON = {"python3.11": (3, 11)}
DEFAULT_RUNTIME = "python3.11"
PICKLE_NAME = "handler.pkl"
SKIPPED_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache"}


def from_path(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The zip bytes of a directory or a zip file, and the name the function defaults to."""
    p = Path(path)
    if p.is_dir():
        return zip_directory(p), p.resolve().name
    if p.is_file():
        data = p.read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise InvalidBundle(f"{p} is not a zip file (give a directory or a .zip)")
        return data, p.stem
    raise InvalidBundle(f"{p}: no such directory or zip file")


def zip_directory(root: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                full = Path(folder) / name
                zf.write(full, full.relative_to(root).as_posix())
    return out.getvalue()


def requirements_note(path: str | os.PathLike[str]) -> str | None:
    """What to tell the user of a directory that lists dependencies: the runtime image
    has the standard library (and cloudpickle) only, and installs nothing."""
    p = Path(path)
    if p.is_dir() and (p / "requirements.txt").is_file():
        return ("requirements.txt is not installed: the runtime (python3.11) has the standard "
                "library and cloudpickle only; vendor pure-Python packages into the directory "
                "(pip install -r requirements.txt --target DIR) before deploying")
    return None


def from_callable(handler: Callable[..., Any], runtime: str = DEFAULT_RUNTIME) -> bytes:
    """A bundle that runs `handler(event, context)` unpickled in the function's container."""
    if not callable(handler):
        raise InvalidBundle(f"{handler!r} is not callable")
    wanted = RUNTIME_PYTHON.get(runtime)
    if wanted is None:
        raise InvalidBundle(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIME_PYTHON)}")
    here = sys.version_info[:2]
    if here != wanted:
        raise InvalidBundle(
            f"a callable pickled by Python {here[0]}.{here[1]} cannot run on {runtime} "
            f"(Python {wanted[0]}.{wanted[1]}): deploy it from Python {wanted[0]}.{wanted[1]}, "
            "or deploy its source directory instead"
        )
    import cloudpickle

    manifest = {"pickle": PICKLE_NAME, "python": ".".join(map(str, sys.version_info[:3])),
                "runtime": runtime}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fnhost.json", json.dumps(manifest))
        zf.writestr(PICKLE_NAME, cloudpickle.dumps(handler))
    return out.getvalue()
