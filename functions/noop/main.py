"""Does nothing and returns null: measures the platform's own overhead."""


def handler(event, context):
    return None
