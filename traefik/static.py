"""Traefik's static and file-provider configuration for a stack, rendered from traefik/*.yml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BASE_STATIC = HERE / "traefik.yml"
BASE_TLS = HERE / "dynamic" / "tls.yml"

# Paths inside the Traefik container.
STATIC_PATH = "/etc/traefik/traefik.yml"
DYNAMIC_DIR = "/etc/traefik/dynamic"
CERT_FILE = "/etc/traefik/certs/tls.crt"
KEY_FILE = "/etc/traefik/certs/tls.key"
ACME_DIR = "/acme"  # a volume: the Let's Encrypt account and certificates survive restarts
ACME_STORAGE = f"{ACME_DIR}/acme.json"
ROUTES_PATH = f"{DYNAMIC_DIR}/routes.yml"  # rendered from traefik/routing.py fragments

# Entry points (names used by routers) and their container ports.
WEB, WEBSECURE, OPS, METRICS = "web", "websecure", "ops", "metrics"
PORTS = {WEB: 80, WEBSECURE: 443, OPS: 8080, METRICS: 8082}
CERT_RESOLVER = "letsencrypt"
# File-provider middlewares the ops and metrics entry points apply to every router on them.
OPS_ALLOW_LIST, METRICS_ALLOW_LIST = "ops-allow-list", "metrics-allow-list"
LOOPBACK = ("127.0.0.1/32", "::1/128")  # `traefik healthcheck --ping` dials the ping entry point's ":8080"


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def render_static_config(*, tls_mode: str, acme_email: str | None = None, acme_ca_server: str | None = None,
                         https_host_port: int = 443, metrics_address: str | None = None) -> dict[str, Any]:
    """The static configuration (traefik.yml) of one stack.

    ``metrics_address``: Traefik's fixed address on the metrics network; the metrics entry point
    listens there only, so nothing on the edge network even connects to it.
    """
    config = copy.deepcopy(_load(BASE_STATIC))
    if metrics_address:
        config["entryPoints"][METRICS]["address"] = f"{metrics_address}:{PORTS[METRICS]}"
    if https_host_port != 443:  # redirect to the port clients can reach, not the container's
        config["entryPoints"][WEB]["http"]["redirections"]["entryPoint"]["to"] = f":{https_host_port}"
    if tls_mode == "acme":
        if not acme_email:
            raise ValueError("acme_email is required for tls_mode acme")
        acme: dict[str, Any] = {"email": acme_email, "storage": ACME_STORAGE, "httpChallenge": {"entryPoint": WEB}}
        if acme_ca_server:
            acme["caServer"] = acme_ca_server
        config["certificatesResolvers"] = {CERT_RESOLVER: {"acme": acme}}
        config["entryPoints"][WEBSECURE]["http"]["tls"] = {"certResolver": CERT_RESOLVER}
    elif tls_mode not in ("provided", "self-signed"):
        raise ValueError(f"unknown tls_mode {tls_mode!r}")
    return config


def render_dynamic_tls(*, provided_certificate: bool) -> dict[str, Any]:
    """The file-provider TLS configuration (dynamic/tls.yml); adds the certificate in provided mode."""
    config = copy.deepcopy(_load(BASE_TLS))
    if provided_certificate:
        pair = {"certFile": CERT_FILE, "keyFile": KEY_FILE}
        config["tls"]["certificates"] = [pair]
        config["tls"]["stores"] = {"default": {"defaultCertificate": dict(pair)}}
    return config


def render_entry_point_allow_lists(*, ops_sources: list[str], metrics_sources: list[str]) -> dict[str, Any]:
    """The two middlewares traefik.yml puts on every router of the ops and metrics entry points.

    ipAllowList without ipStrategy checks the TCP peer (RemoteAddr), never X-Forwarded-For.
    """
    return {"http": {"middlewares": {
        OPS_ALLOW_LIST: {"ipAllowList": {"sourceRange": [f"{a}/32" for a in ops_sources] + list(LOOPBACK)}},
        METRICS_ALLOW_LIST: {"ipAllowList": {"sourceRange": [f"{a}/32" for a in metrics_sources]}},
    }}}


def to_yaml(config: dict[str, Any]) -> str:
    header = "# Rendered for this stack by the llm-node program (traefik/*.py, traefik/*.yml) - edit those instead.\n"
    return header + yaml.safe_dump(config, sort_keys=False)
