#!/usr/bin/env bash
# All benchmarks on one GPU in under 8 minutes, printed as one table:
# training speed (largest batch that fits, compile time, images/s) for cifar10, bijective,
# bijective_released, injective and the baselines in bfloat16 and float32, per backprop mode;
# inversion error in float32 'default'/'highest' and bfloat16; memory vs depth.
# The most important rows run first; rows that no longer fit in the time budget are
# listed as skipped (raise BUDGET_S to run more of them).
#
# Usage, from the repository root:
#   bash benchmarks/gpu.sh            # on the GPU machine
#   bash benchmarks/gpu.sh --smoke    # the same logic on CPU with shrunken models (~10 min)
#
# It installs nothing over the network. The GPU image has jax, flax, optax, absl-py and
# PyYAML but no ml_collections: carry its pure-Python wheel in .whl/ (ignored by git),
# fetched once on a machine with pip access, from the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# and run it with the device tool: run(command='bash benchmarks/gpu.sh', carry=['.whl'],
# timeout_s=600). No TensorFlow is needed: the data is synthetic.
set -uo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/irevnet_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/irevnet_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 -c 'import ml_collections' || { echo 'ml_collections is missing: see the top of benchmarks/gpu.sh'; exit 1; }

date -u '+%Y-%m-%d %H:%M UTC'
git log -1 --format='commit %h %s' 2>/dev/null || true

if [ "${1:-}" = "--smoke" ]; then
  JAX_PLATFORMS=cpu python3 -m benchmarks.speed --suite=gpu --smoke --memory_gib=0.25 \
    --max_batch=32 --min_seconds=0.2 --budget_s="${BUDGET_S:-1200}"
  exit $?
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
# Let XLA take most of the card: the largest-batch search plans against this limit.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
# The suite stops starting rows after BUDGET_S; the timeout is the hard stop at 8 minutes.
timeout 465 python3 -m benchmarks.speed --suite=gpu --budget_s="${BUDGET_S:-390}" \
  --max_batch="${MAX_BATCH:-4096}"
