"""Bad stack configuration fails before anything is declared, with a message naming the key."""

from __future__ import annotations

import re

import pulumi
import pytest

from stacks.config import ConfigError, load_stack_settings, parse_settings, read_stack_values
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, deep_merge, run_program


def dev_group(index: int, **changes) -> dict:
    """Overrides changing group ``index`` of the dev stack's engines list (a list is replaced whole)."""
    groups = [dict(group) for group in read_stack_values("dev")["engines"]]
    groups[index].update(changes)
    return {"engines": groups}

BAD_THROUGH_THE_PROGRAM = [
    # (stack, overrides, secrets, plaintext secrets, key the message must name)
    ("prod", {"engine": {"gpu_memory_utilization": 1.5}}, {}, False, "engine.gpu_memory_utilization"),
    ("prod", {"engine": {"quantization": "int3"}}, {}, False, "engine.quantization"),
    ("dev", dev_group(0, max_model_len="2048"), {}, False, "engines[0].max_model_len"),
    ("dev", dev_group(1, gpu_memory_utilzation=0.5), {}, False, "engines[1].gpu_memory_utilzation"),
    ("dev", {"enigne": {"device": "cpu"}}, {}, False, "enigne"),
    ("prod", {"tunnel": {"enabled": True}}, {}, False, "tunnel_token"),
    ("prod", {"tunnel": {"enabled": True}}, {"tunnel_token": f"{MOCK_SECRET_MARK}-t"}, True, "tunnel_token"),
    ("prod", {"images": {"traefik": "traefik:latest"}}, {}, False, "images.traefik"),
    ("prod", {"edge": {"acme_email": None}}, {}, False, "edge.acme_email"),
    ("prod", {"edge": {"ip_allow_list": ["10.0.0.0/33"]}}, {}, False, "edge.ip_allow_list"),
    ("prod", {"engine": {"model_dir": "other-model"}}, {}, False, "engine.model_dir"),
    ("prod", {"gateway": {"limiter_failure_mode": "open"}}, {}, False, "gateway.limiter_failure_mode"),
    ("dev", dev_group(0, quantization="awq_marlin"), {}, False, "engines[0].quantization"),
    ("dev", {"domain": "LLM_Node"}, {}, False, "domain"),
]


@pytest.mark.parametrize("stack,overrides,secrets,plaintext,key", BAD_THROUGH_THE_PROGRAM,
                         ids=[case[-1] + ("-plaintext" if case[3] else "") for case in BAD_THROUGH_THE_PROGRAM])
def test_bad_config_fails_naming_the_key(stack, overrides, secrets, plaintext, key):
    @pulumi.runtime.test
    def deploy():
        return run_program(stack, overrides=overrides, secrets=secrets, plaintext_secrets=plaintext).ready()

    with pytest.raises(ConfigError, match=rf"^llm-node:{re.escape(key)}: ") as raised:
        deploy()
    assert raised.value.key == key
    assert MOCK_SECRET_MARK not in str(raised.value)  # never echo a secret back


