"""The reader's old home, kept for ``from shardclaim.reader import iter_shard_records``: the reader is
:mod:`shardclaim.dataset.read`, its error in :mod:`shardclaim.errors`."""

from shardclaim.dataset.read import iter_shard_records
from shardclaim.errors import ChunkCorruptError

__all__ = ["ChunkCorruptError", "iter_shard_records"]
