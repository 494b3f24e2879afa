"""Asynchronous invocations: task statuses, submission, and the task lifecycle."""
