"""The GPU rules of the preflight (driver per CUDA version, capability per quantization),
checked on plain values: this machine has no GPU, a node's nvidia-smi output does."""

from __future__ import annotations

import pytest

from scripts import preflight_gpu as gpu

# `nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total
#  --format=csv,noheader,nounits` as printed by two real hosts.
TWO_L4 = "0, NVIDIA L4, 570.86.15, 8.9, 23034\n1, NVIDIA L4, 570.86.15, 8.9, 23034\n"
ONE_V100 = "0, Tesla V100-SXM2-16GB, 535.104.05, 7.0, 16384\n"
OLD_DRIVER = "0, Tesla T4, 470.82.01, [Not Supported], 15360\n"


def test_parse_gpu_query_reads_every_gpu():
    gpus = gpu.parse_gpu_query(TWO_L4)
    assert [(g.index, g.name, g.driver_version, g.compute_capability, g.memory_mib) for g in gpus] == [
        (0, "NVIDIA L4", "570.86.15", (8, 9), 23034),
        (1, "NVIDIA L4", "570.86.15", (8, 9), 23034),
    ]
    assert gpu.parse_gpu_query(OLD_DRIVER)[0].compute_capability is None


def test_parse_driver_cuda_from_nvidia_smi_q():
    text = "Driver Version                            : 551.61\nCUDA Version                              : 12.4\n"
    assert gpu.parse_driver_cuda(text) == (12, 4)
    assert gpu.parse_driver_cuda("no such line") is None


@pytest.mark.parametrize("image,cuda", [
    ("vllm/vllm-openai:v0.21.0-cu129", (12, 9)),
    ("vllm/vllm-openai:v0.21.0", (13, 0)),
    ("vllm/vllm-openai:v0.10.1.1", (12, 8)),
    ("vllm/vllm-openai:v0.12.0", (12, 9)),
    ("registry.local:5000/mirror/vllm/vllm-openai:v0.6.3", (12, 4)),
    ("vllm/vllm-openai-cpu:v0.11.0", None),
    ("vllm/vllm-openai:latest", None),
])
def test_image_cuda_from_tag(image, cuda):
    assert gpu.image_cuda_from_tag(image) == cuda


def test_image_cuda_from_env_wins_over_guessing():
    env = ["PATH=/usr/bin", "NVIDIA_REQUIRE_CUDA=cuda>=12.8", "CUDA_VERSION=12.8.1"]
    assert gpu.image_cuda_from_env(env) == (12, 8)
    assert gpu.image_cuda_from_env(["PATH=/usr/bin"]) is None


def test_min_driver_uses_the_windows_column_on_wsl():
    assert gpu.min_driver_for((12, 8), wsl=False) == "570.26"
    assert gpu.min_driver_for((12, 8), wsl=True) == "570.65"
    # 12.7 was never released: the next version up decides.
    assert gpu.min_driver_for((12, 7), wsl=False) == "570.26"
    assert gpu.min_driver_for((99, 0), wsl=False) is None


def test_driver_new_enough_passes():
    verdict = gpu.judge_driver(gpu.parse_gpu_query(TWO_L4), (12, 8), (12, 8), wsl=False)
    assert verdict.ok, verdict.detail
    assert "supports CUDA 12.8" in verdict.detail


def test_old_driver_on_linux_names_the_minimum():
    verdict = gpu.judge_driver(gpu.parse_gpu_query(ONE_V100), (12, 2), (12, 8), wsl=False)
    assert not verdict.ok
    assert "driver 535.104.05 supports CUDA 12.2, too old" in verdict.detail
    assert "driver >= 570.26" in verdict.detail
    assert "WSL" not in verdict.detail


def test_old_driver_on_wsl_names_the_windows_fix():
    gpus = gpu.parse_gpu_query("0, NVIDIA GeForce RTX 3090, 531.79, 8.6, 24576\n")
    verdict = gpu.judge_driver(gpus, (12, 1), (12, 8), wsl=True)
    assert not verdict.ok
    assert "Windows driver >= 570.65" in verdict.detail
    assert "update the NVIDIA driver on Windows" in verdict.detail
    assert "do not install a Linux NVIDIA driver inside WSL" in verdict.detail


def test_driver_without_reported_cuda_falls_back_to_the_table():
    assert gpu.judge_driver(gpu.parse_gpu_query(TWO_L4), None, (12, 8), wsl=False).ok
    assert not gpu.judge_driver(gpu.parse_gpu_query(ONE_V100), None, (12, 8), wsl=False).ok


def test_wsl_detection():
    assert gpu.is_wsl("Linux version 5.15.153.1-microsoft-standard-WSL2 (root@65c7...)")
    assert not gpu.is_wsl("Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)")


@pytest.mark.parametrize("rows,quantization,ok", [
    (TWO_L4, "awq_marlin", True),
    (ONE_V100, None, True),
    (ONE_V100, "awq", False),          # AWQ has no Volta kernel
    (ONE_V100, "awq_marlin", False),
    ("0, Tesla T4, 550.54.15, 7.5, 15360\n", "awq_marlin", True),
    ("0, Tesla T4, 550.54.15, 7.5, 15360\n", "fp8", False),
    ("0, Tesla P100, 550.54.15, 6.0, 16384\n", None, False),  # below vLLM's 7.0
    (OLD_DRIVER, None, False),          # capability not reported
])
def test_capability(rows, quantization, ok):
    verdict = gpu.judge_capability(gpu.parse_gpu_query(rows), quantization)
    assert verdict.ok is ok, verdict.detail
