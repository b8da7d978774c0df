"""The Traefik v3 JSON Schemas (../shared/schemas): the static configuration (traefik-v3.json)
and the file provider's dynamic configuration (traefik-v3-file-provider.json), which is what
the program renders and uploads as dynamic/tls.yml and dynamic/routes.yml."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(os.environ.get("LLM_NODE_SCHEMAS", Path(__file__).resolve().parents[3] / "shared" / "schemas"))
STATIC_SCHEMA = SCHEMAS / "traefik-v3.json"
DYNAMIC_SCHEMA = SCHEMAS / "traefik-v3-file-provider.json"


@cache
def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def validator(path: Path) -> jsonschema.Draft7Validator:
    schema = load(path)
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    return jsonschema.Draft7Validator(schema)


def errors(path: Path, document: Any) -> list[str]:
    """Every schema violation, as 'path.to.key: message' lines (empty when valid)."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator(path).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
