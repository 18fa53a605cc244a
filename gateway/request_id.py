"""The request's id: the client's `x-request-id` when it is a sane token, else a fresh one. It is
returned on the response, logged, and sent to the backend, so one id finds a request everywhere."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

REQUEST_ID_HEADER = "x-request-id"
MAX_LENGTH = 128
# What ids look like in practice (UUIDs, hex, base64, "svc:123"); anything else, or longer, is replaced
# rather than copied into logs and upstream headers.
_SANE = re.compile(rf"[A-Za-z0-9._:+=/@-]{{1,{MAX_LENGTH}}}").fullmatch


def new_request_id() -> str:
    """16 random hex digits: unique across workers and replicas without coordination (~0.5 µs)."""
    return os.urandom(8).hex()


def request_id(headers: Mapping[str, str]) -> str:
    """The id of a request with these (lower-case) headers."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _SANE(given):
        return given
    return new_request_id()
