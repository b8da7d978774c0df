"""Command line of the quantization job; mirrors ``services.launch.quantize_args``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .calibration import CalibrationError
from .job import JobArgs, run
from .recipes import SCHEMES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_node_quantize", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="Hugging Face model directory to quantize")
    p.add_argument("--output", type=Path, required=True, help="directory to write the compressed-tensors checkpoint to")
    p.add_argument("--calibration-file", type=Path, required=True,
                   help="local text file, one calibration sample per line")
    p.add_argument("--scheme", default="W4A16_ASYM", choices=sorted(SCHEMES))
    p.add_argument("--num-samples", type=int, default=64, help="calibration samples to use (first N lines)")
    p.add_argument("--max-seq-length", type=int, default=512, help="tokens per calibration sample")
    p.add_argument("--merge-lora", type=Path, default=None, help="peft adapter directory merged into the base first")
    p.add_argument("--force", action="store_true", help="quantize even if the output is current")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.num_samples <= 0 or ns.max_seq_length <= 0:
        print("--num-samples and --max-seq-length must be positive", file=sys.stderr)
        return 2
    args = JobArgs(
        model=ns.model, output=ns.output, calibration_file=ns.calibration_file, scheme=ns.scheme,
        num_samples=ns.num_samples, max_seq_length=ns.max_seq_length, merge_lora=ns.merge_lora,
    )
    try:
        run(args, force=ns.force)
    except (CalibrationError, FileNotFoundError, ValueError) as error:
        print(f"llm_node_quantize: {error}", file=sys.stderr)
        return 2
    return 0
