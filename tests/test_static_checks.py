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


def test_the_checks_see_the_repository_files() -> None:
    """An empty file list would pass vacuously: each check is handed the files it is for."""
    scripts = lint.shell_scripts()
    assert {".ci/run", "scripts/bootstrap", "scripts/lib/env.sh", "tests/load/run"} <= set(scripts)
    assert not [name for name in scripts if name.endswith(".py")]
    assert {"services/gateway/Dockerfile", "services/engine/Dockerfile",
            "tests/deploy/standins/postgres/Dockerfile"} <= set(lint.dockerfiles())
    assert lint.workflows() == [".github/workflows/node.yml"]
