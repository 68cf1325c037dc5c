#!/usr/bin/env bash
# The GPU benchmark in one command (benchmarks/README.md, GPU section):
#   bash benchmarks/gpu.sh --prepare   here, with a registry and ../shared/datasets: wheels into .gpu-wheels/ and the
#                                      packed CIFAR-10 and Imagenette subset into .gpu-data/ (both git-ignored)
#   bash benchmarks/gpu.sh OUT [...]   on the GPU machine (no registry): installs the carried wheels that its Python
#                                      lacks (never torch), then benchmarks/gpu.py OUT [...]; at most 8 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(hydra-core omegaconf antlr4-python3-runtime)  # what cnnlab needs beyond torch, lightning, torchvision, ...

if [[ "${1:-}" == "--prepare" ]]; then
  datasets=${CNNLAB_DATASETS:-../shared/datasets}
  mkdir -p .gpu-wheels .gpu-data
  # the versions installed here, as pure-Python wheels (antlr4-python3-runtime 4.9.3 exists only as an sdist: built)
  pins=$(for w in "${WHEELS[@]}"; do $PY -c "import importlib.metadata as m; print('$w==' + m.version('$w'))"; done)
  # shellcheck disable=SC2086
  $PY -m pip wheel -q --no-deps -w .gpu-wheels $pins
  PYTHONPATH=src $PY -m cnnlab.data.pack cifar10 "$datasets/cifar10-jpg" .gpu-data/cifar10.npz
  PYTHONPATH=src $PY -m cnnlab.data.pack imagenette "$datasets/imagenette2-224" .gpu-data/imagenette.npz --per-class 100
  du -sh .gpu-wheels .gpu-data
  exit 0
fi

OUT=${1:?usage: bash benchmarks/gpu.sh OUT [gpu.py options] | --prepare}
shift
mkdir -p "$OUT"
source benchmarks/carried.sh  # the carried wheels where Hydra is missing; src/ first on the path
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
$PY benchmarks/gpu.py "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"
