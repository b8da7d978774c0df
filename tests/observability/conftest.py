"""Fixtures for the observability tests: a real Prometheus from tests/support/prometheus.py."""

from tests.support.prometheus import prometheus_factory  # noqa: F401  (fixture)
