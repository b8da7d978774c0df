"""The tunnel's cloudflared configuration for a stack, rendered from cloudflared/config.yml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

BASE = Path(__file__).resolve().parent / "config.yml"
CONFIG_PATH = "/etc/cloudflared/config.yml"
TOKEN_PATH = "/etc/cloudflared/token"  # uploaded from the Pulumi secret, read with --token-file
CATCH_ALL = {"service": "http_status:404"}


def render_tunnel_config(*, hostname: str, origin_url: str, verify_origin_tls: bool) -> dict[str, Any]:
    """One rule for ``hostname`` to ``origin_url`` (Traefik), then the catch-all."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(BASE.read_text()))
    rules = config["ingress"]
    if rules[-1] != CATCH_ALL:
        raise ValueError(f"{BASE}: the last ingress rule must be the catch-all {CATCH_ALL}")
    route = rules[0]
    route["hostname"] = hostname
    route["service"] = origin_url
    route["originRequest"] = {"originServerName": hostname, "noTLSVerify": not verify_origin_tls}
    return config


def validate_ingress(config: dict[str, Any]) -> None:
    """cloudflared's own ingress rules: every rule but the last names a hostname; the last names none."""
    rules = config.get("ingress") or []
    if not rules:
        raise ValueError("ingress: at least the catch-all rule is required")
    for index, rule in enumerate(rules[:-1]):
        if not rule.get("hostname"):
            raise ValueError(f"ingress[{index}]: only the last rule may omit hostname")
        if not rule.get("service"):
            raise ValueError(f"ingress[{index}]: service is required")
    if "hostname" in rules[-1] or "path" in rules[-1] or not rules[-1].get("service"):
        raise ValueError("ingress: the last rule must be a catch-all (a service, no hostname or path)")


def to_yaml(config: dict[str, Any]) -> str:
    header = "# Rendered by cloudflared/render.py for this stack - edit cloudflared/config.yml instead.\n"
    return header + yaml.safe_dump(config, sort_keys=False)
