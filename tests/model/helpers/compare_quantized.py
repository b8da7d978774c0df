"""Load a quantized checkpoint with transformers + compressed-tensors (decompressing it) and
compare it with the original model. Run with the quantize environment's Python; prints JSON.

    python compare_quantized.py ORIGINAL_DIR QUANTIZED_DIR
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hello! How can I help you today?",
           "Return the number of items in a container."]


def main(original_dir: str, quantized_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(original_dir)
    original = AutoModelForCausalLM.from_pretrained(original_dir, dtype=torch.float32)
    # run_compressed=False: unpack the int4/int8 weights into ordinary Linear layers.
    quantized = AutoModelForCausalLM.from_pretrained(
        quantized_dir, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False))
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = original(**inputs).logits, quantized(**inputs).logits
    layer = "model.layers.0.self_attn.q_proj.weight"
    w_orig, w_quant = original.get_parameter(layer), quantized.get_parameter(layer)
    group = w_quant[0, :128]
    print(json.dumps({
        "logits_cosine": torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item(),
        "logits_finite": bool(torch.isfinite(b).all()),
        "weight_cosine": torch.nn.functional.cosine_similarity(w_orig.flatten(), w_quant.flatten(), dim=0).item(),
        "weight_max_abs_diff": (w_orig - w_quant).abs().max().item(),
        "levels_in_first_group": int(group.unique().numel()),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
