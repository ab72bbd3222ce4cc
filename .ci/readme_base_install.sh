#!/usr/bin/env bash
# The README's commands after the README's base install (`pip install -e .`, no extras), in a
# fresh virtual environment and an empty directory: each must work, and a command that needs
# an extra must say which in one line.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e "$repo"
cd "$work"
export JAX_COMPILATION_CACHE_DIR="$work/jax_cache"
run() { echo "+ $*"; "$@" > "$work/out.txt" 2>&1 || { tail -30 "$work/out.txt"; exit 1; }; tail -2 "$work/out.txt"; }

run python -m experiments.main --workdir=runs/digits --config.num_train_steps=40
run python -m experiments.evaluate --workdir=runs/digits
run python -m experiments.analyze --workdir=runs/digits --max_train_examples=256 --max_eval_examples=128
run python -m experiments.export_jax --workdir=runs/digits --output=exported/digits
run python -m experiments.export_weights --workdir=runs/digits --output=exported/digits.npz
run python -m experiments.import_weights --weights=exported/digits.npz \
    --config="$repo/experiments/configs/digits.py" --workdir=runs/imported
run python -m experiments.evaluate --workdir=runs/imported
test -s exported/digits/invert.jax_export && test -s runs/digits/analysis/report.md

echo "+ python -m experiments.main --config=experiments/configs/cifar10.py (needs the tfds extra)"
if python -m experiments.main --config="$repo/experiments/configs/cifar10.py" \
    --workdir=runs/cifar10 > "$work/out.txt" 2>&1; then
  echo "cifar10 trained without TensorFlow installed?"; exit 1
fi
lines=$(grep -c . "$work/out.txt")
grep -q "pip install -e '.\[tfds\]'" "$work/out.txt" && [ "$lines" -eq 1 ] || {
  echo "expected one line naming the tfds extra, got:"; cat "$work/out.txt"; exit 1; }
cat "$work/out.txt"
echo "README base-install commands: every one worked"
