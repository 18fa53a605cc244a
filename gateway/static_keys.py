"""Who a request is from, for the static keys of the config (`server.api_keys` with
`server.key_limits` and `server.teams`). Keys kept in the store are looked up elsewhere; this is the
one place the static ones become a `Principal`."""

from __future__ import annotations

from gateway.config import Settings
from gateway.principal import Principal


def principal_for(settings: Settings, api_key: str | None) -> Principal | None:
    """The principal of an authenticated static key; None for no key, or a key without limits."""
    if api_key is None or not settings.principals:
        return None
    return settings.principals.get(api_key)
