"""Flow-control policies: small pure objects fed signals by the scheduler and the gateway."""
