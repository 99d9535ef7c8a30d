"""The builder and the reader: a sharded dataset built from JSONL, and its shards read back verified.

The modules, in the order data goes through them:

* :mod:`.build`: ``create_sharded_dataset``, its options and the loop that deals records to shards;
* :mod:`.inputs`: the input files (paths, URLs, globs), read as blocks of whole lines, credentials kept
  out of names; :mod:`.decompress` reads compressed inputs to their proper end;
* :mod:`.records`: the one rule for what a record is; :mod:`.validate` applies it, inline or to one
  validator's share, and :mod:`.background` runs the validators beside the builder;
* :mod:`.chunks`: the chunk files, written by threads from one arena of buffers;
* :mod:`.output`: where a build writes and how it replaces an old dataset (object stores),
  :mod:`.output_local` (a local directory), :mod:`.lock` (one build at a time per output);
* :mod:`.read`: ``iter_shard_records``, each chunk's size and CRC32C checked;
* :mod:`.localfs`: local paths without importing fsspec.

The builder is imported on first use of ``create_sharded_dataset``: a worker reads its shards without
loading it.
"""

from typing import TYPE_CHECKING, Any

from shardclaim.dataset.read import iter_shard_records
from shardclaim.errors import BuildInProgressError, ChunkCorruptError, DatasetExistsError, InputError

if TYPE_CHECKING:
    from shardclaim.dataset.build import create_sharded_dataset
else:

    def __getattr__(name: str) -> Any:
        if name != "create_sharded_dataset":
            raise AttributeError(f"module 'shardclaim.dataset' has no attribute {name!r}")
        from shardclaim.dataset.build import create_sharded_dataset

        globals()[name] = create_sharded_dataset
        return create_sharded_dataset


__all__ = [
    "BuildInProgressError",
    "ChunkCorruptError",
    "DatasetExistsError",
    "InputError",
    "create_sharded_dataset",
    "iter_shard_records",
]
