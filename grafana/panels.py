"""Small helpers shared by the *.dashboard.py files: the datasource, panel shapes, layout.

Every query names the datasource by its fixed uid, so dashboards survive a datasource
rename, and every engine query filters on the `model` template variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib.core import GridPos, Panel, RowPanel, Stat, Target, Template, TimeSeries

DATASOURCE_UID = "llm-node-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}

# Selector fragment for vLLM series: the served model chosen in the dashboard.
MODEL = 'model_name=~"$model"'


def model_variable() -> Template:
    """The `model` drop-down: every model the engines serve (multi-select, All by default)."""
    return Template(
        name="model",
        label="Model",
        query="label_values(vllm:num_requests_running, model_name)",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="All",
    )


Query = tuple[str, str]  # (PromQL expression, legend format)


def _targets(queries: Sequence[Query]) -> list[Target]:
    return [
        Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(title: str, queries: Sequence[Query], unit: str = "short", description: str = "",
               width: int = 8, stacked: bool = False) -> TimeSeries:
    panel = TimeSeries(
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=_targets(queries),
        unit=unit,
        legendDisplayMode="list",
        tooltipMode="multi",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=20 if stacked else 0,
        gridPos=GridPos(h=8, w=width, x=0, y=0),
    )
    return panel


def stat(title: str, queries: Sequence[Query], unit: str = "short", description: str = "",
         width: int = 6, mappings: Sequence[dict[str, Any]] = (), text_mode: str = "value_and_name") -> Stat:
    return Stat(
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=_targets(queries),
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
        textMode=text_mode,
        mappings=list(mappings),
        gridPos=GridPos(h=5, w=width, x=0, y=0),
    )


def layout(rows: Sequence[tuple[str, Sequence[Panel]]]) -> list[Panel]:
    """Place panels left to right under titled rows; each panel keeps its width and height."""
    placed: list[Panel] = []
    y = 0
    for title, panels in rows:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x, row_height = 0, 0
        for panel in panels:
            w, h = panel.gridPos.w, panel.gridPos.h
            if x + w > 24:
                x, y, row_height = 0, y + row_height, 0
            panel.gridPos = GridPos(h=h, w=w, x=x, y=y)
            placed.append(panel)
            x += w
            row_height = max(row_height, h)
        y += row_height
    return placed
