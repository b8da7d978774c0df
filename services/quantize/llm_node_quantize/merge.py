"""Fold a LoRA adapter into the base weights before quantizing (peft merge_and_unload).

Quantizing a merged model serves the fine-tune at 4-bit speed without a LoRA at run
time; the adapter's own config must pass the sanitizer's checks first (no DoRA etc.
surprises are silently merged: peft raises for what it cannot merge).
"""

from __future__ import annotations

from pathlib import Path


def merge_lora(model, adapter_dir: Path):
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--merge-lora: {adapter_dir} has no adapter_config.json")
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
