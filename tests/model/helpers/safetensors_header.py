"""Read and write safetensors files with the standard library (the project env has no torch).

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets) and the raw tensor bytes; enough to inspect checkpoints and to build small
adapters with chosen tensor names for the sanitizer's tests.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

DTYPE_SIZES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "I64": 8, "I8": 1, "U8": 1}


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_bytes(path: Path, name: str) -> bytes:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        start, end = header[name]["data_offsets"]
        f.seek(8 + length + start)
        return f.read(end - start)


def write_zeros(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose tensors (name -> (dtype, shape)) are all zeros."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_SIZES[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
