"""Validators for the official OpenAI schemas in ../shared/data/openai-openapi.

The file says OpenAPI 3.1 yet keeps 3.0's `nullable: true` in places; those are rewritten into
type unions with "null" (and `null` added to enums) so that a 2020-12 validator reads them right.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SPEC = Path(__file__).resolve().parents[2] / "shared" / "data" / "openai-openapi" / "openapi.yaml.gz"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _components() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with gzip.open(SPEC, "rt", encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)
    components: dict[str, Any] = _nullable(spec["components"])
    return components


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": _components()})


def assert_valid(name: str, instance: Any) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
