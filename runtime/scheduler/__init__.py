"""The scheduler: consumes invocations, runs them in the warm pool, answers."""
