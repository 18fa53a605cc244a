"""Thin route handlers. The work happens in inbound, routing, runtime and relay."""