def test_gpu_memory_utilization_message_says_what_is_allowed():
    values = deep_merge(read_stack_values("prod"), {"engine": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(ConfigError) as raised:
        parse_settings(values, "prod")
    assert str(raised.value) == ("llm-node:engine.gpu_memory_utilization: 1.5 must be in (0, 1] "
                                 "(a fraction of GPU memory)")


def test_unknown_quantization_lists_the_methods():
    values = deep_merge(read_stack_values("prod"), {"engine": {"quantization": "int3"}})
    with pytest.raises(ConfigError, match=r"'int3' is not one of awq, awq_marlin, compressed-tensors"):
        parse_settings(values, "prod")


@pytest.mark.parametrize("overrides,key", [
    ({"engine": {"model_id": "org/model"}}, "engine.model_dir"),  # both model_dir and model_id
    ({"engine": {"device": "tpu"}}, "engine.device"),
    ({"engine": {"replicas": 0}}, "engine.replicas"),
    ({"engine": {"replicas": 2, "gpu_ids": ["0", "0"]}}, "engine.gpu_ids"),
    ({"engine": {"replicas": 2, "gpu_ids": ["0,1", "1,2"]}}, "engine.gpu_ids"),
    ({"engine": {"max_lora_rank": 12}}, "engine.max_lora_rank"),
    ({"engine": {"scheduling_policy": "fcfs"}}, "engine.scheduling_policy"),
    ({"engine": {"extra_args": ["--max-model-len=4096"]}}, "engine.extra_args"),
    ({"engine": {"lora_adapters": ["../etc"]}}, "engine.lora_adapters"),
    ({"engine": {"enable_prefix_caching": "yes"}}, "engine.enable_prefix_caching"),
    ({"gateway": {"tier_priorities": {"premium": "high"}}}, "gateway.tier_priorities.premium"),
    ({"gateway": {"workers": 0}}, "gateway.workers"),
    ({"edge": {"tls_mode": "letsencrypt"}}, "edge.tls_mode"),
    ({"edge": {"tls_mode": "provided"}}, "tls_certificate"),
    ({"edge": {"publish": False}}, "edge.tls_mode"),  # acme needs port 80
    ({"edge": {"https_port": 80}}, "edge.https_port"),
    ({"quantize": {"source_model_dir": "/abs/path"}}, "quantize.source_model_dir"),
    ({"quantize": {"scheme": "W3A16"}}, "quantize.scheme"),
    ({"observability": {"prometheus_retention": "a month"}}, "observability.prometheus_retention"),
    ({"docker_host": "gpu-node-1:2375"}, "docker_host"),
    ({"name_prefix": "LLM"}, "name_prefix"),
    ({"volumes": {"models_host_dir": "relative/dir"}}, "volumes.models_host_dir"),
])
def test_parser_names_the_key(overrides, key):
    values = deep_merge(read_stack_values("prod"), overrides)
    with pytest.raises(ConfigError) as raised:
        parse_settings(values, "prod")
    assert raised.value.key == key, str(raised.value)


def test_dev_without_tunnel_must_publish():
    values = deep_merge(read_stack_values("dev"), {"edge": {"publish": False}})
    with pytest.raises(ConfigError, match=r"^llm-node:edge\.publish: "):
        parse_settings(values, "dev")
    settings = parse_settings(deep_merge(values, {"tunnel": {"enabled": True}}), "dev",
                              secrets_present=["tunnel_token"])
    assert settings.tunnel_enabled and not settings.edge.publish


def test_stack_files_parse_to_the_intended_nodes():
    dev, prod = load_stack_settings("dev"), load_stack_settings("prod")
    assert dev.engine.spec.device == "cpu" and dev.edge.tls_mode == "self-signed" and not dev.tunnel_enabled
    assert dev.models_host_dir and dev.models_host_dir.endswith("/.cache/llm-node/models")
    assert prod.engine.spec.device == "cuda" and prod.edge.tls_mode == "acme"
    assert prod.engine.spec.quantization == "compressed-tensors" and prod.quantize is not None
    assert prod.quantize.scheme.startswith("W4A16")  # 4-bit AWQ
    assert prod.engine.spec.model == prod.quantize.output_dir
    assert prod.public_url == "https://llm.example.com" and dev.public_url == "https://llm.localhost:8443"


def test_gateway_settings_follow_the_gateway_schema():
    """A gateway setting is configurable by its own name, with the schema's default, except the
    deployment-only fields and the secrets."""
    from llm_gateway.settings import DEPLOYMENT_FIELDS, SECRET_FIELDS, Settings
    from stacks.config import gateway_keys

    assert set(gateway_keys()) == set(Settings.model_fields) - DEPLOYMENT_FIELDS - set(SECRET_FIELDS)
    values = deep_merge(read_stack_values("dev"), {"gateway": {"circuit_failure_threshold": 7}})
    assert parse_settings(values, "dev").gateway.circuit_failure_threshold == 7
    default = parse_settings(read_stack_values("dev"), "dev").gateway
    assert default.circuit_open_seconds == Settings.model_fields["circuit_open_seconds"].default


@pytest.mark.parametrize("gateway,message", [
    ({"workers": 0}, "gateway.workers: Input should be greater than or equal to 1, got 0"),
    ({"workers": "2"}, "gateway.workers: Input should be a valid integer, got '2'"),
    ({"workers": True}, "gateway.workers: Input should be a valid integer, got True"),
    ({"request_timeout_seconds": 0}, "gateway.request_timeout_seconds: Input should be greater than 0, got 0"),
    ({"limiter_failure_mode": "open"}, "gateway.limiter_failure_mode: Input should be 'closed' or 'local', got 'open'"),
    ({"log_level": "loud"}, "gateway.log_level: Input should be 'debug', 'info', 'warning', 'error' or 'critical'"),
    ({"tier_priorities": {"premium": "high"}}, "gateway.tier_priorities.premium: Input should be a valid integer"),
    ({"workerz": 2}, "gateway.workerz: unknown setting (known: admission_wait_seconds, "),
    ({"engines": ["http://elsewhere:8000"]}, "gateway.engines: is set by the node"),
    ({"port": 9000}, "gateway.port: is set by the node"),
    ({"admin_token": "x"}, "gateway.admin_token: is a secret the node generates"),
])
def test_gateway_errors_name_the_key_and_say_what_is_allowed(gateway, message):
    values = deep_merge(read_stack_values("prod"), {"gateway": gateway})
    with pytest.raises(ConfigError) as raised:
        parse_settings(values, "prod")
    assert str(raised.value).startswith(f"llm-node:{message}"), str(raised.value)


def test_quantize_schemes_are_the_jobs():
    import runpy

    from stacks.config import QUANTIZE_SCHEMES, ROOT_DIR

    # The job's package lives in its own environment; its recipes module stands alone.
    recipes = runpy.run_path(str(ROOT_DIR / "services" / "quantize" / "llm_node_quantize" / "recipes.py"))
    assert set(QUANTIZE_SCHEMES) == set(recipes["SCHEMES"])


@pytest.mark.parametrize("stored_encrypted", [True, False])
def test_config_from_the_language_host_environment(stored_encrypted):
    """A real run passes config as PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS; typos and plain-text secrets
    still fail."""
    secrets = {"tunnel_token": f"{MOCK_SECRET_MARK}-t"}

    @pulumi.runtime.test
    def deploy(overrides):
        run = run_program("prod", overrides=overrides, secrets=secrets, plaintext_secrets=not stored_encrypted,
                          config_via_env=True)
        def check(d):
            assert d.container("cloudflared").is_secret("uploads")
            assert any(u["content"] == secrets["tunnel_token"] for u in d.container("cloudflared").props["uploads"])
        return run.ready().apply(check)

    if stored_encrypted:
        deploy({"tunnel": {"enabled": True}})
        with pytest.raises(ConfigError, match=r"^llm-node:edge\.tls_mod: unknown setting"):
            deploy({"tunnel": {"enabled": True}, "edge": {"tls_mod": "acme"}})
    else:
        with pytest.raises(ConfigError, match=r"^llm-node:tunnel_token: is stored in plain text"):
            deploy({"tunnel": {"enabled": True}})
