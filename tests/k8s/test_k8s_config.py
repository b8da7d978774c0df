"""Bad kubernetes-target configuration fails before anything is declared, naming the key."""

from __future__ import annotations

import re

import pulumi
import pytest

from stacks.config import ConfigError, all_keys, load_stack_settings
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, run_program


def _k8s_dev_groups(*extra: dict) -> dict:
    """k8s-dev with its engine section as group `chat` of an engines list, plus ``extra`` groups."""
    from stacks.config import read_stack_values

    chat = {"name": "chat", **read_stack_values("k8s-dev")["engine"]}
    return {"engine": None, "engines": [chat, *extra]}


EMBED = {"name": "embed", "kind": "embed", "device": "cpu", "model_dir": "tiny-llama",
         "served_model_name": "tiny-embed", "max_model_len": 512}
CODER = {"name": "coder", "device": "cpu", "model_dir": "tiny-llama", "served_model_name": "tiny-coder",
         "max_model_len": 512}
PICKER = {"kubernetes": {"endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway"}}
BAD = [
    ("k8s-dev", {"kubernetes": {"namespace": None}}, "kubernetes.namespace", "is required"),
    ("k8s-dev", {"kubernetes": {"storage_class": None}}, "kubernetes.storage_class", "is required"),
    ("k8s-dev", {"kubernetes": {"image_registry": None}}, "kubernetes.image_registry", "is required"),
    ("k8s-dev", {"kubernetes": None}, "kubernetes.namespace", "is required"),
    ("k8s-prod", {"kubernetes": {"gpus_per_engine": None}}, "kubernetes.gpus_per_engine", "engine.device is cuda"),
    ("k8s-dev", {"kubernetes": {"gpus_per_engine": 1}}, "kubernetes.gpus_per_engine", "only applies"),
    ("k8s-prod", {"engine": {"gpu_ids": ["0", "1"]}}, "engine.gpu_ids", "Docker host setting"),
    ("k8s-dev", {"tunnel": {"enabled": True}}, "tunnel.enabled", "not supported"),
    # several engine groups are served (tests/k8s/test_k8s_stacks.py); the endpoint picker's one
    # InferencePool takes exactly one generate group, and Docker-only keys are refused in any group
    ("k8s-dev", _k8s_dev_groups(CODER) | PICKER, "kubernetes.endpoint_picker",
     "serves one generate group (one InferencePool), this stack has 2 (chat, coder)"),
    ("k8s-dev", _k8s_dev_groups(EMBED | {"device": "cuda", "gpu_ids": ["0"]}), "engines[1].gpu_ids",
     "Docker host setting"),
    ("k8s-dev", _k8s_dev_groups(EMBED | {"device": "cuda"}), "kubernetes.gpus_per_engine",
     "is required when engines[1].device is cuda"),
    ("k8s-dev", {"engine": None, "engines": [EMBED]}, "engines", "at least one group of kind generate"),
    ("k8s-dev", _k8s_dev_groups() | {"engines": [{"name": "chat", **_k8s_dev_groups()["engines"][0],
                                                  "gpu_ids": ["0"], "device": "cuda"}]},
     "engines[0].gpu_ids", "Docker host setting"),
    ("k8s-dev", {"volumes": {"models_host_dir": "/srv/models"}}, "volumes.models_host_dir", "PersistentVolumeClaim"),
    ("k8s-dev", {"target": "nomad"}, "target", "is not one of docker, kubernetes"),
    ("dev", {"kubernetes": {"namespace": "x"}}, "kubernetes", "applies only to target: kubernetes"),
    ("k8s-dev", {"kubernetes": {"version": "1.19"}}, "kubernetes.version", "must be 1.25 to 1.37"),
    ("k8s-dev", {"kubernetes": {"version": 1.33}}, "kubernetes.version", "must be a non-empty string"),
    ("k8s-dev", {"kubernetes": {"namespace": "LLM_node"}}, "kubernetes.namespace", "is not a DNS label"),
    ("k8s-dev", {"kubernetes": {"engine_min_replicas": 3, "engine_max_replicas": 2}},
     "kubernetes.engine_max_replicas", "is below engine_min_replicas"),
    ("k8s-dev", {"kubernetes": {"edge": "gateway-api"}}, "kubernetes.gateway_api_parent", "is required"),
    ("k8s-dev", {"kubernetes": {"endpoint_picker": "inference-extension"}}, "kubernetes.inference_gateway_class",
     "is required"),
    ("k8s-dev", {"kubernetes": {"engine_memory": "8GB"}}, "kubernetes.engine_memory", "is not a memory quantity"),
    ("k8s-dev", {"kubernetes": {"traefik_chart_version": "latest"}}, "kubernetes.traefik_chart_version",
     "is not a pinned chart version"),
    ("k8s-dev", {"kubernetes": {"replicas": 2}}, "kubernetes.replicas", "unknown setting"),
    ("k8s-prod", {"kubernetes": {"data_stores": "external", "external_data_cidrs": ["10.0.0.0/24"]}},
     "external_database_url", "is required when kubernetes.data_stores is external"),
    ("k8s-prod", {"kubernetes": {"external_data_cidrs": ["10.0.0.0/24"]}}, "kubernetes.data_stores",
     "need kubernetes.data_stores: external"),
    ("k8s-prod", {"kubernetes": {"data_stores": "external", "external_data_cidrs": ["10.0.0/33"]}},
     "kubernetes.external_data_cidrs", "is not a CIDR range"),
]


