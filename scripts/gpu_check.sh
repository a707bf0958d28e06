#!/usr/bin/env bash
# The accelerator check, for a fresh machine with one NVIDIA GPU (the package index reachable):
#
#   bash scripts/gpu_check.sh                 # installs, runs, writes gpu_check.json (< 8 min)
#   bash scripts/gpu_check.sh --cpu           # dry run: the same steps, tiny, on the CPU
#   bash scripts/gpu_check.sh --no-install    # use the python already set up (PYTHON=...)
#
# Installs ripu_jax and jax's CUDA build (the jax version of requirements) into .venv-gpu-check,
# then runs scripts/gpu_check.py: the acquisition tests on the GPU, the acquisition benchmark at
# 1024x2048 (both score implementations) and the training step at the release's size (f32 and
# bf16). Extra arguments go to gpu_check.py (e.g. --out FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
install=1
passed=()
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1; passed+=("--cpu") ;;
    --no-install) install=0 ;;
    *) passed+=("$arg") ;;
  esac
done

if [[ $cpu == 0 ]] && ! (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q "^GPU"); then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); run 'bash scripts/gpu_check.sh --cpu' for a dry run on the CPU" >&2
  exit 2
fi

python=${PYTHON:-python3}
if [[ $install == 1 ]]; then
  "$python" -m venv .venv-gpu-check
  python=.venv-gpu-check/bin/python
  "$python" -m pip install -q --upgrade pip
  "$python" -m pip install -q -e ".[test]"
  if [[ $cpu == 0 ]]; then
    jax_version=$("$python" -c "import jax; print(jax.__version__)")
    "$python" -m pip install -q "jax[cuda12]==${jax_version}"
  fi
fi
exec "$python" scripts/gpu_check.py "${passed[@]}"
