#!/bin/sh
# The engine container's entrypoint: sanitize the LoRA adapters, then start vLLM.
#
# Adapters are mounted read-only at $ADAPTERS_SOURCE_DIR (one directory per adapter).
# Each is copied to $ADAPTERS_SANITIZED_DIR/<name> with a config vLLM accepts and a
# report of what changed; the originals are never touched. Static adapters are passed
# as --lora-modules NAME=$ADAPTERS_SANITIZED_DIR/NAME. An adapter vLLM cannot serve
# (DoRA, LoRA bias, rank above --max-lora-rank, ...) stops the start with a message
# naming the adapter and the reason, instead of a stack trace from inside vLLM.
set -eu

ADAPTERS_SOURCE_DIR=${ADAPTERS_SOURCE_DIR:-/adapters}
ADAPTERS_SANITIZED_DIR=${ADAPTERS_SANITIZED_DIR:-/run/llm-node/adapters}
SANITIZER=${LLM_NODE_SANITIZER:-/opt/llm-node/adapter_sanitizer.py}
PYTHON=${PYTHON:-python3}
# Comma-separated LoRA target modules the served architecture has; empty = Llama family.
LORA_TARGET_MODULES=${LORA_TARGET_MODULES:-}

# The rank limit is the engine's own --max-lora-rank (vLLM's default is 16).
max_lora_rank=16
previous=
for arg in "$@"; do
  case $previous in --max-lora-rank) max_lora_rank=$arg ;; esac
  case $arg in --max-lora-rank=*) max_lora_rank=${arg#*=} ;; esac
  previous=$arg
done

if [ -d "$ADAPTERS_SOURCE_DIR" ]; then
  "$PYTHON" "$SANITIZER" tree "$ADAPTERS_SOURCE_DIR" "$ADAPTERS_SANITIZED_DIR" \
    --max-lora-rank "$max_lora_rank" --target-modules "$LORA_TARGET_MODULES"
fi

exec vllm serve "$@"
