"""Render the Grafana dashboards and provisioning files.

The Pulumi program (stacks/grafana.py) calls these and mounts the results:
  - provisioning_files(prometheus_url) -> under GRAFANA_CONFIG_DIR (/etc/grafana)
  - render_dashboards()                -> into DASHBOARDS_DIR, which the provider reads
The same JSON is committed in grafana/dashboards/ (kept in sync by a test) so reviewers
see dashboard changes in diffs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from grafanalib._gen import DashboardEncoder, loader

from grafana.panels import DATASOURCE_UID
from prometheus.render import SCRAPE_INTERVAL

HERE = Path(__file__).parent
DASHBOARD_SUFFIX = ".dashboard.py"
COMMITTED_DIR = HERE / "dashboards"
GRAFANA_CONFIG_DIR = "/etc/grafana"  # provisioning_files() keys are relative to it
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/llm-node"  # render_dashboards() files go here
FOLDER = "LLM node"


def dashboard_sources() -> list[Path]:
    return sorted(HERE.glob(f"*{DASHBOARD_SUFFIX}"))


def render_dashboards() -> dict[str, str]:
    """File name (e.g. ``node-overview.json``) -> dashboard JSON, from grafana/*.dashboard.py."""
    rendered = {}
    for source in dashboard_sources():
        # grafanalib's own loader: it runs the file and takes its `dashboard` variable.
        dashboard = loader(str(source)).auto_panel_ids()
        name = source.name[: -len(DASHBOARD_SUFFIX)] + ".json"
        rendered[name] = json.dumps(dashboard.to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"
    return rendered


def provisioning_files(prometheus_url: str, dashboards_dir: str = DASHBOARDS_DIR) -> dict[str, str]:
    """Path relative to /etc/grafana -> file text: the Prometheus datasource and the dashboards provider."""
    datasource = {
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus",
            "uid": DATASOURCE_UID,  # dashboards reference this uid, never the name
            "type": "prometheus",
            "access": "proxy",
            "url": prometheus_url,
            "isDefault": True,
            "editable": False,
            # Prometheus' scrape interval, so $__rate_interval never spans under 4 scrapes.
            "jsonData": {"timeInterval": SCRAPE_INTERVAL, "httpMethod": "POST"},
        }],
    }
    provider = {
        "apiVersion": 1,
        "providers": [{
            "name": "llm-node",
            "orgId": 1,
            "folder": FOLDER,
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,  # dashboards are code: edit the .dashboard.py files
            "updateIntervalSeconds": 30,
            "options": {"path": dashboards_dir},
        }],
    }
    return {
        "provisioning/datasources/prometheus.yml": yaml.safe_dump(datasource, sort_keys=False),
        "provisioning/dashboards/llm-node.yml": yaml.safe_dump(provider, sort_keys=False),
    }


def write_committed() -> None:
    """Regenerate grafana/dashboards/*.json (python -m grafana.render)."""
    COMMITTED_DIR.mkdir(exist_ok=True)
    rendered = render_dashboards()
    for stale in COMMITTED_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (COMMITTED_DIR / name).write_text(text)


if __name__ == "__main__":
    write_committed()
