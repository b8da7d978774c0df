"""Quantization schemes the job offers, as llm-compressor recipes.

- W4A16 / W4A16_ASYM: 4-bit weights, 16-bit activations, calibrated with AWQ
  (activation-aware scaling, then group-wise int4 quantization). The GPU engine's
  format of choice; needs calibration text.
- W8A8: int8 weights (per channel) and int8 activations quantized dynamically per
  token at run time, so no calibration data is needed. The CPU engine serves it.

AutoAWQ (the older AWQ tool) is deprecated upstream; llm-compressor's AWQModifier is
its successor and writes compressed-tensors instead of AutoAWQ's own format.
"""

from __future__ import annotations

from dataclasses import dataclass

# Never quantize the output head: it is small and its precision matters most.
IGNORE = ["lm_head"]


@dataclass(frozen=True)
class Scheme:
    name: str
    needs_calibration: bool
    description: str


SCHEMES = {
    "W4A16": Scheme("W4A16", True, "AWQ, int4 symmetric weights (group 128), 16-bit activations"),
    "W4A16_ASYM": Scheme("W4A16_ASYM", True, "AWQ, int4 weights with zero points (group 128), 16-bit activations"),
    "W8A8": Scheme("W8A8", False, "int8 weights per channel, int8 dynamic per-token activations"),
}


def build_recipe(scheme: str) -> list:
    """The llm-compressor modifiers that produce ``scheme``."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if scheme not in SCHEMES:
        raise ValueError(f"--scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    quantize = QuantizationModifier(targets=["Linear"], scheme=scheme, ignore=IGNORE)
    if scheme.startswith("W4A16"):
        from llmcompressor.modifiers.transform.awq import AWQModifier

        # duo_scaling="both": search scales with and without the weight term, keep the best.
        return [AWQModifier(duo_scaling="both"), quantize]
    return [quantize]
