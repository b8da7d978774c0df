"""The dev and prod stacks under Pulumi's mock runtime: what `pulumi up` would create.

Each test runs the real program (stacks/__main__.py) with the stack's yaml and returns
``deployment.ready().apply(check)``, so the checks see every resource's inputs exactly as
the engine would receive them.
"""

from __future__ import annotations

import pulumi
import pytest
import yaml

from llm_gateway.settings import env_name as gateway_env_name
from services.launch import GATEWAY_SECRET_FIELDS, gateway_secret_file
from stacks.config import load_stack_settings, read_stack_values
from stacks.containers import go_duration
from stacks.images import is_pinned
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, PASSWORD, VOLUME, Deployment, plain_parts, run_program
from traefik import static

TUNNEL_TOKEN = f"{MOCK_SECRET_MARK}-tunnel-token"
WITH_TUNNEL = {"overrides": {"tunnel": {"enabled": True}}, "secrets": {"tunnel_token": TUNNEL_TOKEN}}

LONG_RUNNING = {"gateway", "postgres", "redis", "traefik", "prometheus", "grafana"}
# The engine containers, named after their group: prod's single `engine:` section is group main
# (engine-0, the names of a one-model node); dev serves two groups, chat and embed.
ENGINES = {"dev": {"engine-chat-0", "engine-embed-0"}, "prod": {"engine-0"}}
FIRST_ENGINE = {"dev": "engine-chat-0", "prod": "engine-0"}  # the first generate group's first replica
EXPECTED_CONTAINERS = {
    "dev": LONG_RUNNING | ENGINES["dev"] | {"gateway-migrate"},
    "prod": LONG_RUNNING | ENGINES["prod"] | {"gateway-migrate", "quantize"},
}
EXPECTED_VOLUMES = {
    # dev binds the host's model directory instead of a models volume; no ACME in dev
    "dev": {"postgres-data", "redis-data", "adapters", "prometheus-data", "grafana-data"},
    "prod": {"postgres-data", "redis-data", "models", "adapters", "prometheus-data", "grafana-data", "traefik-acme"},
}
PREFIX = {"dev": "llm-node-dev", "prod": "llm-node"}
# Which networks each service joins (edge: public side; internal/metrics: internal=True).
MEMBERSHIP = {
    "engine-0": {"internal"},
    "engine-chat-0": {"internal"},
    "engine-embed-0": {"internal"},
    "postgres": {"internal"},
    "redis": {"internal"},
    "prometheus": {"internal", "metrics"},
    "gateway": {"edge", "internal"},
    "gateway-migrate": {"internal"},
    "grafana": {"internal", "edge"},
    "traefik": {"edge", "metrics"},
    "cloudflared": {"edge", "metrics"},
    "quantize": set(),
}
INTERNAL_ONLY = {stack: ("postgres", "redis", "prometheus", *sorted(engines)) for stack, engines in ENGINES.items()}


def short(deployment: Deployment, name: str) -> str:
    return name.removeprefix(PREFIX[deployment.stack] + "-")


def network_kinds(deployment: Deployment, container) -> set[str]:
    return {short(deployment, n) for n in container.networks}


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_exact_containers_networks_and_volumes(stack):
    def check(d: Deployment):
        assert {short(d, n) for n in d.containers} == EXPECTED_CONTAINERS[stack]
        assert {short(d, n) for n in d.networks} == {"edge", "internal", "metrics"}
        assert {short(d, n) for n in d.volumes} == EXPECTED_VOLUMES[stack]
        # data volumes survive `pulumi destroy`
        for volume in d.of_type(VOLUME):
            assert volume.opts is not None and volume.opts.retain_on_delete, volume.name
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_prod_with_tunnel_adds_cloudflared_on_edge_and_metrics():
    def check(d: Deployment):
        assert {short(d, n) for n in d.containers} == EXPECTED_CONTAINERS["prod"] | {"cloudflared"}
        tunnel = d.container("cloudflared")
        assert tunnel.props["command"][-3:] == ["run", "--token-file", "/etc/cloudflared/token"]
        assert not any("TUNNEL_TOKEN" in e for e in tunnel.props.get("envs") or [])
        assert tunnel.is_secret("uploads")
        assert any(u["file"] == "/etc/cloudflared/token" and u["content"] == TUNNEL_TOKEN
                   for u in tunnel.props["uploads"])
        prometheus_config = next(u["content"] for u in d.container("prometheus").props["uploads"]
                                 if u["file"] == "/etc/prometheus/prometheus.yml")
        assert "cloudflared:2000" in prometheus_config
    return run_program("prod", **WITH_TUNNEL).ready().apply(check)


