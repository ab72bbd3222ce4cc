#!/usr/bin/env bash
# One host, all of its GPUs, one process (the train step is pmapped over the local devices):
#
#   bash launch/local_gpu.sh experiments/configs/bijective.py runs/bijective
#   CUDA_VISIBLE_DEVICES=0,1,2,3 bash launch/local_gpu.sh experiments/configs/cifar10.py runs/cifar10 --config.batch_size=256
#
# Arguments: CONFIG WORKDIR [more experiments.main flags, e.g. --config.FIELD=VALUE].
# Environment: TFDS_DATA_DIR  where TFDS datasets live (default ~/tensorflow_datasets);
#              ImageNet must be prepared there first: see launch/prepare_data.py.
# Rerunning the same command resumes from the latest checkpoint in WORKDIR.
# CPU: the ImageNet input pipeline makes ~300 training images/s per core (measured with
# `python -m benchmarks.input_speed`, docs/data_and_launch.md), so each GPU needs about
# R / 300 + 1 free cores to train at R images/s: 12 per GPU at 3,300 images/s.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}   # TensorFlow only reads data, on the CPU
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
fi
echo "$(nproc) CPU cores: the ImageNet input can feed ~$(( $(nproc) * 300 )) training images/s" \
  "in all (~300 per core; docs/data_and_launch.md)." >&2
exec python -m experiments.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
