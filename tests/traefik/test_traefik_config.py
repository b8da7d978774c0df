"""Traefik's static configuration and the file-provider dynamic configuration the program renders
(dynamic/tls.yml, dynamic/routes.yml), against the Traefik v3 JSON Schemas (draft-07) in
../shared/schemas; the tunnel's ingress rules."""

from __future__ import annotations

import copy

import pulumi
import pytest
import yaml

from cloudflared.render import render_tunnel_config, validate_ingress
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, Deployment, run_program
from tests.traefik.schemas import DYNAMIC_SCHEMA, STATIC_SCHEMA, errors
from traefik import routing, static

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
VARIANTS = {
    "dev": ("dev", {}),
    "prod": ("prod", {}),
    "prod-tunnel": ("prod", {"overrides": {"tunnel": {"enabled": True}},
                             "secrets": {"tunnel_token": f"{MOCK_SECRET_MARK}-t"}}),
    "prod-provided-tls": ("prod", {"overrides": {"edge": {"tls_mode": "provided", "acme_email": None},
                                                 "tls_certificate": CERT},
                                   "secrets": {"tls_private_key": f"{MOCK_SECRET_MARK}-k"}}),
    "prod-everything": ("prod", {"overrides": {"edge": {"ip_allow_list": ["10.0.0.0/8", "192.168.1.7"],
                                                        "body_limit": "edge", "acme_ca_server":
                                                        "https://acme-staging-v02.api.letsencrypt.org/directory"},
                                               "observability": {"grafana_public": True}}}),
}


def uploaded(container, path: str) -> str:
    return next(u["content"] for u in container.props["uploads"] if u["file"] == path)


def test_the_committed_base_files_are_valid():
    assert errors(STATIC_SCHEMA, yaml.safe_load(static.BASE_STATIC.read_text())) == []
    assert errors(DYNAMIC_SCHEMA, yaml.safe_load(static.BASE_TLS.read_text())) == []


@pytest.mark.parametrize("variant", VARIANTS)
@pulumi.runtime.test
def test_deployed_static_config_is_valid_and_safe(variant):
    stack, kwargs = VARIANTS[variant]
    run = run_program(stack, **kwargs)

    def check(d: Deployment):
        traefik = d.container("traefik")
        config = yaml.safe_load(uploaded(traefik, static.STATIC_PATH))
        assert errors(STATIC_SCHEMA, config) == []
        # routes come from the uploaded files only: no Docker provider, no socket, no labels
        assert config["providers"] == {"file": {"directory": static.DYNAMIC_DIR, "watch": True}}
        assert config["api"] == {"dashboard": True, "insecure": False}
        assert config["ping"] == {"entryPoint": "ops"}
        assert config["metrics"]["prometheus"]["entryPoint"] == "metrics"
        assert config["accessLog"]["format"] == "json" and config["log"]["format"] == "json"
        assert config["accessLog"]["fields"]["headers"]["defaultMode"] == "drop"  # no Authorization in logs
        redirect = config["entryPoints"]["web"]["http"]["redirections"]["entryPoint"]
        https_port = run.values["edge"]["https_port"]
        assert redirect == {"to": "websecure" if https_port == 443 else f":{https_port}", "scheme": "https",
                            "permanent": True}
        published = {p["internal"] for p in traefik.props["ports"]}
        assert static.PORTS["metrics"] not in published  # metrics only on the metrics network
        ops = [p for p in traefik.props["ports"] if p["internal"] == static.PORTS["ops"]]
        assert all(p["ip"] == "127.0.0.1" for p in ops)  # dashboard never public
        assert not any("docker.sock" in str(v) for v in traefik.props.get("volumes") or []), "Docker socket mounted"
        tls_mode = run.values["edge"]["tls_mode"]
        if tls_mode == "acme":
            acme = config["certificatesResolvers"]["letsencrypt"]["acme"]
            assert acme["email"] == run.values["edge"]["acme_email"] and acme["storage"] == "/acme/acme.json"
            assert acme["httpChallenge"] == {"entryPoint": "web"}
            assert config["entryPoints"]["websecure"]["http"]["tls"] == {"certResolver": "letsencrypt"}
        else:
            assert "certificatesResolvers" not in config
        dynamic = yaml.safe_load(uploaded(traefik, f"{static.DYNAMIC_DIR}/tls.yml"))
        assert errors(DYNAMIC_SCHEMA, dynamic) == []
        assert dynamic["tls"]["options"]["default"]["minVersion"] == "VersionTLS12"
        if tls_mode == "provided":
            assert dynamic["tls"]["certificates"] == [{"certFile": static.CERT_FILE, "keyFile": static.KEY_FILE}]
            assert uploaded(traefik, static.CERT_FILE) == CERT
        else:
            assert "certificates" not in dynamic["tls"]
    return run.ready().apply(check)


def routes_file(d: Deployment) -> dict:
    return yaml.safe_load(uploaded(d.container("traefik"), static.ROUTES_PATH))


