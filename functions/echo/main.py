"""Returns the event unchanged: bytes in, bytes out; JSON in, JSON out."""


def handler(event, context):
    return event
