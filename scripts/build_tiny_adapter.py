"""Build a tiny LoRA adapter for the tiny local model with peft, on the CPU, with no download.

Run with the quantization environment's Python (it has torch, transformers and peft):

    python scripts/build_tiny_adapter.py BASE_MODEL_DIR OUT_DIR

r=8 on the attention projections (q/k/v/o), the shape the CPU engine is started for
(``--max-lora-rank 8``). The LoRA B matrices are random instead of peft's default zeros,
so the adapter visibly changes the model's output: a test can tell whether a request
was served with or without it. Re-running with a complete OUT_DIR does nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARKER = "llm-node-tiny-adapter.json"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
RANK = 8


def build(base: Path, out: Path) -> None:
    params = {"base": str(base.resolve()), "r": RANK, "target_modules": TARGET_MODULES, "version": 1}
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"tiny adapter already built at {out}")
        return

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    config = LoraConfig(
        r=RANK,
        lora_alpha=16,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A and B: the adapter must change outputs
    )
    peft_model = get_peft_model(model, config)
    # Scale the random B up so the change survives the model's bf16 rounding.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    marker.write_text(json.dumps(params))
    print(f"tiny adapter built at {out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model directory (scripts/build_tiny_model.py)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    build(args.base, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
