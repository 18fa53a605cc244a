"""What a backend kind is: one unit with its config keys, defaults and factory (see providers/registry.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from providers.base import Provider
from providers.http import HttpConfig


class Options(BaseModel):
    """The config keys only one backend kind has, with their defaults (strict, like the whole config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Kind:
    """A backend kind: its name in the config, its own keys, the base URL it defaults to (None: the
    config must give one), and how its provider is built from (transport, API key, its Options)."""

    name: str
    options: type[Options]
    build: Callable[[HttpConfig, str | None, Any], Provider]
    base_url: str | None = None
