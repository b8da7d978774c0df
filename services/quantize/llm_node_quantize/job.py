"""The quantization job: load, (merge a LoRA,) calibrate, quantize, save compressed-tensors.

The output appears all at once: the checkpoint is written next to ``output`` and renamed
into place, so the engine never starts on a half-written directory. A marker file
records what was built; a re-run with the same inputs returns at once, which lets the
job run before every engine start.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .calibration import read_samples, tokenized_dataset
from .recipes import SCHEMES, build_recipe

MARKER = "llm-node-quantize.json"


@dataclass(frozen=True)
class JobArgs:
    model: Path
    output: Path
    calibration_file: Path
    scheme: str
    num_samples: int
    max_seq_length: int
    merge_lora: Path | None = None


def log(message: str) -> None:
    print(f"[llm-node-quantize] {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fingerprint(directory: Path) -> str:
    """Names, sizes and modification times of a directory's files: cheap for a 100 GB model,
    and any rewrite of the weights changes it."""
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def build_inputs(args: JobArgs) -> dict:
    """What determines the output; equal inputs mean the existing output is current."""
    if args.scheme not in SCHEMES:
        raise ValueError(f"--scheme: {args.scheme!r} is not one of {', '.join(SCHEMES)}")
    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"--model: {args.model} is not a Hugging Face model directory (no config.json)")
    inputs = {
        "model": str(args.model.resolve()),
        "model_files": _fingerprint(args.model),
        "scheme": args.scheme,
        "merge_lora": str(args.merge_lora.resolve()) if args.merge_lora else None,
    }
    if args.merge_lora:
        if not (args.merge_lora / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--merge-lora: {args.merge_lora} has no adapter_config.json")
        inputs["merge_lora_files"] = _fingerprint(args.merge_lora)
    if SCHEMES[args.scheme].needs_calibration:
        if not args.calibration_file.is_file():
            raise FileNotFoundError(f"--calibration-file: {args.calibration_file} does not exist")
        inputs |= {
            "calibration_sha256": _sha256(args.calibration_file),
            "num_samples": args.num_samples,
            "max_seq_length": args.max_seq_length,
        }
    return inputs


def is_current(output: Path, inputs: dict) -> bool:
    marker = output / MARKER
    try:
        return json.loads(marker.read_text())["inputs"] == inputs
    except (OSError, ValueError, KeyError):
        return False


def run(args: JobArgs, force: bool = False) -> dict:
    """Quantize ``args.model`` into ``args.output``; returns the marker's content."""
    inputs = build_inputs(args)
    if not force and is_current(args.output, inputs):
        log(f"{args.output} is already quantized from these inputs; nothing to do")
        return json.loads((args.output / MARKER).read_text())

    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .cpu_support import allow_cpu_only_calibration
    from .merge import merge_lora

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    if args.merge_lora:
        log(f"merging LoRA adapter {args.merge_lora} into the base weights")
        model = merge_lora(model, args.merge_lora)
    if allow_cpu_only_calibration():
        log("no accelerator: calibrating on the CPU")

    calibration = {}
    if SCHEMES[args.scheme].needs_calibration:
        samples = read_samples(args.calibration_file, args.num_samples)
        if len(samples) < args.num_samples:
            log(f"calibration file has {len(samples)} samples (asked for {args.num_samples}); using all")
        calibration = dict(
            dataset=tokenized_dataset(samples, tokenizer, args.max_seq_length),
            num_calibration_samples=len(samples),
            max_seq_length=args.max_seq_length,
        )
    log(f"quantizing {args.model} to {args.scheme} ({SCHEMES[args.scheme].description})")
    with torch.no_grad():
        oneshot(model=model, tokenizer=tokenizer, recipe=build_recipe(args.scheme), **calibration)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = args.output.with_name(f".{args.output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, save_compressed=True)
    tokenizer.save_pretrained(staging)
    report = {
        "inputs": inputs,
        "seconds": round(time.monotonic() - started, 2),
        "calibration_samples": calibration.get("num_calibration_samples", 0),
        "format": "compressed-tensors",
    }
    (staging / MARKER).write_text(json.dumps(report, indent=2) + "\n")
    if args.output.exists():
        shutil.rmtree(args.output)
    staging.rename(args.output)
    log(f"wrote {args.output} in {report['seconds']} s")
    return report