@pytest.mark.parametrize("stack,variant", [("dev", {}), ("prod", {}), ("prod", WITH_TUNNEL)])
@pulumi.runtime.test
def test_network_membership(stack, variant):
    def check(d: Deployment):
        internal_flag = {short(d, name): bool(n.props.get("internal")) for name, n in d.networks.items()}
        assert internal_flag == {"edge": False, "internal": True, "metrics": True}
        for name, container in d.containers.items():
            assert network_kinds(d, container) == MEMBERSHIP[short(d, name)], name
        for service in INTERNAL_ONLY[stack]:
            kinds = network_kinds(d, d.container(service))
            assert kinds and all(internal_flag[k] for k in kinds), f"{service} joins a non-internal network"
        assert d.container("quantize").props["networkMode"] == "none" if stack == "prod" else True
    return run_program(stack, **variant).ready().apply(check)


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_host_ports_only_on_traefik(stack):
    settings = load_stack_settings(stack).edge

    def check(d: Deployment):
        publishing = {short(d, n) for n, c in d.containers.items() if c.props.get("ports")}
        assert publishing == {"traefik"}
        assert not any(c.props.get("networkMode") == "host" for c in d.containers.values())
        ports = {(p["internal"], p["external"], p["ip"]) for p in d.container("traefik").props["ports"]}
        assert ports == {(80, settings.http_port, settings.bind_address),
                         (443, settings.https_port, settings.bind_address),
                         (8080, settings.ops_port, "127.0.0.1")}  # ops (dashboard, Grafana): loopback only
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_gpu_request_in_prod_one_gpu_per_replica():
    def check(d: Deployment):
        for index in (0, 1):
            requests = d.container(f"engine-{index}").props["deviceRequests"]
            assert requests == [{"driver": "nvidia", "deviceIds": [str(index)], "capabilities": ["gpu"]}]
        assert d.container("quantize").props["deviceRequests"][0]["deviceIds"] == ["0"]
        engines = d.container("gateway").env["GATEWAY_ENGINES"]
        assert engines == "http://engine-0:8000,http://engine-1:8000"  # the gateway covers every replica
        prometheus_config = next(u["content"] for u in d.container("prometheus").props["uploads"]
                                 if u["file"].endswith("prometheus.yml"))
        assert "engine-0:8000" in prometheus_config and "engine-1:8000" in prometheus_config
        assert {short(d, n) for n in d.containers} >= {"engine-0", "engine-1"}
    return run_program("prod", overrides={"engine": {"replicas": 2}}).ready().apply(check)


@pulumi.runtime.test
def test_tensor_parallel_replica_spans_its_gpus():
    def check(d: Deployment):
        assert d.container("engine-0").props["deviceRequests"][0]["deviceIds"] == ["0", "1"]
        assert d.container("engine-1").props["deviceRequests"][0]["deviceIds"] == ["2", "3"]
        assert d.container("engine-1").props["command"][-2:] == ["--tensor-parallel-size", "2"]
        assert d.container("quantize").props["deviceRequests"][0]["deviceIds"] == ["0"]
    return run_program("prod", overrides={"engine": {"replicas": 2, "gpu_ids": ["0,1", "2,3"],
                                                     "extra_args": ["--tensor-parallel-size", "2"]}}
                       ).ready().apply(check)


