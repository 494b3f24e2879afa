"""Prints event["lines"] (default 10) lines to stdout and a few to stderr."""

import sys


def handler(event, context):
    lines = 10
    if isinstance(event, dict) and event.get("lines") is not None:
        lines = int(event["lines"])
    for i in range(lines):
        print(f"stdout line {i + 1} of {lines} (request {context.request_id})")
    errors = min(lines, 3)
    for i in range(errors):
        print(f"stderr line {i + 1} of {errors}", file=sys.stderr)
    return {"stdout_lines": lines, "stderr_lines": errors}
