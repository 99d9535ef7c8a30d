"""shardclaim: split a dataset into shards that preemptible workers claim exactly once.

Coordination happens only through compare-and-swap on object storage (a local or NFS directory,
Google Cloud Storage); there is no coordinator process and no database.
"""

from shardclaim.errors import (
    GenerationMismatchError,
    InvalidKeyError,
    InvalidURLError,
    ObjectNotFoundError,
    ShardclaimError,
    StoreError,
    TransientStoreError,
)
from shardclaim.store import open_store

__all__ = [
    "GenerationMismatchError",
    "InvalidKeyError",
    "InvalidURLError",
    "ObjectNotFoundError",
    "ShardclaimError",
    "StoreError",
    "TransientStoreError",
    "open_store",
]
__version__ = "0.1.0"
