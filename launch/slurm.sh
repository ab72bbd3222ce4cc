#!/usr/bin/env bash
# Multi-node GPU training under SLURM. Submit from the repository root:
#
#   sbatch --nodes=2 launch/slurm.sh experiments/configs/bijective.py /shared/runs/bijective
#   sbatch --nodes=2 --ntasks-per-node=1 --export=ALL,PER_NODE=1 \
#     launch/slurm.sh experiments/configs/bijective.py /shared/runs/bijective
#
# Default: one process per GPU (8 tasks per node, every task sees the node's GPUs and JAX's
# SLURM detection, --distributed, gives task i GPU $SLURM_LOCALID). Do not bind GPUs per task
# (--gpus-per-task / --gpu-bind): JAX selects the device itself. With PER_NODE=1, one process
# per node drives all of its GPUs; the coordinator is passed explicitly from SLURM variables.
# Change --gpus-per-node / --ntasks-per-node below (or on the sbatch line) for other nodes.
#
# WORKDIR must be on a file system shared by all nodes (checkpoints are written there); so
# must TFDS_DATA_DIR (default ~/tensorflow_datasets; prepare ImageNet first with
# launch/prepare_data.py). Extra arguments after WORKDIR go to experiments.main.
# On SIGTERM (preemption, or 5 min before the time limit) training checkpoints and exits
# with 143; the job then requeues itself and resumes from WORKDIR.
# CPUs: the ImageNet input makes ~300 training images/s per core (`python -m
# benchmarks.input_speed`, docs/data_and_launch.md): a GPU training at R images/s needs about
# R / 300 + 1 cores, 12 at 3,300 images/s (--cpus-per-task below is per GPU; with PER_NODE=1
# ask for 12 x GPUs per node). With several processes per node, add
# --config.dataset.cpu_threads=12 (the CPUs per task; ImageNet configs) after WORKDIR so
# that each process's tf.data keeps to its own share of the cores.
#SBATCH --job-name=irevnet
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,24p' "$0" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export CONFIG WORKDIR

if [[ "${PER_NODE:-0}" == 1 ]]; then
  head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export COORDINATOR="$head_node:${JAX_COORDINATOR_PORT:-$((SLURM_JOB_ID % 4096 + 61440))}"
  # Without SLURM_LOCALID, JAX keeps all local GPUs visible to the node's single process.
  # shellcheck disable=SC2016
  srun --kill-on-bad-exit=1 bash -c 'exec env -u SLURM_LOCALID python -m experiments.main \
    --config="$CONFIG" --workdir="$WORKDIR" --coordinator_address="$COORDINATOR" \
    --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID" "$@"' bash "$@" || rc=$?
else
  srun --kill-on-bad-exit=1 python -m experiments.main --config="$CONFIG" \
    --workdir="$WORKDIR" --distributed "$@" || rc=$?
fi

rc=${rc:-0}
if [[ $rc -eq 143 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "Training was interrupted (exit 143); requeueing job $SLURM_JOB_ID to resume." >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
