"""docs/configuration.md documents every stack key, image default and policy the code has."""

from __future__ import annotations

from pathlib import Path

from policy.pack import POLICIES
from stacks.config import all_keys
from stacks.images import DEFAULT_IMAGES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def test_every_config_key_is_documented():
    missing = [key for key in all_keys() if f"`{key}`" not in DOC]
    assert missing == [], f"document these keys in docs/configuration.md: {missing}"


def test_documented_image_defaults_are_the_table():
    for name, reference in DEFAULT_IMAGES.items():
        assert f"| `images.{name}` | `{reference}` |" in DOC, name


def test_every_policy_is_documented():
    for policy in POLICIES:
        assert f"| `{policy.name}` |" in DOC, policy.name


def test_every_config_key_has_a_row():
    missing = [key for key in all_keys() if f"| `{key}` |" not in DOC]
    assert missing == [], f"give these keys a table row in docs/configuration.md: {missing}"


def test_the_gateway_table_is_generated_from_the_schema():
    """docs/configuration.md holds what scripts/config_docs.py writes from llm_gateway/settings.py."""
    from scripts.config_docs import render

    assert render(DOC) == DOC, "docs/configuration.md is stale: run .venv/bin/python scripts/config_docs.py"


def test_the_readme_links_the_configuration_reference_instead_of_copying_it():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "(docs/configuration.md)" in readme
    copied = [key for key in all_keys() if f"| `{key}` |" in readme]
    assert copied == [], f"the README links docs/configuration.md; these rows belong there: {copied}"
