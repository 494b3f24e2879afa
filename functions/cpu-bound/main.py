"""Counts the primes up to event["n"] (default 100000) with a sieve: pure CPU work."""


def handler(event, context):
    n = 100_000
    if isinstance(event, dict) and event.get("n") is not None:
        n = int(event["n"])
    if n < 2:
        return {"n": n, "primes": 0, "largest": None}
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n + 1, i)))
    count = sum(sieve)
    largest = sieve.rindex(1)
    return {"n": n, "primes": count, "largest": largest}
