"""Make llm-compressor's AWQ run on a machine without an accelerator.

llm-compressor 0.14's AWQ step pins its cached activations in page-locked memory
unconditionally (``IntermediatesCache.pin_memory``) to speed up host-to-GPU copies.
Without a GPU, ``Tensor.pin_memory()`` raises "Cannot access accelerator device when
none is available". Pinning only helps copies to an accelerator, so when there is none
we make it a no-op; with a GPU nothing changes.
"""

from __future__ import annotations

import torch


def allow_cpu_only_calibration() -> bool:
    """Patch the pinning away when no accelerator exists; returns whether it patched."""
    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    def pin_memory(self, batch_index, input_names=None):  # same signature
        return None

    IntermediatesCache.pin_memory = pin_memory
    return True
