"""Event contract v1 as JSON Schema files, compiled once into fast validators.

The JSON files under ``schemas/v1`` are the contract upstream teams read; this module turns
them into callables so the pipeline validates every event against exactly those files.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import fastjsonschema

SCHEMA_DIR = Path(__file__).resolve().parent
SUPPORTED_VERSIONS = (1,)

Validator = Callable[[dict[str, Any]], Any]


def schema_path(version: int, event_type: str) -> Path:
    return SCHEMA_DIR / f"v{version}" / f"{event_type}.json"


def event_types(version: int = 1) -> list[str]:
    """Every event type the contract version defines (one schema file each)."""
    return sorted(p.stem for p in (SCHEMA_DIR / f"v{version}").glob("*.json") if p.stem != "envelope")


def _inline_refs(node: Any, base: Path) -> Any:
    """Replace local file ``$ref``s by the referenced schema so fastjsonschema needs no resolver."""
    if isinstance(node, dict):
        if "$ref" in node and len(node) == 1:
            target = json.loads((base / node["$ref"]).read_text())
            target.pop("$id", None)
            target.pop("$schema", None)
            return _inline_refs(target, base)
        return {k: _inline_refs(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, base) for v in node]
    return node


def load_schema(version: int, event_type: str) -> dict[str, Any]:
    path = schema_path(version, event_type)
    return _inline_refs(json.loads(path.read_text()), path.parent)


@lru_cache(maxsize=None)
def validators(version: int = 1) -> dict[str, Validator]:
    """event_type -> compiled validator raising fastjsonschema.JsonSchemaException."""
    return {et: fastjsonschema.compile(load_schema(version, et)) for et in event_types(version)}
