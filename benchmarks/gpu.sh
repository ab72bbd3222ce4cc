#!/usr/bin/env bash
# The GPU table of issue 10 on one card in under 8 minutes: one table, printed at the end.
#
# Rows, most important first (benchmarks/gpu_suite.py: gpu_plan; columns: speed.py's docstring):
#   training images/s and compile time of the runner's train step (what
#   `python -m experiments.main` compiles: experiments/configs/<model>.py, bfloat16 compute,
#   'default' precision, pmap on one device, uint8 batches normalised on the device) for
#   bijective_released at batch 256 and the largest batch that fits, autodiff then
#   reversible, each mode at 256 also with model.fused_bn_relu=False (note 'plain BN-ReLU':
#   autodiff of BN then ReLU, the fused BN-ReLU's before; a summary line gives the ratio
#   of images/s and peak memory); cifar10 at 1,024; resnet50 at 256; the inversion error of bijective_released
#   (bfloat16 forward + float32 'highest' invert, and float32 'highest' both ways); bijective,
#   revnet56 and injective at 256, autodiff and reversible; the inversion error of cifar10.
#   Every train row also estimates the largest batch of its mode from XLA's memory analysis.
# Rows that no longer fit in the time budget are listed as skipped. After the table: each
# bijective_released / cifar10 / resnet50 row against the authors' PyTorch anchors (H200),
# and the slowest compile of the 100-block models against the < 60 s goal.
#
# The authors' PyTorch in the same run (issue 29 item 1): with their repository at
# AUTHORS_REPO (default .authors/ where it holds models/iRevNet.py), their train step
# (benchmarks/authors_torch.py: bf16 autocast, channels_last, eager at a few batches and
# torch.compile, ~3.5 minutes at most, AUTHORS_S) runs first, in its own process; its rows join
# the table, and the summary gives best-ours / best-theirs for bijective_released (target
# 2.0x) and ours against their eager and compile rows for cifar10, with the card; the anchors
# are then not used. Our rows get what is left of 9 minutes. Nothing of their code is in this
# repository: fetch it once on a machine with network access, into the ignored .authors/:
#   git clone https://github.com/jhjacobsen/pytorch-i-revnet .authors
# (or `git --git-dir=<a mirror>/.git archive HEAD | tar -x -C .authors`), then
#   run(command='bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu_table.txt',
#       carry=['.whl', '.authors'], timeout_s=600)
# The GPU image's python3 has PyTorch. On CPU, `PYTHON=<python with torch and jax>
# AUTHORS_REPO=<their checkout> bash benchmarks/gpu.sh --smoke` checks the logic.
#
# Usage, from the repository root:
#   bash benchmarks/gpu.sh            # on the GPU machine (+ the authors' rows if .authors/)
#   AUTHORS_REPO=/path/to/pytorch-i-revnet bash benchmarks/gpu.sh
#   bash benchmarks/gpu.sh --smoke    # the same logic on CPU with shrunken models (~5-10 min;
#                                     # its numbers are no GPU result)
#   bash benchmarks/gpu.sh --options  # instead of the table: the step's options against the
#                                     # baseline of the same run (benchmarks/gpu_options.py:
#                                     # block scans, CUDA graphs), 9 minutes at most
# PYTHON=/path/to/python picks the interpreter (default python3). BUDGET_S overrides the
# time budget of the rows (seconds).
#
# It installs nothing over the network. The GPU image has jax, flax, optax, chex, absl-py
# and PyYAML but no ml_collections: carry its pure-Python wheel in .whl/ (ignored by git),
# fetched once on a machine with pip access, from the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# and run it with the device tool:
#   run(command='bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu_table.txt', carry=['.whl'],
#       timeout_s=600)
# No TensorFlow is needed: the data is synthetic.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
SMOKE=0
OPTIONS=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; fi
if [ "${1:-}" = "--options" ]; then OPTIONS=1; fi
PY="${PYTHON:-python3}"
AUTHORS="${AUTHORS_REPO:-}"
if [ -z "$AUTHORS" ] && [ -f .authors/models/iRevNet.py ]; then AUTHORS=.authors; fi
AUTHORS_JSON=/tmp/irevnet_authors_rows.json
rm -f "$AUTHORS_JSON"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/irevnet_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/irevnet_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$PY" -c 'import ml_collections' || { echo 'ml_collections is missing: see the top of benchmarks/gpu.sh'; exit 1; }

echo "== benchmarks/gpu.sh $*"
date -u '+date: %Y-%m-%d %H:%M:%S UTC'
git log -1 --format='commit: %h %s' 2>/dev/null || echo 'commit: unknown (no git here)'
if [ "$SMOKE" = 1 ]; then
  echo 'card: none, CPU smoke run (shrunken models; no number below is a GPU result)'
  export JAX_PLATFORMS=cpu
  # The CPU compiler at its lowest optimisation: compiles ~5x faster, and the smoke run
  # checks the logic, not the speed.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | sed 's/^/card: /' || echo 'card: nvidia-smi failed'
  # Let XLA take most of the card: the largest-batch search plans against this limit.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
fi
"$PY" - <<'EOF'
import platform
import jax, jaxlib, flax, optax
print(f'python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
      f'flax {flax.__version__}, optax {optax.__version__}')
print('devices:', jax.devices())
EOF

if [ "$OPTIONS" = 1 ]; then
  timeout -k 10 540 "$PY" -m benchmarks.gpu_options --timeout_s=120
  exit $?
fi

if [ -n "$AUTHORS" ]; then
  # Theirs first, in a process of its own that ends before ours starts (the card's memory
  # is free for each); the rows written so far survive the hard stop.
  AUTHORS_HARD_S="${AUTHORS_S:-210}"
  echo "== the authors' PyTorch from $AUTHORS (at most $AUTHORS_HARD_S s)"
  timeout -k 10 "$AUTHORS_HARD_S" "$PY" -m benchmarks.authors_torch --authors_repo="$AUTHORS" \
    --budget_s=$(( AUTHORS_HARD_S - 45 )) --min_seconds=2 --json_out="$AUTHORS_JSON" \
    $( [ "$SMOKE" = 1 ] && echo --smoke ) \
    || echo "the authors' run ended with status $?: its rows so far stand"
  echo "== ours"
fi

if [ "$SMOKE" = 1 ]; then
  "$PY" -m benchmarks.gpu_suite --smoke --memory_gib=0.25 --max_batch=32 \
    --min_seconds=0.2 --budget_s="${BUDGET_S:-540}" --authors_rows="$AUTHORS_JSON"
  exit $?
fi

# 8 minutes in all, 9 with the authors' rows: the rows stop starting at the budget, leaving a
# minute for the row in flight and the table; `timeout` is the hard stop (rows print as they
# finish).
ELAPSED=$(( $(date +%s) - START ))
HARD_S=$(( $( [ -n "$AUTHORS" ] && echo 540 || echo 470 ) - ELAPSED ))
BUDGET="${BUDGET_S:-$(( HARD_S - 80 ))}"
# Where the allocator reports no limit, plan with 90% of the card's memory instead.
MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
MEM_GIB=$(awk -v m="${MEM_MIB:-0}" 'BEGIN { printf "%.1f", (m > 0 ? m : 16384) * 0.9 / 1024 }')
timeout -k 10 "$HARD_S" "$PY" -m benchmarks.gpu_suite --budget_s="$BUDGET" \
  --max_batch="${MAX_BATCH:-4096}" --memory_gib="$MEM_GIB" --authors_rows="$AUTHORS_JSON"
RC=$?
if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
  echo "stopped at the time limit: the rows printed above as they finished stand; no table."
fi
exit "$RC"
