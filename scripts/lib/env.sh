# Shared paths for the shell scripts. Heavy environments live outside the checkout so that
# fresh clones (CI) on the same machine reuse them; everything is created when absent.
LLM_NODE_CACHE=${LLM_NODE_CACHE:-$HOME/.cache/llm-node}
ENGINE_VENV=${ENGINE_VENV:-$LLM_NODE_CACHE/venv-engine}
QUANTIZE_VENV=${QUANTIZE_VENV:-$LLM_NODE_CACHE/venv-quantize}
TINY_MODEL_DIR=${TINY_MODEL_DIR:-$LLM_NODE_CACHE/models/tiny-llama}
export LLM_NODE_CACHE ENGINE_VENV QUANTIZE_VENV TINY_MODEL_DIR
log() { printf '[llm-node] %s\n' "$*" >&2; }
