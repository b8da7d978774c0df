"""The LoRA adapter sanitizer: strips what newer PEFT writes, refuses what vLLM cannot serve,
reports what it changed, and never touches the original."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from services.engine.adapter_sanitizer import (
    CONFIG_NAME,
    KEPT_KEYS,
    REPORT_NAME,
    AdapterRejected,
    Policy,
    sanitize_adapter,
    sanitize_tree,
)
from tests.model.helpers.safetensors_header import write_zeros
from tests.support.adapters import NEWER_PEFT_KEYS, REPO, as_newer_peft_wrote_it

SANITIZER = REPO / "services" / "engine" / "adapter_sanitizer.py"
RANK8 = Policy(max_lora_rank=8)


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and modification time."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def edit_config(adapter: Path, **changes) -> None:
    path = adapter / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def newer_adapter(tiny_adapter_dir, tmp_path) -> Path:
    """The peft-built tiny adapter with the config keys a newer PEFT release writes."""
    return as_newer_peft_wrote_it(tiny_adapter_dir, tmp_path / "original")


def test_strips_newer_peft_keys_and_keeps_what_vllm_reads(newer_adapter, tmp_path):
    original = json.loads((newer_adapter / CONFIG_NAME).read_text())
    report = sanitize_adapter(newer_adapter, tmp_path / "clean", RANK8)

    clean = json.loads((tmp_path / "clean" / CONFIG_NAME).read_text())
    assert set(clean) <= KEPT_KEYS
    assert not set(NEWER_PEFT_KEYS) & set(clean)
    for key in ("r", "lora_alpha", "target_modules", "peft_type", "task_type", "bias", "use_rslora"):
        assert clean[key] == original[key]
    # Weights are copied byte for byte.
    assert (tmp_path / "clean" / "adapter_model.safetensors").read_bytes() == \
        (newer_adapter / "adapter_model.safetensors").read_bytes()
    # The report says what was removed, with the values it had.
    written = json.loads((tmp_path / "clean" / REPORT_NAME).read_text())
    assert written["removed_keys"] == report.removed_keys
    assert set(NEWER_PEFT_KEYS) <= set(report.removed_keys)
    assert report.removed_keys["alora_invocation_tokens"] is None
    assert report.removed_keys["use_qalora"] is False
    assert set(report.removed_keys) | set(report.kept_keys) == set(original)
    assert report.rank == 8 and report.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_sanitizing_a_sanitized_adapter_changes_nothing(newer_adapter, tmp_path):
    sanitize_adapter(newer_adapter, tmp_path / "once", RANK8)
    report = sanitize_adapter(tmp_path / "once", tmp_path / "twice", RANK8)
    assert report.removed_keys == {}
    assert (tmp_path / "once" / CONFIG_NAME).read_text() == (tmp_path / "twice" / CONFIG_NAME).read_text()


def test_the_original_is_never_edited(newer_adapter, tmp_path):
    before = snapshot(newer_adapter)
    sanitize_adapter(newer_adapter, tmp_path / "clean", RANK8)
    with pytest.raises(AdapterRejected):
        sanitize_adapter(newer_adapter, tmp_path / "rejected", Policy(max_lora_rank=4))
    # A destination overlapping the source (same dir, inside it, or a parent) is refused.
    for destination in (newer_adapter, newer_adapter / "sanitized", newer_adapter.parent):
        with pytest.raises(ValueError, match="never edited"):
            sanitize_adapter(newer_adapter, destination, RANK8)
    assert snapshot(newer_adapter) == before


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "DoRA"),
    ({"lora_bias": True}, "lora_bias: LoRA bias terms are not supported"),
    ({"bias": "all"}, "bias 'all'"),
    ({"r": 16}, "r = 16 is above the engine's max_lora_rank 8"),
    ({"rank_pattern": {"q_proj": 32}}, "rank_pattern['q_proj'] = 32 is above the engine's max_lora_rank 8"),
    ({"target_modules": ["q_proj", "lm_head"]}, "target_modules ['lm_head'] are not supported"),
    ({"alora_invocation_tokens": [5, 6]}, "Activated LoRA"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa'"),
    ({"use_qalora": True}, "QALoRA"),
    ({"target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters"),
    ({"modules_to_save": ["embed_tokens"]}, "modules_to_save ['embed_tokens']"),
    ({"peft_type": "IA3"}, "only LoRA adapters"),
])
def test_rejects_what_vllm_cannot_serve(newer_adapter, tmp_path, changes, message):
    edit_config(newer_adapter, **changes)
    with pytest.raises(AdapterRejected) as rejected:
        sanitize_adapter(newer_adapter, tmp_path / "out", RANK8)
    assert any(message in problem for problem in rejected.value.problems), rejected.value.problems
    assert str(newer_adapter) in str(rejected.value)
    assert not (tmp_path / "out").exists()


def test_rejects_target_modules_outside_a_custom_policy(newer_adapter, tmp_path):
    policy = Policy(max_lora_rank=8, target_modules=frozenset({"q_proj", "v_proj"}))
    with pytest.raises(AdapterRejected, match=r"target_modules \['k_proj', 'o_proj'\] are not supported"):
        sanitize_adapter(newer_adapter, tmp_path / "out", policy)


def synthetic_adapter(directory: Path, tensors: dict, **config) -> Path:
    directory.mkdir(parents=True)
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none"}
    (directory / CONFIG_NAME).write_text(json.dumps(base | config))
    write_zeros(directory / "adapter_model.safetensors", tensors)
    return directory


PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("tensors, message", [
    ({f"{PREFIX}.lora_A.weight": ("F32", [4, 16]), f"{PREFIX}.lora_B.weight": ("F32", [16, 4]),
      f"{PREFIX}.lora_magnitude_vector": ("F32", [16])}, "DoRA magnitude weights"),
    ({f"{PREFIX}.lora_A.weight": ("F32", [4, 16]), f"{PREFIX}.lora_B.bias": ("F32", [16])}, "LoRA bias weights"),
    ({f"{PREFIX}.lora_A.weight": ("F32", [32, 16]), f"{PREFIX}.lora_B.weight": ("F32", [16, 32])},
     "the weights have rank 32, above the engine's max_lora_rank 8"),
    ({"base_model.model.lm_head.lora_A.weight": ("F32", [4, 16])}, "weights for modules ['lm_head'] are not supported"),
])
def test_checks_the_weights_not_only_the_config(tmp_path, tensors, message):
    """vLLM trusts the tensor names over the config: a config that hides DoRA or a big rank is caught."""
    adapter = synthetic_adapter(tmp_path / "adapter", tensors)
    with pytest.raises(AdapterRejected) as rejected:
        sanitize_adapter(adapter, tmp_path / "out", RANK8)
    assert any(message in problem for problem in rejected.value.problems), rejected.value.problems


def test_rejects_a_directory_that_is_not_an_adapter(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterRejected, match=r"no adapter_config\.json"):
        sanitize_adapter(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / CONFIG_NAME).write_text(
        '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}')
    with pytest.raises(AdapterRejected, match="no adapter weights"):
        sanitize_adapter(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterRejected, match="not valid JSON"):
        sanitize_adapter(tmp_path / "empty", tmp_path / "out")


def test_tree_reports_every_bad_adapter_by_name(newer_adapter, tmp_path):
    root = tmp_path / "adapters"
    as_newer_peft_wrote_it(newer_adapter, root / "good")
    as_newer_peft_wrote_it(newer_adapter, root / "dora")
    edit_config(root / "dora", use_dora=True)
    as_newer_peft_wrote_it(newer_adapter, root / "too-big")
    edit_config(root / "too-big", r=64)
    with pytest.raises(AdapterRejected) as rejected:
        sanitize_tree(root, tmp_path / "out", RANK8)
    problems = rejected.value.problems
    assert any(p.startswith("dora: use_dora") for p in problems), problems
    assert any(p.startswith("too-big: r = 64") for p in problems), problems
    assert not any(p.startswith("good:") for p in problems)


def test_command_line_runs_on_the_bare_standard_library(newer_adapter, tmp_path):
    """`python3 -I` ignores the project env and PYTHONPATH: what the vLLM image's python has."""
    ok = subprocess.run(["python3", "-I", str(SANITIZER), "adapter", str(newer_adapter), str(tmp_path / "ok"),
                         "--max-lora-rank", "8"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "removed: alora_invocation_tokens" in ok.stderr
    assert (tmp_path / "ok" / REPORT_NAME).is_file()

    refused = subprocess.run(["python3", "-I", str(SANITIZER), "adapter", str(newer_adapter), str(tmp_path / "no"),
                              "--max-lora-rank", "4"], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "cannot be served" in refused.stderr and "max_lora_rank 4" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_scripts_sanitize_adapter_wraps_the_same_code(newer_adapter, tmp_path):
    done = subprocess.run([str(REPO / "scripts" / "sanitize-adapter"), str(newer_adapter), str(tmp_path / "out"),
                           "--max-lora-rank", "8"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert "alora_invocation_tokens" not in config and config["r"] == 8
