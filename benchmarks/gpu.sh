#!/usr/bin/env bash
# The GPU benchmarks in one short run (≤ ~6 min on one H200): JAX/Equinox vs PyTorch baselines
# (bench_gpu.py: ResNet-18 SGD steps/s, Hutchinson tr H vs a PyHessian-style loop, vmapped vs
# sequential runs, peak memory), then sgdreg's own engine and sweep (bench_gpu_engine.py).
#   bash benchmarks/gpu.sh            # on the GPU machine: JSON + logs into ${OUT:-/tmp}
#   bash benchmarks/gpu.sh --small    # CPU-sized smoke run
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-/tmp}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || true
fi
python3 -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
SMALL=""
for a in "$@"; do [[ "$a" == "--small" ]] && SMALL="--small"; done
PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --out "$OUT_DIR/gpu_bench.json" "$@" \
    2>&1 | tee "$OUT_DIR/gpu_bench.log"
PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu_engine.py $SMALL --parts 12 \
    --out "$OUT_DIR/gpu_engine.json" 2>&1 | tee "$OUT_DIR/gpu_engine.log"
