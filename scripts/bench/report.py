"""Figures and tables for the benchmarks: percentiles in milliseconds, one table per result."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from tabulate import tabulate


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, max(0, round(p * 10) - 1))]


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.2f}"  # NaN -> "-"


def summary_ms(values: Sequence[float]) -> list[str]:
    """[n, p50, p95, p99, max] with times in ms."""
    return [str(len(values)), ms(percentile(values, 50)), ms(percentile(values, 95)), ms(percentile(values, 99)),
            ms(max(values) if values else float("nan"))]


SUMMARY_HEADERS = ["n", "p50 ms", "p95 ms", "p99 ms", "max ms"]


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence], notes: Iterable[str] = ()) -> str:
    text = f"\n== {title} ==\n" + tabulate(list(rows), headers=list(headers), tablefmt="github", disable_numparse=True)
    for note in notes:
        text += f"\n  {note}"
    print(text, flush=True)
    return text
