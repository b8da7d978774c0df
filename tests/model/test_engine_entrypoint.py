"""The engine container's entrypoint, run without Docker: the adapters are sanitized before
`vllm serve` starts (a stand-in `vllm` on PATH records the arguments it was given)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from services.engine.adapter_sanitizer import CONFIG_NAME, REPORT_NAME
from services.launch import EngineSpec, engine_args
from tests.support.adapters import NEWER_PEFT_KEYS, REPO, as_newer_peft_wrote_it

ENGINE_DIR = REPO / "services" / "engine"
ENTRYPOINT = ENGINE_DIR / "entrypoint.sh"


@pytest.fixture
def container(tmp_path, tiny_adapter_dir):
    """Directories and environment standing in for the container's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorded = tmp_path / "vllm-args.json"
    fake_vllm = bin_dir / "vllm"
    record = f'import json, sys; json.dump(sys.argv[1:], open("{recorded}", "w"))'
    fake_vllm.write_text(f"#!/bin/sh\nexec python3 -c '{record}' \"$@\"\n")
    fake_vllm.chmod(0o755)
    source, sanitized = tmp_path / "adapters", tmp_path / "run" / "adapters"
    as_newer_peft_wrote_it(tiny_adapter_dir, source / "tiny-lora")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ADAPTERS_SOURCE_DIR=str(source),
               ADAPTERS_SANITIZED_DIR=str(sanitized), LLM_NODE_SANITIZER=str(ENGINE_DIR / "adapter_sanitizer.py"))
    return {"env": env, "source": source, "sanitized": sanitized, "recorded": recorded}


def run_entrypoint(container, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=container["env"], capture_output=True, text=True,
                          timeout=60)


def test_sanitizes_adapters_then_execs_vllm_serve_with_the_launch_arguments(container):
    sanitized_adapter = container["sanitized"] / "tiny-lora"
    args = engine_args(EngineSpec(model="/models/tiny-llama", served_model_name="tiny-llama", max_lora_rank=8,
                                  lora_modules={"tiny-lora": str(sanitized_adapter)}))
    done = run_entrypoint(container, args)
    assert done.returncode == 0, done.stderr

    assert json.loads(container["recorded"].read_text()) == ["serve", *args]
    config = json.loads((sanitized_adapter / CONFIG_NAME).read_text())
    assert config["r"] == 8 and not set(NEWER_PEFT_KEYS) & set(config)
    report = json.loads((sanitized_adapter / REPORT_NAME).read_text())
    assert report["max_lora_rank"] == 8 and "alora_invocation_tokens" in report["removed_keys"]
    # The mounted original is untouched.
    assert "alora_invocation_tokens" in json.loads((container["source"] / "tiny-lora" / CONFIG_NAME).read_text())


def test_an_adapter_above_the_engines_rank_stops_the_start_with_a_clear_message(container):
    done = run_entrypoint(container, ["--model", "/models/m", "--enable-lora", "--max-lora-rank=4"])
    assert done.returncode != 0
    assert not container["recorded"].exists(), "vllm must not start"
    assert "tiny-lora: r = 8 is above the engine's max_lora_rank 4" in done.stderr
    assert not (container["sanitized"] / "tiny-lora").exists()


def test_without_an_adapters_mount_vllm_starts_directly(container, tmp_path):
    container["env"]["ADAPTERS_SOURCE_DIR"] = str(tmp_path / "not-mounted")
    done = run_entrypoint(container, ["--model", "/models/m"])
    assert done.returncode == 0, done.stderr
    assert json.loads(container["recorded"].read_text()) == ["serve", "--model", "/models/m"]


def test_the_image_wires_the_entrypoint_onto_a_pinned_vllm_image():
    dockerfile = (ENGINE_DIR / "Dockerfile").read_text()
    image = re.search(r"^ARG VLLM_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert image.startswith("vllm/vllm-openai:v") and not image.endswith(":latest")
    assert re.search(r"^COPY adapter_sanitizer.py entrypoint.sh /opt/llm-node/$", dockerfile, re.M)
    assert 'ENTRYPOINT ["/opt/llm-node/entrypoint.sh"]' in dockerfile
    assert "ADAPTERS_SOURCE_DIR=/adapters" in dockerfile
    assert "ADAPTERS_SANITIZED_DIR=/run/llm-node/adapters" in dockerfile
