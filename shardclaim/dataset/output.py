"""Where a build writes, and how it replaces an old dataset without ever losing it.

A build never writes into the dataset it may replace. It holds the output's lock (:mod:`.lock`)
throughout, checks what the output holds (refusing anything that is not a shardclaim dataset, and any
symbolic link in it), writes the new dataset whole into a staging area, and only then switches:

* **Local directory, swapped** (the usual case): the staging area is a sibling directory,
  ``PARENT/.DIR.shardclaim-build-ID``, which receives the chunks, every ``metadata.json`` and the
  master; then ``renameat2(RENAME_EXCHANGE)`` swaps it with ``DIR`` in one atomic step, and the old tree,
  now under the sibling's name, is removed. Readers see the old dataset or the new one, never neither.
* **Local directory, moved** (no exchange there: NFS, a mount point, a parent the build may not write,
  not Linux): the staging area is ``DIR/.shardclaim-build-ID``. The switch renames the old master aside
  (the old dataset stops being whole), then the old shard directories, then moves the new shard
  directories in and writes the new master. Between the first and the last step, a few renames per
  shard, ``DIR`` has no master.
* **Object stores** (no rename): the chunks go under ``DIR/.shardclaim-build-ID/``, a name no other
  build uses; the switch renews the build's marker (still its output?), deletes the old master, then
  the old objects, copies the new chunks into place (server-side, batched), writes every
  ``metadata.json`` and the master last. ``DIR`` has no master from the first delete to the last write:
  about one request per old object, per chunk and per shard, batched or in parallel. A failure in that
  window (an outage longer than the retries) leaves ``DIR`` without a master; build again.

Until the switch, a failed or killed build leaves the old dataset as it was; its staging area is
removed on failure, or by the next build if it was killed. Inputs inside the old dataset (resharding a
dataset from its own chunks) stay readable for the whole build.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from shardclaim.dataset.localfs import filesystem
from shardclaim.dataset.lock import MARKER_KEY, MarkerLock, ProcessLock
from shardclaim.errors import DatasetExistsError, ShardclaimError
from shardclaim.layout import MASTER_KEY, SHARD_METADATA, check_master, check_shard, chunks_digest, shard_dir
from shardclaim.store import RetryingStore, open_store
from shardclaim.store.base import RESERVED_PREFIX

__all__ = [
    "ASIDE",
    "LISTED",
    "OLD_TOP",
    "OLD_TOP_DIRS",
    "SHARD_DIR",
    "SHARD_FILE",
    "STAGING",
    "Output",
    "foreign",
    "metadata_bytes",
    "prepare_output",
    "refuse_existing",
    "shard_entries",
    "write_metadata",
]

log = logging.getLogger("shardclaim.dataset")

STAGING = f"{RESERVED_PREFIX}-build-"  # DIR/.shardclaim-build-ID, or PARENT/.DIR.shardclaim-build-ID
ASIDE = f"{RESERVED_PREFIX}-old-"
SHARD_DIR = re.compile(r"shard_[0-9]{3,}")
SHARD_FILE = re.compile(rf"{SHARD_METADATA}|chunk_[0-9]{{4,}}\.jsonl")
OLD_TOP = ("_finalize.json",)  # the fan-in marker of runs over the old dataset
OLD_TOP_DIRS = ("_halt", "_logs")  # the fleet-wide halt and the attempts' logs of runs over it
LISTED = {"status": "available", "attempt": "0", "failures": "0"}  # a shard's state, read by listings


class Output:
    """The output of one build: where its chunks go (``fs``, ``chunk_base``) and how it is published."""

    fs: Any
    chunk_base: str

    def publish(self, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Remove what this build wrote; the old dataset stays as it was."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the lock (after publish or abort)."""
        raise NotImplementedError


def prepare_output(output_dir: str, *, overwrite: bool) -> Output:
    """Lock ``output_dir``, check it, and set up where the build writes."""
    store = open_store(output_dir)
    from shardclaim.store.local import LocalStore

    if isinstance(store.inner, LocalStore):
        from shardclaim.dataset.output_local import LocalOutput

        return LocalOutput(str(store.inner.root), output_dir, overwrite=overwrite)
    return _RemoteOutput(store, output_dir, overwrite=overwrite)


def refuse_existing(output_dir: str, has_master: bool, overwrite: bool) -> None:
    if has_master and not overwrite:
        raise DatasetExistsError(
            f"{output_dir} already holds a dataset; pass overwrite=True (--overwrite) to replace it",
            output_dir,
        )


def foreign(output_dir: str, example: str) -> DatasetExistsError:
    return DatasetExistsError(
        f"{output_dir} holds files that are not part of a shardclaim dataset "
        f"(e.g. {example!r}); choose an empty or new directory",
        output_dir,
        example,
    )


