"""The gateway: fnhost's HTTP API (Starlette on Hypercorn)."""
