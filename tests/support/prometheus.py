"""A real Prometheus (the Debian `prometheus` binary) for tests, and a small client for its HTTP API.

Reusable by any test that needs Prometheus to scrape something real:

    from tests.support.prometheus import start_prometheus

    prom = start_prometheus(config_text, work_dir=tmp_path, log_dir=log_dir,
                            rule_files={"x.rules.yml": "..."})
    try:
        prom.wait_for_targets_up({"vllm"}, timeout=60)
        series = prom.query('vllm:num_requests_running')
    finally:
        prom.stop()

or the ``prometheus_factory`` fixture below (it stops every instance it started). To use the
fixture from another test directory, import it into that directory's conftest.py:
``from tests.support.prometheus import prometheus_factory  # noqa: F401``.

Layout under ``work_dir``: ``prometheus.yml`` (the config), ``rules/`` (``rule_files``
written there; point the config's ``rule_files`` at ``rules_dir(work_dir)``) and ``data/``
(a fresh TSDB). Prometheus listens on 127.0.0.1 on a free port (never 9090).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .procs import ManagedProcess, free_port, http_ok

PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL_BIN = shutil.which("promtool") or "/usr/bin/promtool"


class PromQLError(Exception):
    """Prometheus refused a query (bad_data: a parse or type error in the expression)."""

    def __init__(self, expr: str, error_type: str, message: str):
        super().__init__(f"{error_type}: {message} (in {expr!r})")
        self.expr, self.error_type, self.message = expr, error_type, message


def rules_dir(work_dir: Path) -> Path:
    """Where start_prometheus writes ``rule_files``; render the config's rule_files to point here."""
    return Path(work_dir) / "rules"


@dataclass
class Prometheus:
    url: str
    work_dir: Path
    proc: ManagedProcess

    # --- HTTP API -------------------------------------------------------------------------
    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PromQLError on an error answer."""
        query = urllib.parse.urlencode(params or {})
        request = urllib.request.Request(f"{self.url}/api/v1/{path}?{query}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400 bad_data / 422 execution errors carry JSON
            body = json.load(error)
        if body.get("status") != "success":
            raise PromQLError((params or {}).get("query", path), body.get("errorType", "?"), body.get("error", "?"))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; returns the result list (vector/matrix entries, or [scalar] wrapped)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict]:
        return self.api("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                        "step": step})["result"]

    def active_targets(self) -> list[dict]:
        return self.api("targets", {"state": "active"})["activeTargets"]

    def rule_groups(self) -> list[dict]:
        return self.api("rules")["groups"]

    # --- waiting ------------------------------------------------------------------------------
    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
        """Poll ``condition`` until true; on a slow machine this waits as long as needed, up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise RuntimeError(f"prometheus exited before {what}:\n{self.proc.log_tail()}")
            try:
                if condition():
                    return
            except PromQLError:
                raise
            except Exception:  # noqa: BLE001 - the API not answering yet counts as "not yet"
                pass
            if time.monotonic() > deadline:
                targets = [(t["labels"].get("job"), t["health"], t.get("lastError")) for t in self._targets_or_empty()]
                raise TimeoutError(f"prometheus: not {what} after {timeout:.0f}s; targets: {targets}")
            time.sleep(interval)

    def _targets_or_empty(self) -> list[dict]:
        try:
            return self.active_targets()
        except Exception:  # noqa: BLE001 - only for an error message: what it can tell
            return []

    def wait_for_targets_up(self, jobs: Iterable[str], timeout: float = 60.0) -> None:
        """Until every target of each job in ``jobs`` has been scraped successfully."""
        wanted = set(jobs)

        def all_up() -> bool:
            targets = [t for t in self.active_targets() if t["labels"].get("job") in wanted]
            seen = {t["labels"]["job"] for t in targets}
            return seen == wanted and all(t["health"] == "up" for t in targets)

        self.wait_until(all_up, timeout, f"scraping {sorted(wanted)} successfully")

    def wait_for_series(self, expr: str, timeout: float = 60.0, minimum: int = 1) -> list[dict]:
        """Until ``expr`` returns at least ``minimum`` series; returns them."""
        found: list[dict] = []

        def enough() -> bool:
            nonlocal found
            found = self.query(expr)
            return len(found) >= minimum

        self.wait_until(enough, timeout, f"returning {minimum}+ series for {expr!r}")
        return found

    def stop(self) -> int | None:
        return self.proc.stop()


def start_prometheus(config_text: str, work_dir: Path, log_dir: Path | None = None,
                     rule_files: Mapping[str, str] | None = None, name: str = "prometheus",
                     timeout: float = 60.0, port: int | None = None) -> Prometheus:
    """Start Prometheus with ``config_text`` on ``port`` (default: a free one) and a fresh TSDB under ``work_dir``.

    Pass ``port`` (from ``free_port()``) when the config must name Prometheus itself as a target.
    """
    work_dir = Path(work_dir)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    rules = rules_dir(work_dir)
    rules.mkdir(exist_ok=True)
    for filename, text in (rule_files or {}).items():
        (rules / filename).write_text(text)
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(config_text)

    port = port or free_port()
    argv = [
        PROMETHEUS_BIN,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={work_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    proc = ManagedProcess(name, argv, Path(log_dir or work_dir))
    url = f"http://127.0.0.1:{port}"
    proc.ready_or_stopped(lambda: http_ok(url + "/-/ready"), timeout, "ready")
    return Prometheus(url=url, work_dir=work_dir, proc=proc)


@pytest.fixture
def prometheus_factory(tmp_path_factory):
    """``prometheus_factory(config_text, rule_files=None) -> Prometheus``; all stopped at teardown.

    Each call gets its own temporary work dir. ``config_text`` may be a callable taking that
    dir, so the config can point ``rule_files`` at ``rules_dir(work_dir)``::

        prom = prometheus_factory(lambda d: render_prometheus_config(targets, rules_dir=rules_dir(d)),
                                  rule_files=rule_files())
    """
    started: list[Prometheus] = []

    def factory(config_text: str | Callable[[Path], str], rule_files: Mapping[str, str] | None = None,
                work_dir: Path | None = None, port: int | None = None) -> Prometheus:
        work_dir = work_dir or tmp_path_factory.mktemp("prometheus")
        text = config_text(work_dir) if callable(config_text) else config_text
        prom = start_prometheus(text, work_dir, rule_files=rule_files, port=port)
        started.append(prom)
        return prom

    yield factory
    for prom in started:
        prom.stop()