@pulumi.runtime.test
def test_no_gpu_request_in_dev():
    def check(d: Deployment):
        assert not any(c.props.get("deviceRequests") for c in d.containers.values())
        for name in ENGINES["dev"]:
            engine = d.container(name)
            assert engine.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
            assert engine.props["capabilities"] == {"adds": ["SYS_NICE"]}
    return run_program("dev").ready().apply(check)


def _flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_vllm_command_carries_every_engine_setting(stack):
    adapters = ["sql-expert", "support"]
    changes = {"lora_adapters": adapters, "extra_args": ["--seed", "7"]}
    if stack == "dev":  # the chat group (the first of the engines list)
        groups = read_stack_values("dev")["engines"]
        run = run_program(stack, overrides={"engines": [groups[0] | changes, *groups[1:]]})
        engine = run.values["engines"][0]
    else:
        run = run_program(stack, overrides={"engine": changes})
        engine = run.values["engine"]

    def check(d: Deployment):
        container = d.container(FIRST_ENGINE[stack])
        command = container.props["command"]
        # Read back every setting from the yaml, flag by flag (not through engine_args).
        assert _flag_value(command, "--model") == f"/models/{engine['model_dir']}"
        assert _flag_value(command, "--served-model-name") == engine["served_model_name"]
        assert _flag_value(command, "--max-model-len") == str(engine["max_model_len"])
        assert _flag_value(command, "--max-num-seqs") == str(engine["max_num_seqs"])
        assert _flag_value(command, "--scheduling-policy") == "priority"
        assert _flag_value(command, "--max-lora-rank") == str(engine["max_lora_rank"])
        assert _flag_value(command, "--max-loras") == str(engine["max_loras"])
        assert "--enable-lora" in command
        prefix_caching = engine["enable_prefix_caching"]
        assert ("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching") in command
        modules = command[command.index("--lora-modules") + 1: command.index("--lora-modules") + 1 + len(adapters)]
        assert modules == [f"{name}=/run/llm-node/adapters/{name}" for name in sorted(adapters)]
        assert command[-2:] == ["--seed", "7"]
        if engine["device"] == "cuda":
            assert _flag_value(command, "--gpu-memory-utilization") == str(engine["gpu_memory_utilization"])
            assert _flag_value(command, "--quantization") == engine["quantization"]
            assert _flag_value(command, "--max-num-batched-tokens") == str(engine["max_num_batched_tokens"])
        else:
            assert "--gpu-memory-utilization" not in command
            assert container.env["VLLM_CPU_KVCACHE_SPACE"] == str(engine["cpu_kvcache_space_gib"])
        env = container.env
        assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
        assert env["ADAPTERS_SOURCE_DIR"] == "/adapters" and env["ADAPTERS_SANITIZED_DIR"] == "/run/llm-node/adapters"
        mounts = {v["containerPath"]: v for v in container.props["volumes"]}
        assert mounts["/adapters"]["readOnly"] is True and mounts["/models"]["readOnly"] is True
        # The image extends the official vLLM image of the device, pinned.
        base = d.of_type("docker:index/image:Image")
        engine_image = next(i for i in base if i.props["imageName"] == container.props["image"]).props
        assert engine_image["build"]["args"]["VLLM_IMAGE"].startswith(
            "vllm/vllm-openai:v" if engine["device"] == "cuda" else "vllm/vllm-openai-cpu:v")
        assert engine_image["build"]["dockerfile"].endswith("services/engine/Dockerfile")
        assert len([i for i in base if i.props["imageName"].startswith("llm-node/engine-")]) == 1  # built once
    return run.ready().apply(check)