def shard_entries(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the master says of each shard (id, directory, size), from the shards' documents."""
    num_shards = len(shards)
    return [
        {
            "shard_id": d["shard_id"],
            "directory": shard_dir(d["shard_id"], num_shards),
            "status": "available",
            "total_tasks": d["total_tasks"],
            "num_chunks": d["num_chunks"],
            "size_bytes": sum(c["size_bytes"] for c in d["chunks"]),
            "chunks_crc32c": chunks_digest(d["chunks"]),
        }
        for d in shards
    ]


def metadata_bytes(key: str, doc: dict[str, Any]) -> bytes:
    check = check_master if key == MASTER_KEY else check_shard
    return orjson.dumps(check(key, doc), option=orjson.OPT_INDENT_2)


def write_metadata(store: RetryingStore, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
    """Every shard's ``metadata.json`` (in parallel: one request each on an object store), then the master."""

    def one(index: int) -> None:
        key = f"{master['shards'][index]['directory']}/{SHARD_METADATA}"
        store.write(
            key,
            metadata_bytes(key, shards[index]),
            if_generation_match=0,
            metadata=LISTED,
        )

    with ThreadPoolExecutor(max_workers=min(16, len(shards))) as pool:
        list(pool.map(one, range(len(shards))))
    store.write(MASTER_KEY, metadata_bytes(MASTER_KEY, master), if_generation_match=0)


# -- object stores -------------------------------------------------------------------------------


class _RemoteOutput(Output):
    def __init__(self, store: RetryingStore, output_dir: str, *, overwrite: bool) -> None:
        self._store = store
        self._shown = output_dir
        self.fs, self._base = filesystem(store.url)
        memory = store.url.startswith("memory://")
        self._lock: ProcessLock | MarkerLock = (
            ProcessLock(store.url, output_dir)
            if memory
            else MarkerLock(store, self.fs, self._base, output_dir)
        )
        try:
            keys = self._keys()
            self._old = [k for k in keys if k != MARKER_KEY and not k.startswith(STAGING)]
            for key in self._old:
                top, _, rest = key.partition("/")
                layout = (
                    key == MASTER_KEY
                    or key in OLD_TOP
                    or top in OLD_TOP_DIRS
                    or (SHARD_DIR.fullmatch(top) is not None and SHARD_FILE.fullmatch(rest) is not None)
                )
                if not layout:
                    raise foreign(output_dir, key)
            refuse_existing(output_dir, MASTER_KEY in self._old, overwrite)
            for stale in sorted({k.split("/", 1)[0] for k in keys if k.startswith(STAGING)}):
                log.info("removing %s/%s, left by a build that did not finish", output_dir, stale)
                _rm(self.fs, f"{self._base}/{stale}", recursive=True)
        except BaseException:
            self.close()
            raise
        # Always a staging area of this build's own: even a build that lost its marker while paused
        # can then never write over another build's chunks.
        self.chunk_base = f"{self._base}/{STAGING}{uuid.uuid4().hex[:12]}"

    def _keys(self) -> list[str]:
        """Every object under the output, as the store lists it and as the filesystem does (for
        memory:// these differ)."""
        keys = {o.key for o in self._store.list()}
        with contextlib.suppress(FileNotFoundError):
            self.fs.invalidate_cache()
            keys |= {p[len(self._base) + 1 :] for p in self.fs.find(self._base)}
        return sorted(keys)

    def publish(self, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
        self.fs.invalidate_cache()
        staged = sorted(c for c in self.fs.find(self.chunk_base) if c.endswith(".jsonl"))
        expected = sum(len(doc["chunks"]) for doc in shards if "kind" not in doc)  # files, ranges: none
        if len(staged) != expected:  # never publish over chunks that are not all there
            raise ShardclaimError(
                f"{len(staged)} chunk objects staged, {expected} expected; nothing published"
            )
        if isinstance(self._lock, MarkerLock):
            self._lock.renew()  # still this build's output, or nothing is touched
        # The switch: from the first delete to the master, the output holds no dataset.
        if MASTER_KEY in self._old:
            _rm(self.fs, f"{self._base}/{MASTER_KEY}")
        _rm(self.fs, [f"{self._base}/{k}" for k in self._old if k != MASTER_KEY])
        if staged:
            self.fs.copy(staged, [f"{self._base}/{c[len(self.chunk_base) + 1 :]}" for c in staged])
        write_metadata(self._store, shards, master)
        _rm(self.fs, self.chunk_base, recursive=True)

    def abort(self) -> None:
        _rm(self.fs, self.chunk_base, recursive=True)  # this build's own staging area only

    def close(self) -> None:
        self._lock.release()


def _rm(fs: Any, path: str | list[str], *, recursive: bool = False) -> None:
    if not path:
        return
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)
    fs.invalidate_cache()
