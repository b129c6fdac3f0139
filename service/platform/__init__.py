"""The platform layer: database, Redis, errors, HTTP helpers, secrets, migrations and local services; no domain."""
