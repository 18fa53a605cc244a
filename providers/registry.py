"""Backend kinds by name. A new kind is a module in providers/ that declares its `KIND`, and a row
here: the config's schema, `crossover check` and the runtime all find it through KINDS."""

from __future__ import annotations

from providers import anthropic, openai_compat
from providers.kind import Kind

KINDS: dict[str, Kind] = {kind.name: kind for kind in (openai_compat.KIND, anthropic.KIND)}
