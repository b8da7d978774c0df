"""Several models on one node: engine groups (llm-node:engines) under the mock runtime, and every
configuration the groups cannot share refused before anything is declared, naming the key."""

from __future__ import annotations

import copy
from typing import Any

import pulumi
import pytest
import yaml

from stacks.config import ConfigError, load_engine_specs, load_stack_settings, parse_settings, read_stack_values
from tests.stacks.engine_groups import three_group_overrides, three_groups
from tests.stacks.mock_runtime import Deployment, deep_merge, run_program

PREFIX = "llm-node"
GROUP_CONTAINERS = {"engine-chat-0", "engine-coder-0", "engine-embed-0"}


def prometheus_targets(d: Deployment) -> dict[str, list[str]]:
    config = yaml.safe_load(next(u["content"] for u in d.container("prometheus").props["uploads"]
                                 if u["file"].endswith("prometheus.yml")))
    return {job["job_name"]: [t for static in job.get("static_configs", []) for t in static["targets"]]
            for job in config["scrape_configs"]}


@pulumi.runtime.test
def test_three_groups_declare_their_containers_gpus_engine_lists_and_targets():
    def check(d: Deployment):
        names = {name.removeprefix(f"{PREFIX}-") for name in d.containers}
        assert {n for n in names if n.startswith("engine-")} == GROUP_CONTAINERS  # no engine-0: named by group
        # each group on its own GPUs; the quantize job on its group's (chat's) first GPU
        gpus = {name: d.container(name).props["deviceRequests"][0]["deviceIds"] for name in GROUP_CONTAINERS}
        assert gpus == {"engine-chat-0": ["0", "1"], "engine-coder-0": ["2"], "engine-embed-0": ["3"]}
        assert d.container("quantize").props["deviceRequests"][0]["deviceIds"] == ["0"]
        # the gateway: generation engines and embedding engines apart
        env = d.container("gateway").env
        assert env["GATEWAY_ENGINES"] == "http://engine-chat-0:8000,http://engine-coder-0:8000"
        assert env["GATEWAY_EMBEDDING_ENGINES"] == "http://engine-embed-0:8000"
        gateway_depends = {getattr(r, "_name", "") for r in d.container("gateway").opts.depends_on or []}
        assert gateway_depends >= GROUP_CONTAINERS
        # Prometheus scrapes every group
        assert sorted(prometheus_targets(d)["vllm"]) == sorted(f"{n}:8000" for n in GROUP_CONTAINERS)
        # each its own model; only the embedding group runs the pooling runner, and it has no LoRA
        commands = {name: d.container(name).props["command"] for name in GROUP_CONTAINERS}
        served = {name: c[c.index("--served-model-name") + 1] for name, c in commands.items()}
        assert served == {"engine-chat-0": "qwen2.5-7b-instruct", "engine-coder-0": "qwen2.5-coder-7b",
                          "engine-embed-0": "bge-base"}
        assert "--runner" not in commands["engine-chat-0"] and "--runner" not in commands["engine-coder-0"]
        embed = commands["engine-embed-0"]
        assert embed[embed.index("--runner"):embed.index("--runner") + 4] == ["--runner", "pooling", "--convert",
                                                                                "embed"]
        assert "--enable-lora" not in embed and "--enable-lora" in commands["engine-chat-0"]
        # the quantize job gates only the group whose model it writes
        after = {name: d.container(name).labels.get("llm-node.after") for name in GROUP_CONTAINERS}
        assert after == {"engine-chat-0": "ok", "engine-coder-0": None, "engine-embed-0": None}
        # one engine image for the three (same device)
        engine_images = {c.props["image"] for c in (d.container(n) for n in GROUP_CONTAINERS)}
        assert len(engine_images) == 1
        assert len([i for i in d.of_type("docker:index/image:Image")
                    if i.props["imageName"].startswith("llm-node/engine-")]) == 1
    return run_program("prod", overrides=three_group_overrides()).ready().apply(check)


@pulumi.runtime.test
def test_replicas_of_a_group_are_numbered_within_it():
    groups = three_groups()
    groups[1] |= {"replicas": 2, "gpu_ids": ["2", "4"]}

    def check(d: Deployment):
        assert {"engine-coder-0", "engine-coder-1"} <= {n.removeprefix(f"{PREFIX}-") for n in d.containers}
        assert d.container("engine-coder-1").props["deviceRequests"][0]["deviceIds"] == ["4"]
        assert d.container("gateway").env["GATEWAY_ENGINES"] == \
            "http://engine-chat-0:8000,http://engine-coder-0:8000,http://engine-coder-1:8000"
        assert "engine-coder-1:8000" in prometheus_targets(d)["vllm"]
    return run_program("prod", overrides=three_group_overrides() | {"engines": groups}).ready().apply(check)


