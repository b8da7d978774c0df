"""LoRA adapters the session engine serves from start-up (``--lora-modules``)."""

from __future__ import annotations

from pathlib import Path


def build_static_adapters(work_dir: Path) -> dict[str, str]:
    """Adapter name -> directory, built before the session engine starts."""
    return {}
