#!/usr/bin/env bash
# A multi-host Cloud TPU VM pod slice: the same command on every worker, one process per host
# (jax.distributed detects the slice with --distributed). Run from your workstation:
#
#   export TPU=my-v4-32 ZONE=us-central2-b BUCKET=gs://my-bucket
#   bash launch/tpu_pod.sh setup                    # once: copy this checkout, pip install
#   bash launch/tpu_pod.sh train experiments/configs/bijective.py $BUCKET/runs/bijective
#
# which runs on all workers (gcloud compute tpus tpu-vm ssh $TPU --worker=all --command=...):
#   cd ~/irevnet_jax && TFDS_DATA_DIR=$BUCKET/tensorflow_datasets \
#     python3 -m experiments.main --config=CONFIG --workdir=WORKDIR --distributed
#
# WORKDIR must be shared by all hosts (a gs:// path): checkpoints, config.json,
# metrics.jsonl and TensorBoard events are written there (process 0 writes all but the
# checkpoints' arrays, which Orbax writes collectively), and every host resumes from its
# latest checkpoint (the run stops if the hosts see different ones). The run owns WORKDIR
# through a lease record (WORKDIR/.lease.json, renewed every 15 s): a second `train` on it
# is refused while the first is alive; after a kill without release (SIGKILL, a lost VM),
# rerun after 60 s or delete the record (docs/data_and_launch.md, "Run directories on gs://").
# ImageNet must be prepared in $BUCKET/tensorflow_datasets first (launch/prepare_data.py).
# The input reads each record by key (ArrayRecord); from gs:// every read waits on the
# network, so check `python -m benchmarks.input_speed` figures against the host's cores and
# prefer a local or persistent disk (docs/data_and_launch.md, "Throughput").
# Extra arguments after WORKDIR go to experiments.main, e.g. --config.batch_size=1024.
# `bash launch/tpu_pod.sh stop` kills the training processes on all workers.
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=${REMOTE_DIR:-irevnet_jax}

on_all_workers() {
  # shellcheck disable=SC2086
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

case "${1:-}" in
  setup)
    cd "$(dirname "$0")/.."
    archive=$(mktemp -d)/irevnet_jax.tar.gz
    git archive --format=tar.gz -o "$archive" HEAD
    # shellcheck disable=SC2086
    gcloud compute tpus tpu-vm scp "$archive" "$TPU":irevnet_jax.tar.gz --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/irevnet_jax.tar.gz -C ~/$REMOTE_DIR \
      && cd ~/$REMOTE_DIR && python3 -m pip install -U 'jax[tpu]' && python3 -m pip install -e '.[tfds]'"
    ;;
  train)
    if [[ $# -lt 3 ]]; then
      echo "usage: bash launch/tpu_pod.sh train CONFIG WORKDIR [experiments.main flags]" >&2
      exit 2
    fi
    config=$2
    workdir=$3
    shift 3
    data_dir=${TFDS_DATA_DIR:-${BUCKET:?set BUCKET (gs://...) or TFDS_DATA_DIR}/tensorflow_datasets}
    extra=$(printf ' %q' "$@")
    on_all_workers "cd ~/$REMOTE_DIR && TFDS_DATA_DIR=$data_dir TF_CPP_MIN_LOG_LEVEL=2 \
      python3 -m experiments.main --config=$config --workdir=$workdir --distributed$extra"
    ;;
  stop)
    on_all_workers "pkill -f 'experiments.main' || true"
    ;;
  *)
    sed -n '2,25p' "$0" >&2
    exit 2
    ;;
esac
