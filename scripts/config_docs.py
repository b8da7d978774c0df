#!/usr/bin/env python3
"""Write the gateway's settings table into docs/configuration.md from the gateway's schema.

The table sits between two marker comments; the rest of the file is written by hand and left
alone. Every row comes from llm_gateway/settings.py (name, type and bounds, default,
description), so the docs cannot disagree with what the gateway reads. tests/stacks/test_docs.py
fails when the committed file is not what this script writes.

    .venv/bin/python scripts/config_docs.py           # rewrite the block
    .venv/bin/python scripts/config_docs.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from llm_gateway.settings import DEPLOYMENT_FIELDS, SECRET_FIELDS, SECRETS_DIR_ENV, Settings, env_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = ("<!-- BEGIN GENERATED gateway settings: scripts/config_docs.py writes this table"
         " from llm_gateway/settings.py -->")
END = "<!-- END GENERATED gateway settings -->"

_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", SecretStr: "string"}


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in args)
    if origin is list:
        return f"list of {_TYPE_NAMES[args[0]]}s"
    if origin is dict:
        return f"map {_TYPE_NAMES[args[0]]} → {_TYPE_NAMES[args[1]]}"
    if type(None) in args:  # Optional
        return " or ".join(_TYPE_NAMES[arg] for arg in args if arg is not type(None)) + " or unset"
    text = _TYPE_NAMES[annotation]
    bounds = {type(m): m for m in field.metadata}
    low = bounds.get(annotated_types.Ge)
    high = bounds.get(annotated_types.Le)
    if low and high:
        return f"{text} {low.ge}\u2013{high.le}"  # an en dash: a range
    if low:
        text += f" ≥ {low.ge}"
    if annotated_types.Gt in bounds:
        text += f" > {bounds[annotated_types.Gt].gt}"
    if high:
        text += f" ≤ {high.le}"
    return text


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, dict):  # as written in a stack file (YAML flow style)
        return "`{" + ", ".join(f"{key}: {item}" for key, item in value.items()) + "}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    return f"`{value}`"


def _key(name: str) -> str:
    if name in SECRET_FIELDS:
        return f"secret: a file in `{SECRETS_DIR_ENV}`"
    if name in DEPLOYMENT_FIELDS:
        return "set by the node"
    return f"`gateway.{name}`"


def table() -> str:
    rows = ["| key | environment variable | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
    # Stack keys first, then what the node sets, then the secrets.
    order = sorted(Settings.model_fields, key=lambda name: (name in SECRET_FIELDS, name in DEPLOYMENT_FIELDS))
    for name in order:
        field = Settings.model_fields[name]
        if not field.description:
            raise SystemExit(f"llm_gateway/settings.py: give {name} a Field(description=...)")
        default = _default(field.get_default(call_default_factory=True))
        meaning = field.description.replace("|", "\\|")
        rows.append(f"| {_key(name)} | `{env_name(name)}` | {_type(field)} | {default} | {meaning} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with the block between the markers replaced by the current table."""
    head, found, rest = text.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{DOC}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{DOC} is stale: run scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
