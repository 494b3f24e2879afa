"""MongoDB store: tenants and keys, functions and versions, bundles in GridFS."""
