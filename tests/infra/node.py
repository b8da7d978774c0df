"""The node under test: one small interface, two implementations.

The infra tests are written once against :class:`NodeUnderTest`. ``LocalNode`` is the node
``make test`` starts on this machine (real vLLM on the CPU, the gateway, PostgreSQL, Redis,
Prometheus as processes); ``DeployedNode`` is a node that ``pulumi up`` made on a Docker
host, reached with testinfra (``--hosts=ssh://user@node``) and over its public URL.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests


@dataclass(frozen=True)
class Service:
    """One service of the node and how to recognise it.

    ``process`` is a regular expression matched against the command line of the process that
    listens on ``port``; ``port`` is where it listens (on the host for the local node, inside
    its container's network namespace for a deployed one).
    """

    name: str
    process: str
    port: int


@dataclass(frozen=True)
class Listener:
    """What actually listens on a service's port: the owning processes' command lines."""

    port: int
    command_lines: tuple[str, ...]


class NodeUnderTest(Protocol):
    kind: str  # "local" or "deployed"
    api_url: str  # the gateway as clients reach it (deployed: through Traefik over TLS)
    api_key: str  # a real key, created through the gateway's own admin path
    model: str  # the served model name
    services: tuple[Service, ...]
    expected_jobs: frozenset[str]  # Prometheus jobs that must be scraped and up

    def listener(self, service: Service) -> Listener: ...

    def http(self) -> requests.Session: ...

    def prometheus_targets(self) -> list[dict]: ...


def wait_for(condition, timeout: float, interval: float = 1.0):
    """Poll ``condition()`` until it returns a truthy value; returns it (or the last falsy one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def listeners_via_ss(host, port: int) -> Listener:
    """The processes listening on TCP ``port`` of ``host`` (testinfra), from ``ss -ltnp``."""
    out = host.run("ss -Hltnp sport = :%s", str(port)).stdout
    pids = sorted(set(re.findall(r"pid=(\d+)", out)))
    return Listener(port=port, command_lines=tuple(command_line(host, int(pid)) for pid in pids))


def command_line(host, pid: int) -> str:
    cmdline = host.file(f"/proc/{pid}/cmdline")
    return cmdline.content.replace(b"\0", b" ").decode(errors="replace").strip() if cmdline.exists else ""


def host_port(url: str) -> str:
    """'http://127.0.0.1:8000/x' -> '127.0.0.1:8000'."""
    parsed = urlsplit(url)
    return f"{parsed.hostname}:{parsed.port}"
