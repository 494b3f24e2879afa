"""Fails on the first attempt and succeeds on any later one (uses context.attempt)."""


def handler(event, context):
    if context.attempt <= 1:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return {"attempt": context.attempt, "message": "succeeded after a retry"}
