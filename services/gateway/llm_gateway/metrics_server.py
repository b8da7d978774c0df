"""/metrics for all worker processes, served by the parent on its own port.

prometheus-client's multiprocess mode: each worker writes its samples to files in
PROMETHEUS_MULTIPROC_DIR; this collector merges them at scrape time. Before merging it drops
the live gauges (in-flight requests) of workers that no longer exist -- a worker that
crashed never ran its own clean-up, and its in-flight count would otherwise stay forever.
Counters of dead workers are kept: what they counted did happen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

_PID_IN_NAME = re.compile(r"_(\d+)\.db$")


class _LiveWorkersCollector(Collector):
    def __init__(self, path: str):
        self._path = path
        self._merged = MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Metric]:
        for pid in {int(m.group(1)) for name in os.listdir(self._path) if (m := _PID_IN_NAME.search(name))}:
            if not _alive(pid):
                mark_process_dead(pid, self._path)
        merged: Iterable[Metric] = self._merged.collect()  # untyped (see pyproject.toml)
        return merged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_metrics_server(host: str, port: int, path: str) -> WSGIServer:
    registry = CollectorRegistry()
    registry.register(_LiveWorkersCollector(path))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
