"""Fixtures for the model pipeline tests: the tiny peft adapter and quantized copies of the
tiny model, made once per session (quantizing the tiny model takes seconds)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.launch import QuantizeSpec, quantize_process_argv
from tests.support.adapters import QUANTIZE_PYTHON, REPO, TINY_MODEL_DIR, tiny_adapter

CALIBRATION_FILE = REPO / "services" / "quantize" / "calibration" / "default.txt"


@dataclass
class QuantizeRun:
    output: Path
    returncode: int
    stderr: str


def run_quantize(spec: QuantizeSpec, *extra: str) -> QuantizeRun:
    """The job as the node runs it (services/launch.py argv), in the quantize environment."""
    if not QUANTIZE_PYTHON.exists():
        pytest.fail(f"{QUANTIZE_PYTHON} missing: run scripts/bootstrap --quantize")
    env = dict(os.environ, PYTHONPATH=str(REPO / "services" / "quantize"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run([*quantize_process_argv(spec, str(QUANTIZE_PYTHON)), *extra],
                          env=env, capture_output=True, text=True, timeout=600)
    return QuantizeRun(Path(spec.output_dir), proc.returncode, proc.stderr)


def quantized(out_root: Path, scheme: str, name: str, merge_lora: Path | None = None) -> QuantizeRun:
    run = run_quantize(QuantizeSpec(
        source_model=str(TINY_MODEL_DIR), output_dir=str(out_root / name),
        calibration_file=str(CALIBRATION_FILE), scheme=scheme, num_calibration_samples=32,
        max_seq_length=128, merge_lora_adapter=str(merge_lora) if merge_lora else None,
    ))
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.fixture(scope="session")
def quantized_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantized")


@pytest.fixture(scope="session")
def tiny_adapter_dir() -> Path:
    return tiny_adapter()


@pytest.fixture(scope="session")
def w4a16_model(quantized_root) -> QuantizeRun:
    return quantized(quantized_root, "W4A16_ASYM", "tiny-llama-w4a16")


@pytest.fixture(scope="session")
def w8a8_model(quantized_root) -> QuantizeRun:
    return quantized(quantized_root, "W8A8", "tiny-llama-w8a8")
