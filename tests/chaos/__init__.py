"""make chaos: faults injected under load through gunicorn, with the click ledger checked after each."""
