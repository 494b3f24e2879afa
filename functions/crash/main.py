"""Kills its own process (exit status 3) mid-invocation, as a segfault or OOM kill would."""

import os
import sys


def handler(event, context):
    print("about to crash", file=sys.stderr)
    os._exit(3)
