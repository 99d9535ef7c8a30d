#!/usr/bin/env bash
# Slurm array: 16 tasks, each a shardclaim worker on one shared dataset (GCS, or a directory on a shared
# filesystem with working locks, e.g. NFSv4.2). SLURM_ARRAY_TASK_ID picks each task's first shard.
#SBATCH --job-name=shardclaim
#SBATCH --array=0-15
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@60          # a minute's warning before the time limit: leases are released
set -euo pipefail
exec shardclaim run gs://BUCKET/sharded_dataset -N 1 -- python process.py --out gs://BUCKET/results
