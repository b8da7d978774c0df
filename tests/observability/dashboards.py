"""Walk generated Grafana dashboard JSON: every query of every panel, ready to send to Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# Grafana's built-in range variables, replaced with a concrete window for evaluation.
RANGE_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
# Series families fed only by services that cannot run on the test machines.
EDGE_ONLY_PREFIXES = ("traefik_", "cloudflared_")
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"dashboard {self.dashboard!r}, panel {self.panel!r}, query {self.ref_id}: {self.expr}"


def panels(dashboard: Mapping) -> Iterator[Mapping]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def queries(rendered: Mapping[str, str]) -> list[PanelQuery]:
    found = []
    for text in rendered.values():
        dashboard = json.loads(text)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append(PanelQuery(dashboard["title"], panel["title"], target.get("refId", "?"),
                                            target["expr"]))
    return found


def substitute(expr: str, variables: Mapping[str, str], window: str) -> str:
    """Replace template variables (longest name first, so $model never eats $model_x) and range variables."""
    for name in RANGE_VARIABLES:
        expr = expr.replace(name, window)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def template_variables(rendered: Mapping[str, str]) -> dict[str, dict]:
    """Variable name -> its definition, across all dashboards."""
    return {var["name"]: var for text in rendered.values() for var in json.loads(text)["templating"]["list"]}


def is_edge_only(expr: str) -> bool:
    """True when every metric the expression reads comes from Traefik or cloudflared."""
    names = [n for n in metric_names(expr)]
    return bool(names) and all(n.startswith(EDGE_ONLY_PREFIXES) for n in names)


PROMQL_WORDS = {"sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg",
                "count", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "vector",
                "le", "label_values", "bool", "offset", "clamp_min", "clamp_max", "abs", "topk", "bottomk",
                "quantile", "e", "inf", "nan"}


def metric_names(expr: str) -> list[str]:
    """Metric names read by a PromQL expression (a light scan: label matchers and strings removed)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    names = []
    for match in METRIC_NAME.finditer(stripped):
        word = match.group(0)
        following = stripped[match.end():].lstrip()[:1]
        if word.lower() in PROMQL_WORDS or following == "(" or re.fullmatch(r"[0-9.]+", word):
            continue
        names.append(word)
    return names


def label_values_query(query: str) -> tuple[str, str] | None:
    """Grafana's ``label_values(selector, label)`` -> (selector, label); None for other query forms."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
    return (match.group(1), match.group(2)) if match else None
