"""Calibration samples from a local text file (no model hub, no dataset download)."""

from __future__ import annotations

from pathlib import Path


class CalibrationError(ValueError):
    pass


def read_samples(path: Path, num_samples: int) -> list[str]:
    """The first ``num_samples`` non-empty lines of ``path``, one sample per line.

    A literal ``\\n`` in a line stands for a newline, so multi-line samples (code) fit
    on one line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CalibrationError(f"calibration file {path}: {error.strerror or error}") from error
    samples = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not samples:
        raise CalibrationError(f"calibration file {path} has no non-empty lines")
    return samples[:num_samples]


def tokenized_dataset(samples: list[str], tokenizer, max_seq_length: int):
    """A ``datasets.Dataset`` of token ids, the form llm-compressor calibrates on."""
    from datasets import Dataset

    encoded = tokenizer(samples, truncation=True, max_length=max_seq_length, add_special_tokens=True)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
