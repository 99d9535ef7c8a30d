#!/usr/bin/env bash
# TPU pod (e.g. v5e-64, 4 hosts), as in the seed: the same command on every host; each host claims shards
# until all are done. Credentials come from the TPU VM's metadata server: nothing is mounted.
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}" "${PROJECT_ID:?}" "${BUCKET:?}"
for WORKER in 0 1 2 3; do
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker="${WORKER}" --command="
    sudo docker run -d --name extraction --net=host --privileged \
      -e TPU_WORKER_ID=${WORKER} \
      gcr.io/${PROJECT_ID}/shardclaim-worker:latest \
      run gs://${BUCKET}/sharded_dataset -N 1 -- \
      python /workspace/extract_activations.py --out gs://${BUCKET}/activations
  " &
done
wait
# Watch progress from anywhere:
shardclaim status "gs://${BUCKET}/sharded_dataset"
