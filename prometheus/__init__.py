"""The node's Prometheus configuration as code: scrape config, recording and alert rules.

`render.py` is the interface the Pulumi program uses; `rules/` holds the rule files,
`tests/` their promtool unit tests.
"""
