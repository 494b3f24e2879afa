"""Greets the caller: {"name": "Ada"} -> {"message": "hello, Ada"}."""


def handler(event, context):
    name = "world"
    if isinstance(event, dict) and event.get("name"):
        name = str(event["name"])
    return {"message": f"hello, {name}"}
