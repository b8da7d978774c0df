"""The static checks: `make lint`, and one test each in `make test` (tests/test_static_checks.py).

    .venv/bin/python -m scripts.lint            # all of them; exit 1 when one fails
    .venv/bin/python -m scripts.lint ruff mypy  # some

Each tool comes from the dev extra of pyproject.toml (installed into .venv by scripts/bootstrap)
and reads its settings there (ruff, mypy) or in the files it checks (shellcheck, hadolint
pragmas). The files are the repository's own: tracked, or new and not ignored.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the tools sit next to the interpreter that runs this
_SHELL_SHEBANG = re.compile(rb"#!\s*\S*(/|env\s+)(ba|da)?sh(\s|$)")


def repository_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def shell_scripts() -> list[str]:
    """*.sh and every file whose first line names bash or sh."""
    found = []
    for name in repository_files():
        if name.endswith(".sh"):
            found.append(name)
            continue
        with open(ROOT / name, "rb") as file:
            first = file.readline(200)
        if _SHELL_SHEBANG.match(first):
            found.append(name)
    return found


def dockerfiles() -> list[str]:
    return [name for name in repository_files() if Path(name).name.startswith("Dockerfile")]


def workflows() -> list[str]:
    return [name for name in repository_files()
            if name.startswith(".github/workflows/") and name.endswith((".yml", ".yaml"))]


@dataclass(frozen=True)
class Check:
    name: str
    argv: Callable[[], list[str]]


CHECKS = [
    Check("ruff", lambda: [str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise", "."]),
    Check("mypy", lambda: [str(BIN / "mypy")]),  # files and strictness: [tool.mypy] in pyproject.toml
    Check("shellcheck", lambda: [str(BIN / "shellcheck"), *shell_scripts()]),
    Check("hadolint", lambda: [str(BIN / "hadolint"), "--no-color", *dockerfiles()]),
    Check("actionlint", lambda: [str(BIN / "actionlint"), "-no-color", *workflows()]),
]


@dataclass(frozen=True)
class Result:
    check: str
    returncode: int
    output: str
    seconds: float


def run(check: Check) -> Result:
    started = time.monotonic()
    done = subprocess.run(check.argv(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Result(check.name, done.returncode, done.stdout, time.monotonic() - started)


def main(argv: list[str]) -> int:
    wanted = [check for check in CHECKS if not argv or check.name in argv]
    unknown = set(argv) - {check.name for check in CHECKS}
    if unknown:
        print(f"unknown check(s): {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CHECKS)}",
              file=sys.stderr)
        return 2
    failed = []
    for check in wanted:
        result = run(check)
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"== {check.name}: {status} in {result.seconds:.1f} s")
        if result.returncode != 0:
            print(result.output.rstrip())
            failed.append(check.name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
