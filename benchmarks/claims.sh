#!/usr/bin/env bash
# The papers' claims on one GPU in one command (benchmarks/README.md, claims; benchmarks/claims.py says what runs):
#   bash benchmarks/claims.sh --prepare   here, with a registry and ../shared/datasets: gpu.sh --prepare's wheels and
#                                         packed CIFAR-10 JPEG copy, plus the official CIFAR-10 pixels packed losslessly
#                                         when ../shared/datasets/cifar10 holds them and the carry stays <= 64 MiB, and
#                                         Imagenette at 64 px (.gpu-data/imagenette64.npz)
#   bash benchmarks/claims.sh OUT [...]   on the GPU machine (no registry, no Hydra): installs the carried wheels its
#                                         Python lacks (never torch), then benchmarks/claims.py OUT [...]; <= 9 minutes
#   bash benchmarks/claims.sh OUT --smoke every code path on a CPU in about a minute (tests/test_claims.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CARRY_MIB=64  # what travels to the GPU machine beside the tree

if [[ "${1:-}" == "--prepare" ]]; then
  datasets=${CNNLAB_DATASETS:-../shared/datasets}
  bash benchmarks/gpu.sh --prepare
  rm -f .gpu-data/imagenette.npz  # gpu.sh's 100-per-class loader sample: the claims train on imagenette64.npz
  PYTHONPATH=src $PY benchmarks/claims.py --pack-resized "$datasets/imagenette2-224" .gpu-data/imagenette64.npz 64
  if [[ -d "$datasets/cifar10/cifar-10-batches-py" ]]; then
    PYTHONPATH=src $PY benchmarks/claims.py --pack-official "$datasets/cifar10" .gpu-data/cifar10-official.npz
    if (( $(du -sm .gpu-wheels .gpu-data | awk '{s += $1} END {print s}') > CARRY_MIB )); then
      rm .gpu-data/cifar10-official.npz
      echo "!!! the official CIFAR-10, packed losslessly, does not fit the ${CARRY_MIB} MiB carry: the claims will run" \
           "on the JPEG copy, not the official pixels !!!"
    else
      rm -f .gpu-data/cifar10.npz  # the official pixels replace the JPEG copy
    fi
  else
    echo "!!! no official CIFAR-10 at $datasets/cifar10: the claims will run on the JPEG copy, not the official pixels !!!"
  fi
  du -sh .gpu-wheels .gpu-data
  exit 0
fi

OUT=${1:?usage: bash benchmarks/claims.sh OUT [claims.py options] | --prepare}
shift
mkdir -p "$OUT"
source benchmarks/carried.sh  # the carried wheels where Hydra is missing; src/ first on the path
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
$PY benchmarks/claims.py "$OUT" "$@" 2>&1 | tee "$OUT/claims.log"