@pytest.mark.parametrize("stack,overrides,key,message", BAD, ids=[f"{case[2]}-{i}" for i, case in enumerate(BAD)])
def test_bad_kubernetes_config_fails_naming_the_key(stack, overrides, key, message):
    @pulumi.runtime.test
    def deploy():
        secrets = {"tunnel_token": f"{MOCK_SECRET_MARK}-token"} if "tunnel" in overrides else {}
        return run_program(stack, overrides=overrides, secrets=secrets).ready()

    with pytest.raises(ConfigError, match=rf"^llm-node:{re.escape(key)}: .*{re.escape(message)}") as raised:
        deploy()
    assert raised.value.key == key


def test_a_one_group_engines_list_is_the_engine_section():
    from stacks.config import parse_settings, read_stack_values
    from tests.stacks.mock_runtime import deep_merge

    values = read_stack_values("k8s-dev")
    section = parse_settings(values, "k8s-dev")
    listed = parse_settings(deep_merge(values, _k8s_dev_groups()), "k8s-dev")
    assert listed.engine.spec == section.engine.spec and listed.kubernetes == section.kubernetes
    # (the gateway's engine URLs on a cluster are the StatefulSet's pod names: stacks/kubernetes/manifests.py)


def test_the_docker_stacks_stay_on_docker():
    assert load_stack_settings("dev").target == "docker" and load_stack_settings("dev").kubernetes is None
    assert load_stack_settings("k8s-prod").kubernetes.gpus_per_engine == 1


def test_every_kubernetes_key_is_a_config_key():
    from stacks.kubernetes.settings import KUBERNETES_KEYS

    assert {f"kubernetes.{key}" for key in KUBERNETES_KEYS} <= set(all_keys())
    assert "target" in all_keys()


@pulumi.runtime.test
def test_long_engine_dns_cache_is_refused_on_kubernetes():
    with pytest.raises(ConfigError, match=r"^llm-node:gateway.engine_dns_ttl_seconds: 300 is too long"):
        run_program("k8s-dev", overrides={"gateway": {"engine_dns_ttl_seconds": 300}}).ready()


def test_external_data_stores_need_their_addresses_and_only_apply_to_kubernetes():
    from stacks.config import parse_settings, read_stack_values
    from tests.stacks.mock_runtime import deep_merge

    both = ["external_database_url", "external_redis_url"]
    values = deep_merge(read_stack_values("k8s-prod"), {"kubernetes": {"data_stores": "external"}})
    with pytest.raises(ConfigError, match=r"^llm-node:kubernetes.external_data_cidrs: is required"):
        parse_settings(values, "k8s-prod", secrets_present=both)
    with pytest.raises(ConfigError, match=r"^llm-node:external_database_url: applies only to target: kubernetes"):
        parse_settings(read_stack_values("prod"), "prod", secrets_present=both[:1])


@pulumi.runtime.test
def test_the_kubernetes_stack_reads_its_config_as_a_real_run_passes_it():
    """PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS, as the language host hands them over; external secrets flagged."""
    secrets = {"external_database_url": f"postgresql://u:{MOCK_SECRET_MARK}@10.20.0.5/db",
               "external_redis_url": f"redis://:{MOCK_SECRET_MARK}@10.20.0.6:6379/0"}
    overrides = {"kubernetes": {"data_stores": "external", "external_data_cidrs": ["10.20.0.0/24"]}}
    deployment = run_program("k8s-prod", overrides=overrides, secrets=secrets, config_via_env=True)

    def check(d):
        assert d.outputs["namespace"] == "llm-node"
    return deployment.ready().apply(check)


def test_an_external_url_in_plain_text_is_refused():
    @pulumi.runtime.test
    def deploy():
        return run_program("k8s-prod", overrides={"kubernetes": {"data_stores": "external",
                                                                 "external_data_cidrs": ["10.20.0.0/24"]}},
                           secrets={"external_database_url": "postgresql://u:p@h/db", "external_redis_url": "redis://h"},
                           plaintext_secrets=True).ready()

    with pytest.raises(ConfigError, match=r"^llm-node:external_\w+_url: is stored in plain text"):
        deploy()


def test_the_schema_package_is_pinned_and_covers_every_accepted_version():
    """kubernetes-validate's release decides which versions have strict schemas: it is pinned
    (pyproject.toml's dev extra), .venv runs the pin, and every version kubernetes.version may
    name (SUPPORTED_VERSIONS) validates strictly, the one above it does not exist there."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError

    from stacks.kubernetes.settings import SUPPORTED_VERSIONS

    dev = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    (requirement,) = [r for r in dev["project"]["optional-dependencies"]["dev"]
                      if re.match(r"kubernetes-validate\b", r)]
    pinned = re.fullmatch(r"kubernetes-validate==(\S+)", requirement)
    assert pinned, f"{requirement!r} is not an exact pin"
    assert metadata.version("kubernetes-validate") == pinned.group(1), "rerun scripts/bootstrap"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    low, high = SUPPORTED_VERSIONS
    for minor in range(low, high + 1):
        kubernetes_validate.validate(namespace, f"1.{minor}", strict=True)
    with pytest.raises(VersionNotSupportedError):
        kubernetes_validate.validate(namespace, f"1.{high + 1}", strict=True)
