"""Prometheus /metrics helpers: they live with the local node (scripts/devnode/scrape.py)."""

from scripts.devnode.scrape import metric_sum, scrape

__all__ = ["metric_sum", "scrape"]
