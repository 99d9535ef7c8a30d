"""shardclaim: split a dataset into shards that preemptible workers claim exactly once.

Coordination happens only through compare-and-swap on object storage (a local or NFS directory,
Google Cloud Storage); there is no coordinator process and no database.
"""

from typing import TYPE_CHECKING, Any

from shardclaim.errors import (
    BuildInProgressError,
    ChunkCorruptError,
    DatasetExistsError,
    GenerationMismatchError,
    InputError,
    InvalidKeyError,
    InvalidURLError,
    LeaseLostError,
    MetadataError,
    ObjectNotFoundError,
    Preempted,
    ShardclaimError,
    StoreError,
    TransientStoreError,
    UnknownShardError,
)

if TYPE_CHECKING:
    from shardclaim.dataset.build import create_sharded_dataset
    from shardclaim.dataset.read import iter_shard_records
    from shardclaim.dataset.tasks import create_file_tasks, create_grid_tasks
    from shardclaim.fanin import finalize_once
    from shardclaim.lease.views import ClaimedShard
    from shardclaim.manager import ShardManager
    from shardclaim.status import ShardStatusEntry
    from shardclaim.store import open_store
    from shardclaim.worker import Claim

# Imported on first use, so that ``shardclaim create`` does not load the manager and a worker does not
# load the builder: the command line starts in a fraction of the time.
_LAZY = {
    "create_sharded_dataset": "shardclaim.dataset.build",
    "create_file_tasks": "shardclaim.dataset.tasks",
    "create_grid_tasks": "shardclaim.dataset.tasks",
    "ClaimedShard": "shardclaim.lease.views",
    "ShardStatusEntry": "shardclaim.status",
    "ShardManager": "shardclaim.manager",
    "finalize_once": "shardclaim.fanin",
    "Claim": "shardclaim.worker",
    "iter_shard_records": "shardclaim.dataset.read",
    "open_store": "shardclaim.store",
}


if not TYPE_CHECKING:  # type checkers see the imports above, so a misspelled name is an error

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'shardclaim' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


__all__ = [
    "BuildInProgressError",
    "ChunkCorruptError",
    "Claim",
    "ClaimedShard",
    "DatasetExistsError",
    "GenerationMismatchError",
    "InputError",
    "InvalidKeyError",
    "InvalidURLError",
    "LeaseLostError",
    "MetadataError",
    "ObjectNotFoundError",
    "Preempted",
    "ShardManager",
    "ShardStatusEntry",
    "ShardclaimError",
    "StoreError",
    "TransientStoreError",
    "UnknownShardError",
    "create_file_tasks",
    "create_grid_tasks",
    "create_sharded_dataset",
    "finalize_once",
    "iter_shard_records",
    "open_store",
]
__version__ = "0.1.0"


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
