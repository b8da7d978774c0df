"""`make test` fails on a lint or type error: one test per static check (scripts/lint.py).

A failure shows the tool's own output. `make lint` runs the same checks by themselves.
"""

from __future__ import annotations

import pytest

from scripts import lint


@pytest.mark.parametrize("check", lint.CHECKS, ids=lambda check: check.name)
def test_static_check(check: lint.Check) -> None:
    result = lint.run(check)
    assert result.returncode == 0, f"{check.name} found problems:\n{result.output}"
