"""Build a tiny random-weight Llama with a real tokenizer, with no download.

Run with the engine environment's Python (it has torch, transformers, tokenizers):

    python scripts/build_tiny_model.py OUT_DIR [--max-position-embeddings 2048]

Output is gibberish, but every serving path of vLLM is real: tokenization, chat template,
scheduling, streaming, usage, metrics, aborts, LoRA. Re-running with an existing complete
OUT_DIR does nothing (the marker file records the build parameters).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

MARKER = "llm-node-tiny-model.json"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def training_text() -> list[str]:
    """Deterministic local text: docstrings of a fixed set of standard-library modules."""
    import argparse as _ap
    import asyncio
    import collections
    import json as _json
    import pathlib
    import string
    import textwrap
    import typing

    lines: list[str] = []
    for module in (collections, _json, pathlib, string, textwrap, typing, asyncio, _ap):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                lines.extend(line for line in doc.splitlines() if line.strip())
    lines += ["Hello! How can I help you today?", "The quick brown fox jumps over the lazy dog."] * 50
    return lines


def build(out: Path, max_position_embeddings: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    params = {"max_position_embeddings": max_position_embeddings, "version": 1}
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"tiny model already built at {out}")
        return
    out.mkdir(parents=True, exist_ok=True)

    special = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        training_text(),
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=special[3:],
        model_max_length=max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: the CPU attention kernel needs >= 32
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    marker.write_text(json.dumps(params))
    print(f"tiny model built at {out} (vocab {len(tokenizer)})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-position-embeddings", type=int, default=2048)
    args = parser.parse_args(argv)
    build(args.out, args.max_position_embeddings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
