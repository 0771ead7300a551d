#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every worker (gcloud --worker=all);
# jax.distributed finds the other workers by itself (--coordinator_address=auto).
#
#   TPU=my-v5e-64 ZONE=us-west4-a REPO=~/dnd_jax launch/tpu_pod.sh \
#       --config configs/qwen25_0p5b_commonsense.py:holdout=arc_c --workdir gs://my-bucket/gen_arc_c
#
# --workdir must be visible to every worker (a GCS bucket or a shared filesystem): Orbax writes one
# checkpoint from all of them. The repo and its .venv must already exist on every worker (e.g.
# `gcloud ... --worker=all --command "git clone ... && cd dnd_jax && make install"`).
# Check memory first: add --dry_run (prints per-device memory for config.mesh; trains nothing).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO=${REPO:-~/dnd_jax}
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO && .venv/bin/python -m dnd_jax.train $args --coordinator_address=auto"