@pytest.mark.parametrize("variant", VARIANTS)
@pulumi.runtime.test
def test_uploaded_routes_are_valid_and_complete(variant):
    stack, kwargs = VARIANTS[variant]

    def check(d: Deployment):
        for name, container in d.containers.items():  # the file is the only source of routes
            assert not any(k.lower().startswith("traefik.") for k in container.labels), f"{name}: routing labels"
        routes = routes_file(d)
        assert errors(DYNAMIC_SCHEMA, routes) == []
        http = routes["http"]
        # every router's middlewares and service exist (or are Traefik's internal api@internal)
        for router_name, router in http["routers"].items():
            assert router["entryPoints"], router_name
            for middleware in router.get("middlewares", []):
                assert middleware in http["middlewares"], f"{router_name}: {middleware} undefined"
            assert router["service"] in http.get("services", {}) or router["service"].endswith("@internal")
        gateway = http["routers"]["gateway"]
        assert gateway["entryPoints"] == ["websecure"] and "tls" in gateway
        # by its alias on the edge network, which Docker's DNS keeps pointing at the current container
        assert http["services"]["gateway"]["loadBalancer"]["servers"] == [{"url": "http://gateway:8080"}]
        assert http["services"]["grafana"]["loadBalancer"]["servers"] == [{"url": "http://grafana:3000"}]
        # routed only while healthy, as the Docker provider skipped containers that were not
        assert http["services"]["gateway"]["loadBalancer"]["healthCheck"]["path"] == "/healthz"
        assert http["services"]["grafana"]["loadBalancer"]["healthCheck"]["path"] == "/api/health"
        assert http["routers"]["dashboard"]["service"] == "api@internal"
        assert http["routers"]["dashboard"]["entryPoints"] == ["ops"]
        headers = http["middlewares"]["gateway-headers"]["headers"]
        assert headers["stsSeconds"] == 31536000 and headers["contentTypeNosniff"] is True
        if "ip_allow_list" in kwargs.get("overrides", {}).get("edge", {}):
            assert http["middlewares"]["gateway-allow-list"]["ipAllowList"]["sourceRange"] == [
                "10.0.0.0/8", "192.168.1.7"]
            assert http["middlewares"]["gateway-body-limit"]["buffering"]["maxRequestBodyBytes"] == 1048576
    return run_program(stack, **kwargs).ready().apply(check)


@pulumi.runtime.test
def test_a_changed_route_replaces_the_uploaded_file():
    """A route change must reach Traefik: the routes are an upload of the Traefik container, and
    uploads are ForceNew in the Docker provider, so the container is replaced with the new file."""
    def routes_of(run):
        return run.ready().apply(lambda d: uploaded(d.container("traefik"), static.ROUTES_PATH))

    before = routes_of(run_program("prod"))
    after = routes_of(run_program("prod", overrides={"domain": "api.example.org"}))

    def check(pair):
        old, new = pair
        assert "Host(`llm.example.com`)" in old and "Host(`api.example.org`)" in new and old != new
    return pulumi.Output.all(before, after).apply(check)


def test_the_validation_catches_bad_routes():
    """The schema rejects what Traefik's file provider would reject or ignore."""
    good = routing.fragment(routers={"gw": routing.router(rule="Host(`a.example`)", entry_points=["websecure"],
                                                          service="gw", tls=True)},
                            services={"gw": routing.service("gw", 8080)})
    assert errors(DYNAMIC_SCHEMA, good) == []
    typo = copy.deepcopy(good)
    typo["http"]["routers"]["gw"]["entryPointz"] = ["websecure"]
    assert any("entryPointz" in e for e in errors(DYNAMIC_SCHEMA, typo))
    wrong_type = routing.fragment(middlewares={"h": {"headers": {"stsSeconds": "1y"}}})
    assert errors(DYNAMIC_SCHEMA, wrong_type)
    two_kinds = routing.fragment(middlewares={"m": routing.body_limit(10) | routing.ip_allow_list(["10.0.0.0/8"])})
    assert errors(DYNAMIC_SCHEMA, two_kinds)  # one middleware, one kind
    with pytest.raises(ValueError):
        routing.router(rule="Host(`a`)", entry_points=[], service="gw")
    with pytest.raises(ValueError, match="declared twice"):
        routing.merge(good, good)


def test_the_static_schema_catches_a_bad_option():
    config = static.render_static_config(tls_mode="self-signed")
    config["providers"]["file"]["Watch"] = True  # wrong case: Traefik would ignore the file key
    assert any("Watch" in e for e in errors(STATIC_SCHEMA, config))


@pytest.mark.parametrize("verify", [True, False])
def test_tunnel_ingress_ends_with_the_catch_all(verify):
    config = render_tunnel_config(hostname="llm.example.com", origin_url="https://traefik:443",
                                  verify_origin_tls=verify)
    validate_ingress(config)
    assert config["ingress"][-1] == {"service": "http_status:404"}
    assert config["ingress"][0]["hostname"] == "llm.example.com"
    assert config["ingress"][0]["originRequest"] == {"originServerName": "llm.example.com", "noTLSVerify": not verify}
    assert config["metrics"] == "0.0.0.0:2000" and config["no-autoupdate"] is True
    with pytest.raises(ValueError, match="catch-all"):
        validate_ingress({"ingress": config["ingress"][:1]})
    with pytest.raises(ValueError, match="only the last rule"):
        validate_ingress({"ingress": [{"service": "http://x"}, {"service": "http_status:404"}]})


@pulumi.runtime.test
def test_the_tunnel_container_gets_the_rendered_config():
    def check(d: Deployment):
        config = yaml.safe_load(uploaded(d.container("cloudflared"), "/etc/cloudflared/config.yml"))
        validate_ingress(config)
        assert config["ingress"][0]["hostname"] == "llm.example.com"
        assert config["ingress"][0]["service"] == "https://traefik:443"
        assert config["ingress"][0]["originRequest"]["noTLSVerify"] is False  # acme: a valid certificate
    stack, kwargs = VARIANTS["prod-tunnel"]
    return run_program(stack, **kwargs).ready().apply(check)
