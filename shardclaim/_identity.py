"""Who a worker is, and which shard its launcher would have given it."""

from __future__ import annotations

import os
import socket

__all__ = ["LAUNCHER_INDEX_VARS", "default_worker_id", "launcher_index"]

#: Launcher variables that name this worker's static index; it only picks the *first* shard to try.
LAUNCHER_INDEX_VARS = (
    "VELDA_SHARD_ID",
    "SYLPHX_SHARD_INDEX",
    "JOB_COMPLETION_INDEX",
    "CLOUD_RUN_TASK_INDEX",
    "BATCH_TASK_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "RANK",
)


def default_worker_id() -> str:
    """Unique per process and readable: ``host-pid``, or the seed's ``machine{X}_host{Y}`` form
    (plus the pid) when a TPU worker index is known."""
    host = socket.gethostname().split(".")[0] or "host"
    tpu = os.environ.get("TPU_WORKER_ID") or os.environ.get("CLOUD_TPU_TASK_ID")
    if tpu is not None:
        return f"{host}_host{tpu}-{os.getpid()}"
    return f"{host}-{os.getpid()}"


def launcher_index(num_shards: int) -> int | None:
    """The launcher's static index (first of :data:`LAUNCHER_INDEX_VARS` set), modulo the shard count."""
    for var in LAUNCHER_INDEX_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value) % num_shards
    return None
