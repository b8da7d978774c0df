"""The node's Grafana configuration as code: grafanalib dashboards and provisioning files.

`render.py` is the interface the Pulumi program uses; `*.dashboard.py` are the dashboards,
`panels.py` the few helpers they share; `dashboards/*.json` is the committed output.
"""
