# shellcheck shell=bash
# Shared paths for the shell scripts. Heavy environments live outside the checkout so that
# fresh clones (CI) on the same machine reuse them; everything is created when absent.
LLM_NODE_CACHE=${LLM_NODE_CACHE:-$HOME/.cache/llm-node}
ENGINE_VENV=${ENGINE_VENV:-$LLM_NODE_CACHE/venv-engine}
QUANTIZE_VENV=${QUANTIZE_VENV:-$LLM_NODE_CACHE/venv-quantize}
TINY_MODEL_DIR=${TINY_MODEL_DIR:-$LLM_NODE_CACHE/models/tiny-llama}
export LLM_NODE_CACHE ENGINE_VENV QUANTIZE_VENV TINY_MODEL_DIR
log() { printf '[llm-node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install Debian packages. As root (CI machines, containers) apt-get runs as is; as a user (a
# hosted CI runner such as GitHub's, a workstation) through sudo, which must not prompt.
# The prometheus package would start a service; the tests and the dev node run their own.
apt_install() {
  local as_root=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and no sudo: install $* as root, then rerun"
    as_root=(sudo -n DEBIAN_FRONTEND=noninteractive)
  fi
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