PROVIDED_TLS = {"overrides": {"edge": {"tls_mode": "provided", "acme_email": None},
                               "tls_certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
                "secrets": {"tls_private_key": f"{MOCK_SECRET_MARK}-tls-key"}}


@pytest.mark.parametrize("stack,variant", [("dev", {}), ("prod", WITH_TUNNEL), ("prod", PROVIDED_TLS)])
@pulumi.runtime.test
def test_passwords_and_tokens_are_secret(stack, variant):
    run = run_program(stack, **variant)

    def check(d: Deployment):
        # 1. No generated password or configured secret appears anywhere outside a secret.
        for resource in d.declared:
            leaks = [leaf for leaf in plain_parts(resource.inputs) if MOCK_SECRET_MARK in str(leaf)]
            assert not leaks, f"{resource.type} {resource.name} holds a secret in plain text: {leaks}"
        assert {p.name for p in d.of_type(PASSWORD)} == {"postgres-password", "redis-password",
                                                         "gateway-admin-token", "grafana-admin-password"}
        # 2. Where secrets do go, the property is secret (encrypted in the state).
        # The gateway's secrets are files (uploads), never env: `docker inspect` prints env.
        gateway = d.container("gateway")
        secret_env = {gateway_env_name(field) for field in GATEWAY_SECRET_FIELDS}
        assert not secret_env & set(gateway.env)
        secret_files = {u["file"].rsplit("/", 1)[-1]: u["content"] for u in gateway.props["uploads"]}
        assert all(MOCK_SECRET_MARK in secret_files[gateway_secret_file(field)] for field in GATEWAY_SECRET_FIELDS)
        assert not secret_env & set(d.container("gateway-migrate").env)
        for service in ("postgres", "redis", "grafana", "gateway", "gateway-migrate"):
            assert d.container(service).is_secret("uploads"), service
        assert d.container("postgres").env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert d.container("grafana").env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
        if "tls_private_key" in variant.get("secrets", {}):
            assert d.container("traefik").is_secret("uploads")

    async def outputs_secret():
        secret = {name: await pulumi.Output.from_input(value).is_secret() for name, value in run.outputs.items()}
        values = {name: await pulumi.Output.from_input(value).future() for name, value in run.outputs.items()}
        return secret, values

    def check_outputs(result):
        secret, values = result
        assert secret["gateway_admin_token"] and secret["grafana_admin_password"]
        for name, value in values.items():
            if not secret[name]:
                assert MOCK_SECRET_MARK not in str(value), f"stack output {name} leaks a secret"
        assert values["public_url"].startswith("https://")

    return pulumi.Output.all(run.ready().apply(check),
                             pulumi.Output.from_input(outputs_secret()).apply(check_outputs))


def traefik_routes(d: Deployment) -> dict:
    traefik = d.container("traefik")
    return yaml.safe_load(next(u["content"] for u in traefik.props["uploads"] if u["file"] == static.ROUTES_PATH))


@pytest.mark.parametrize("stack,variant", [("dev", {}), ("prod", WITH_TUNNEL),
                                           ("prod", {"overrides": {"observability": {"grafana_public": True},
                                                                   "edge": {"ip_allow_list": ["10.0.0.0/8"]}}})])
@pulumi.runtime.test
def test_traefik_routes_only_the_gateway(stack, variant):
    settings = load_stack_settings(stack)
    grafana_public = variant.get("overrides", {}).get("observability", {}).get("grafana_public", False)

    def check(d: Deployment):
        http = traefik_routes(d)["http"]
        public_routers = {}
        for router, body in http["routers"].items():
            assert body["entryPoints"], f"router {router} has no entryPoints (it would listen on all)"
            if {"web", "websecure"} & set(body["entryPoints"]):
                public_routers[router] = body["service"]
            else:
                assert body["entryPoints"] == ["ops"], f"{router} on {body['entryPoints']}"
        expected = {"gateway": "gateway"} | ({"grafana": "grafana"} if grafana_public else {})
        assert public_routers == expected
        gateway = http["routers"]["gateway"]
        assert gateway["rule"] == f"Host(`{settings.domain}`)"
        assert gateway["entryPoints"] == ["websecure"]
        assert http["services"]["gateway"]["loadBalancer"]["servers"] == [{"url": "http://gateway:8080"}]
        # /metrics is never routed: nothing points at the metrics port, no rule names the path
        assert "9101" not in str(http["services"])
        assert not any("/metrics" in r["rule"] for r in http["routers"].values())
        assert "gateway-headers" in gateway["middlewares"]
        assert http["middlewares"]["gateway-headers"]["headers"]["stsSeconds"] == 31536000
        if variant.get("overrides", {}).get("edge", {}).get("ip_allow_list"):
            assert gateway["middlewares"][0] == "gateway-allow-list"
            assert http["middlewares"]["gateway-allow-list"]["ipAllowList"]["sourceRange"] == ["10.0.0.0/8"]
        if settings.edge.tls_mode == "acme":
            assert gateway["tls"] == {"certResolver": "letsencrypt"}
        else:
            assert gateway["tls"] == {}
    return run_program(stack, **variant).ready().apply(check)


@pytest.mark.parametrize("stack,variant", [("dev", {}), ("prod", WITH_TUNNEL)])
@pulumi.runtime.test
def test_no_container_holds_the_docker_api(stack, variant):
    """A mounted socket is the whole Docker API, `:ro` or not (read every env, start containers)."""
    def check(d: Deployment):
        for name, container in d.containers.items():
            binds = [v.get("hostPath") for v in container.props.get("volumes") or []]
            binds += [m.get("source") for m in container.props.get("mounts") or []]
            assert not any(b and b.endswith("docker.sock") for b in binds), f"{name} mounts the Docker socket"
            assert not any(k.lower().startswith("traefik.") for k in container.labels), f"{name}: routing labels"
    return run_program(stack, **variant).ready().apply(check)


@pulumi.runtime.test
def test_body_limit_at_the_edge_is_opt_in():
    def check(d: Deployment):
        http = traefik_routes(d)["http"]
        assert http["middlewares"]["gateway-body-limit"]["buffering"]["maxRequestBodyBytes"] == 2048
        assert http["routers"]["gateway"]["middlewares"][-1] == "gateway-body-limit"
        assert d.container("gateway").env["GATEWAY_MAX_BODY_BYTES"] == "2048"
    return run_program("prod", overrides={"edge": {"body_limit": "edge"},
                                          "gateway": {"max_body_bytes": 2048}}).ready().apply(check)


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_every_container_is_pinned_restarted_rotated_and_checked(stack):
    def check(d: Deployment):
        for name, container in d.containers.items():
            props = container.props
            assert is_pinned(props["image"]), f"{name}: {props['image']}"
            assert props["logDriver"] == "json-file" and props["logOpts"] == {"max-size": "20m", "max-file": "5"}
            assert container.opts.delete_before_replace, name
            assert container.labels["llm-node.stack"] == stack
            # uploads belong to the container, never into a volume that outlives it
            mounted = [v["containerPath"].rstrip("/") + "/" for v in props.get("volumes") or []]
            assert not [u["file"] for u in props.get("uploads") or [] if any(u["file"].startswith(m) for m in mounted)]
            if props.get("attach"):  # one-shot job
                assert props["mustRun"] is False and props["restart"] == "no", name
            else:
                assert props["restart"] == "unless-stopped", name
                tests = props["healthcheck"]["tests"]
                assert tests and tests[0] in ("CMD", "CMD-SHELL"), name
        for service in ("postgres", "redis", *ENGINES[stack], "gateway", "traefik"):
            assert d.container(service).props["wait"] is True, service
        for group in load_stack_settings(stack).engines:
            engine = d.container(group.aliases[0]).props
            start = group.health_start_period_seconds
            assert engine["healthcheck"]["startPeriod"] == go_duration(start) and engine["waitTimeout"] > start
        for image in d.of_type("docker:index/remoteImage:RemoteImage"):
            assert is_pinned(image.props["name"]) and image.props["keepLocally"] is True
    return run_program(stack).ready().apply(check)


@pulumi.runtime.test
def test_start_order_quantize_then_engine_then_gateway():
    def check(d: Deployment):
        def depends(container) -> set[str]:
            return {getattr(r, "_name", "") for r in (container.opts.depends_on or [])}
        assert "quantize" in depends(d.container("engine-0"))
        assert {"postgres", "redis", "engine-0", "gateway-migrate"} <= depends(d.container("gateway"))
        assert depends(d.container("gateway-migrate")) == {"gateway-image", "postgres"}  # not the engines
        assert d.container("engine-0").labels["llm-node.after"] == "ok"  # the quantize job succeeded
        migrate = d.container("gateway-migrate").props
        assert migrate["entrypoints"] + migrate["command"] == ["python", "-m", "llm_gateway.admin", "migrate"]
        quantize = d.container("quantize").props
        assert {v["containerPath"]: v.get("readOnly", False) for v in quantize["volumes"]} == {
            "/models": False, "/adapters": True}
    return run_program("prod").ready().apply(check)


def test_a_failed_quantize_job_stops_the_deployment():
    @pulumi.runtime.test
    def deploy():
        return run_program("prod", exit_codes={"quantize": 1}).ready()

    with pytest.raises(Exception, match="exit code 1"):
        deploy()


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_preview_with_unknown_values(stack):
    """`pulumi preview` on a new stack: passwords and exit codes are unknown; nothing may fail."""
    def check(d: Deployment):
        assert {short(d, n) for n in d.containers} == EXPECTED_CONTAINERS[stack]
    return run_program(stack, preview=True).ready().apply(check)


@pulumi.runtime.test
def test_engine_that_downloads_gets_an_egress_network_and_a_writable_cache():
    def check(d: Deployment):
        engine = d.container("engine-0")
        assert network_kinds(d, engine) == {"internal", "egress"}
        assert not d.networks["llm-node-egress"].props.get("internal")
        assert {short(d, n) for n, c in d.containers.items() if "llm-node-egress" in c.networks} == {"engine-0"}
        assert {v["containerPath"]: v["readOnly"] for v in engine.props["volumes"]}["/models"] is False
        assert "HF_HUB_OFFLINE" not in engine.env
    return run_program("prod", overrides={"quantize": {"enabled": False},
                                          "engine": {"model_dir": None, "model_id": "Qwen/Qwen2.5-7B-Instruct-AWQ",
                                                     "quantization": "awq_marlin",
                                                     "hf_hub_offline": False}}).ready().apply(check)


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_observability_configs_are_uploaded(stack):
    from grafana.render import render_dashboards

    def check(d: Deployment):
        prometheus = {u["file"]: u["content"] for u in d.container("prometheus").props["uploads"]}
        config = prometheus["/etc/prometheus/prometheus.yml"]
        for target in (*(f"{engine}:8000" for engine in ENGINES[stack]), "gateway:9101", "traefik:8082",
                       "localhost:9090"):
            assert target in config
        assert "cloudflared" not in config  # no tunnel: no target that can never be up
        assert {f for f in prometheus if f.startswith("/etc/prometheus/rules/")} == {
            "/etc/prometheus/rules/alerts.rules.yml", "/etc/prometheus/rules/recording.rules.yml"}
        grafana = {u["file"]: u["content"] for u in d.container("grafana").props["uploads"]}
        dashboards = {f.rsplit("/", 1)[-1] for f in grafana if f.startswith("/etc/grafana/dashboards/llm-node/")}
        assert dashboards == set(render_dashboards()) and dashboards
        assert "http://prometheus:9090" in grafana["/etc/grafana/provisioning/datasources/prometheus.yml"]
        provider = grafana["/etc/grafana/provisioning/dashboards/llm-node.yml"]
        assert "path: /etc/grafana/dashboards/llm-node" in provider  # the provider reads what was uploaded
        volume_paths = [v["containerPath"] for v in d.container("grafana").props["volumes"]]
        assert not any(f.startswith(p) for f in grafana for p in volume_paths)  # nothing lands in the volume
    return run_program(stack).ready().apply(check)
