"""The gateway image is reproducible: its Python packages come from one lock file, the same
one the project's .venv installs (so the tests exercise the versions that ship)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "services" / "gateway"
LOCK = GATEWAY / "requirements.lock"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert match, f"requirements.lock: {line!r} is not an exact pin"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def test_every_gateway_dependency_is_pinned_in_the_lock():
    declared = tomllib.loads((GATEWAY / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = _pins()
    assert {_name(r) for r in declared} <= set(pins), "regenerate: pip-compile --strip-extras " \
        "--no-emit-index-url --no-emit-find-links --no-header -o requirements.lock pyproject.toml"


def test_the_image_and_the_venv_install_from_the_lock():
    dockerfile = (GATEWAY / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile and "pip install --no-deps -r requirements.lock" in dockerfile
    assert re.search(r"pip install --no-deps \.", dockerfile), "the package itself adds no dependencies"
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "-c services/gateway/requirements.lock" in bootstrap


def test_the_venv_runs_the_locked_versions():
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific extras (e.g. uvloop on Windows) may be absent
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs locked: {wrong} (rerun scripts/bootstrap)"
