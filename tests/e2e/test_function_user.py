"""Functions run as a uid and gid that no host account has (runtime/constants.py).

A function that escaped its container, or a file it left on a shared mount, must
not act as, or belong to, a person or service on the host.
"""

from __future__ import annotations

import grp
import pwd

import docker
import httpx
import pytest

from runtime.constants import CONTAINER_IDS, CONTAINER_USER
from runtime.settings import Settings
from tests.harness import deploy, function_zip, invoke

WHO = """
import os


def handler(event, context):
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "egid": os.getegid(), "groups": os.getgroups()}
"""


def test_function_ids_have_no_host_account(tenant: httpx.Client) -> None:
    assert deploy(tenant, "who", function_zip(WHO)).status_code == 201
    r = invoke(tenant, "who", {})
    assert r.status_code == 200 and "x-function-error" not in r.headers, r.text
    seen = r.json()
    uid, gid = seen["uid"], seen["gid"]
    assert (seen["euid"], seen["egid"]) == (uid, gid), seen
    assert uid != 0 and gid != 0, seen
    assert uid in CONTAINER_IDS and gid in CONTAINER_IDS, seen
    assert set(seen["groups"]) <= {gid}, seen  # no supplementary group of the host
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    with pytest.raises(KeyError):
        grp.getgrgid(gid)


def test_image_default_user_is_the_functions() -> None:
    """`docker run` of the image without --user runs as the same ids (scripts/build-image)."""
    engine = docker.from_env()
    try:
        image = engine.api.inspect_image(Settings().runtime_image)
    finally:
        engine.close()
    assert image["Config"]["User"] == CONTAINER_USER, image["Config"]
