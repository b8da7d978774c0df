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


def test_every_config_key_is_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [key for key in all_keys() if f"| `{key}` |" not in readme]
    assert missing == [], f"list these keys in the README's 'Stack configuration keys': {missing}"
