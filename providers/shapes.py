"""Shape checks for the client fields a translator reads: a field of the wrong type is the client's
mistake, refused with a 400 that names it, never a TypeError deep inside a translation.

Checks sit where a field is read (no upfront schema), so a request pays only for what it uses.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from providers.base import UnsupportedRequest

TYPE_NAMES = {
    str: "a string", bool: "a boolean", int: "an integer", float: "a number",
    list: "an array", dict: "an object", type(None): "null",
}  # fmt: skip

# The deepest nesting of objects and arrays a request body may have. orjson parses up to 1,024
# levels but serialises only up to 254, so a deeper body parsed fine and then failed on its way
# upstream; 128 leaves room for the levels a translation adds, and is far beyond any real request.
MAX_DEPTH = 128


def _orjson_depth_limit() -> int:
    """The deepest nesting orjson.dumps accepts (254 in orjson 3.x), asked of orjson itself."""
    value: list[Any] = []
    depth = 1
    while True:
        try:
            orjson.dumps([value])
        except TypeError:
            return depth
        value, depth = [value], depth + 1


# Wrapping a value in this many arrays makes orjson.dumps fail exactly when the value is nested
# deeper than MAX_DEPTH: a depth check at C speed (one serialisation, well under the parse it
# follows), instead of a walk over every container in Python (measured ~25x slower on a 60 kB body).
_PADDING = _orjson_depth_limit() - MAX_DEPTH


class _Padding(threading.local):
    """The arrays, built once per thread (building them per call cost 7 µs): the innermost one
    holds the value being checked for the span of one orjson.dumps."""

    def __init__(self) -> None:
        self.hole: list[Any] = []
        self.outer: list[Any] = self.hole
        for _ in range(_PADDING - 1):
            self.outer = [self.outer]


_padding = _Padding()


def nested_too_deep(value: Any) -> bool:
    padding = _padding
    padding.hole.append(value)
    try:
        orjson.dumps(padding.outer)
    except TypeError:
        return True
    finally:
        padding.hole.clear()
    return False


def type_name(value: Any) -> str:
    return TYPE_NAMES.get(type(value), "an unsupported value")


def wrong_type(where: str, expected: str, value: Any) -> UnsupportedRequest:
    return UnsupportedRequest(
        f"Invalid type for '{where}': expected {expected}, but got {type_name(value)} instead.", where
    )


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise wrong_type(where, "an object", value)
    return value


def obj_or_empty(value: Any, where: str) -> dict[str, Any]:
    """An optional object: absent (null) reads as {}."""
    return {} if value is None else obj(value, where)


def array_or_empty(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise wrong_type(where, "an array", value)
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise wrong_type(where, "a string", value)
    return value


def string_or_none(value: Any, where: str) -> str | None:
    return None if value is None else string(value, where)


def strings(value: Any, where: str) -> list[str]:
    """A string or an array of strings (OpenAI's `stop`, Anthropic's `stop_sequences`), as a list."""
    if isinstance(value, str):
        return [value] if value else []
    if value is None:
        return []
    if not isinstance(value, list):
        raise wrong_type(where, "a string or an array of strings", value)
    items: list[str] = value
    for i, item in enumerate(items):
        string(item, f"{where}[{i}]")
    return items


def string_array(value: Any, where: str) -> list[str]:
    """An optional array of strings (Anthropic's `stop_sequences`)."""
    if isinstance(value, str):
        raise wrong_type(where, "an array of strings", value)
    return strings(value, where)
