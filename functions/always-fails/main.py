"""Raises on every call: exercises error reporting, retries and on_failure destinations."""


def handler(event, context):
    raise ValueError("this function always fails")
