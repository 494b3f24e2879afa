"""Sleeps event["seconds"] (default 1) and returns how long it slept."""

import time


def handler(event, context):
    seconds = 1.0
    if isinstance(event, dict) and event.get("seconds") is not None:
        seconds = float(event["seconds"])
    start = time.monotonic()
    time.sleep(max(0.0, seconds))
    return {"slept_s": round(time.monotonic() - start, 3)}
