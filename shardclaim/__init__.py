"""shardclaim: split a dataset into shards that preemptible workers claim exactly once.

Coordination happens only through compare-and-swap on object storage (a local or NFS directory,
Google Cloud Storage); there is no coordinator process and no database.
"""

from shardclaim.dataset import DatasetExistsError, InputError, create_sharded_dataset
from shardclaim.errors import (
    GenerationMismatchError,
    InvalidKeyError,
    InvalidURLError,
    LeaseLostError,
    ObjectNotFoundError,
    ShardclaimError,
    StoreError,
    TransientStoreError,
)
from shardclaim.layout import MetadataError
from shardclaim.manager import ShardManager
from shardclaim.reader import ChunkCorruptError, iter_shard_records
from shardclaim.store import open_store

__all__ = [
    "ChunkCorruptError",
    "DatasetExistsError",
    "GenerationMismatchError",
    "InputError",
    "InvalidKeyError",
    "InvalidURLError",
    "LeaseLostError",
    "MetadataError",
    "ObjectNotFoundError",
    "ShardManager",
    "ShardclaimError",
    "StoreError",
    "TransientStoreError",
    "create_sharded_dataset",
    "iter_shard_records",
    "open_store",
]
__version__ = "0.1.0"
