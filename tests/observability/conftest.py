"""Fixtures and reporting for the observability tests."""

from __future__ import annotations

import pytest

from tests.support.prometheus import prometheus_factory  # noqa: F401  (fixture)

# Panels that could only be checked for valid PromQL (their data comes from a service that
# cannot run here); the proof test adds to it and the terminal summary lists them.
NOT_CHECKED_LIVE = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[NOT_CHECKED_LIVE] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped_live = config.stash.get(NOT_CHECKED_LIVE, [])
    if skipped_live:
        terminalreporter.section("panels parsed but not checked against live data (Traefik/cloudflared)")
        for line in sorted(set(skipped_live)):
            terminalreporter.write_line(line)