def test_a_single_engine_section_is_the_group_main_with_the_old_names():
    prod = load_stack_settings("prod")
    assert [g.group for g in prod.engines] == ["main"] and prod.engines[0].aliases == ["engine-0"]
    assert prod.gateway.engines == ["http://engine-0:8000"] and prod.gateway.embedding_engines == []
    assert prod.quantize_group == "main"


def test_load_engine_specs_gives_every_group_in_stack_file_order():
    specs = load_engine_specs("dev")
    assert list(specs) == ["chat", "embed"]
    assert specs["chat"].kind == "generate" and specs["chat"].lora_enabled
    embed = specs["embed"]
    assert (embed.kind, embed.served_model_name, embed.max_model_len, embed.lora_enabled) == \
        ("embed", "tiny-embed", 512, False)
    assert embed.model == specs["chat"].model  # the same tiny model directory, served twice


# -- what groups cannot share, refused naming the key -------------------------------------------------


def _groups(edit) -> dict[str, Any]:
    groups = copy.deepcopy(three_groups())
    edit(groups)
    return {"engines": groups}


def _set(index: int, **values):
    def edit(groups):
        groups[index].update(values)
    return edit


def _drop(index: int, key: str):
    def edit(groups):
        groups[index].pop(key)
    return edit


INVALID = [
    # (what, overrides of the three-group prod stack, the key the message names, a phrase it says)
    ("same GPU in two groups", _groups(_set(1, gpu_ids=["1"])), "engines[1].gpu_ids", "GPU 1 is already group chat"),
    ("default GPU ids collide", _groups(_drop(1, "gpu_ids")), "engines[1].gpu_ids", "GPU 0 is already group chat"),
    ("duplicate served name", _groups(_set(2, served_model_name="qwen2.5-coder-7b")), "engines[2].served_model_name",
     "already served by group coder"),
    ("LoRA on an embedding model", _groups(_set(2, enable_lora=True)), "engines[2].enable_lora", "serves no LoRA"),
    ("adapters on an embedding model", _groups(_set(2, lora_adapters=["support"])), "engines[2].lora_adapters",
     "serves no LoRA"),
    ("a LoRA setting on an embedding model", _groups(_set(2, max_lora_rank=16)), "engines[2].max_lora_rank",
     "serves no LoRA"),
    ("unknown kind", _groups(_set(1, kind="rerank")), "engines[1].kind", "is not one of generate, embed"),
    ("duplicate group name", _groups(_set(1, name="chat")), "engines[1].name", "already the name of engines[0]"),
    ("group name not a DNS label", _groups(_set(0, name="Chat_1")), "engines[0].name", "is not a group name"),
    ("group without a name", _groups(_drop(0, "name")), "engines[0].name", "is required"),
    ("unknown key in a group", _groups(_set(0, replica=2)), "engines[0].replica", "unknown setting"),
    ("only embedding groups", {"engines": [three_groups()[2]], "quantize": {"enabled": False}}, "engines",
     "at least one group of kind generate"),
    ("an empty list", {"engines": []}, "engines", "non-empty list"),
    ("engine and engines both", {"engine": read_stack_values("prod")["engine"]}, "engines", "not both"),
    ("quantize without a group", {"quantize": {"group": None}}, "quantize.group", "is required with several"),
    ("quantize for an unknown group", {"quantize": {"group": "vision"}}, "quantize.group", "is not one of"),
    ("quantize for a group serving another model", {"quantize": {"group": "coder"}}, "engines[1].model_dir",
     "must be quantize.output_model_dir"),
]


@pytest.mark.parametrize("overrides,key,phrase", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_groups_fail_naming_the_key(overrides, key, phrase):
    values = deep_merge(deep_merge(read_stack_values("prod"), three_group_overrides()), overrides)
    with pytest.raises(ConfigError) as raised:
        parse_settings(values, "prod")
    assert raised.value.key == key, str(raised.value)
    assert phrase in str(raised.value)


def test_a_shared_gpu_fails_through_the_program_before_anything_is_declared():
    @pulumi.runtime.test
    def deploy():
        return run_program("prod", overrides=three_group_overrides() | _groups(_set(2, gpu_ids=["2"]))).ready()

    with pytest.raises(ConfigError, match=r"^llm-node:engines\[2\]\.gpu_ids: GPU 2 is already group coder"):
        deploy()
