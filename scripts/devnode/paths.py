"""Where the local node's heavy pieces live: one definition for Python, the dev node, the
tests and the benchmarks. scripts/lib/env.sh defines the same names for the shell scripts
(tests/devnode/test_local_processes.py keeps the two equal).

Heavy environments live outside the checkout, so fresh clones (CI) on the same machine
reuse them; scripts/bootstrap creates what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("LLM_NODE_CACHE", Path.home() / ".cache" / "llm-node"))
ENGINE_VENV = Path(os.environ.get("ENGINE_VENV", CACHE / "venv-engine"))
QUANTIZE_VENV = Path(os.environ.get("QUANTIZE_VENV", CACHE / "venv-quantize"))
TINY_MODEL_DIR = Path(os.environ.get("TINY_MODEL_DIR", CACHE / "models" / "tiny-llama"))
TINY_ADAPTER_DIR = CACHE / "adapters" / "tiny-lora"

ENGINE_PYTHON = ENGINE_VENV / "bin" / "python"
QUANTIZE_PYTHON = QUANTIZE_VENV / "bin" / "python"
