"""Routing rules: conditions on a request that pin its route before the classifier is asked.

A rule is the operator's policy, so it wins over the client's `x-crossover-route` header: a key marked
local-only stays local whatever the client asks. Rules are tried in config order; the first whose
conditions all hold decides, and the request is not scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from classifier import Features
from classifier.features import estimate_tokens


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    route: Literal["local", "api"]
    fallback: bool | None = None  # None: the router's setting; False keeps e.g. local-only data local
    # Conditions; None means "not checked". All that are set must hold.
    tools: bool | None = None
    response_format: frozenset[str] | None = None  # "text", "json_object", "json_schema"
    context_tokens_over: int | None = None
    max_tokens_over: int | None = None
    turns_over: int | None = None
    headers: tuple[tuple[str, str], ...] | None = None  # (lower-case name, exact value)
    api_keys: frozenset[str] | None = None  # the gateway key the client authenticated with

    def matches(self, features: Features, headers: Mapping[str, str], api_key: str | None) -> bool:
        if self.tools is not None and features.has_tools != self.tools:
            return False
        if self.response_format is not None and features.response_format not in self.response_format:
            return False
        if (
            self.context_tokens_over is not None
            and estimate_tokens(features.total_chars) <= self.context_tokens_over
        ):
            return False
        if self.max_tokens_over is not None and (features.max_tokens or 0) <= self.max_tokens_over:
            return False
        if self.turns_over is not None and features.turns <= self.turns_over:
            return False
        if self.headers is not None and any(headers.get(k) != v for k, v in self.headers):
            return False
        return self.api_keys is None or api_key in self.api_keys


def first_match(
    rules: tuple[Rule, ...], features: Features, headers: Mapping[str, str], api_key: str | None
) -> Rule | None:
    for rule in rules:
        if rule.matches(features, headers, api_key):
            return rule
    return None
