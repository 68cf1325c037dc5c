# Sourced by gpu.sh and claims.sh on the lent machine: installs the wheels carried in .gpu-wheels/ (made by
# `--prepare`) where Hydra is missing, and puts this checkout's src/ and benchmarks/ first on the Python path.
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
  ls .gpu-wheels/*.whl >/dev/null 2>&1 || { echo "no hydra-core here and no .gpu-wheels/: run --prepare first"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/cnnlab-site .gpu-wheels/*.whl
  export PYTHONPATH=/tmp/cnnlab-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
