"""Backends: one module per kind, translation kept apart from transport. Never imports `gateway`."""
