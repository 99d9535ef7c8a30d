"""Writing chunk files: the builder's main thread decides, two helper threads do the work.

The main thread splits input blocks into lines and hands each shard's share of a block over as one job.
A writer thread appends the job to the shard's open chunk file; a checksum thread keeps each chunk's
running CRC32C. Both release the GIL for their heavy part (``write``, ``crc32c``), so parsing, writing
and checksumming overlap. The job queues are bounded, so memory stays flat: at most ``_QUEUE`` jobs of
at most one input block each are in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from typing import Any

import crc32c
from fsspec.implementations.local import LocalFileSystem

from shardclaim.layout import chunk_name, shard_dir

__all__ = ["ChunkWriter"]

log = logging.getLogger("shardclaim.dataset")
_MiB = 1 << 20
_QUEUE = 6


_Job = tuple[int, str, bytes, dict[str, Any] | None]  # shard, chunk path, bytes, metadata if closing


class _Shard:
    """The main thread's view of one shard: its chunks so far and the lines waiting to be handed over."""

    __slots__ = ("bytes", "chunks", "directory", "pending", "records")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.chunks: list[dict[str, Any]] = []
        self.pending: list[memoryview] = []
        self.bytes = 0  # in the current chunk
        self.records = 0  # in the current chunk


class ChunkWriter:
    """All chunk files of one build. ``add`` and ``end_block`` from the main thread only."""

    def __init__(self, fs: Any, base: str, num_shards: int, limit: int) -> None:
        self._fs = fs
        self._base = base
        self._local = isinstance(fs, LocalFileSystem)
        self._limit = limit
        self._num_shards = num_shards
        self.shards = [_Shard(shard_dir(i, num_shards)) for i in range(num_shards)]
        self._jobs: queue.Queue[_Job | None] = queue.Queue(_QUEUE)
        self._sums: queue.Queue[_Job | None] = queue.Queue(_QUEUE)
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name="shardclaim-writer", daemon=True),
            threading.Thread(target=self._checksum, name="shardclaim-crc32c", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- main thread ------------------------------------------------------------------------------

    def add(self, shard_id: int, line: memoryview) -> None:
        shard = self.shards[shard_id]
        n = len(line)
        if shard.records and shard.bytes + n > self._limit:
            self._hand_over(shard_id, close=True)
        if not shard.records and not shard.chunks:
            self._fs.makedirs(f"{self._base}/{shard.directory}", exist_ok=True)
        shard.pending.append(line)
        shard.bytes += n
        shard.records += 1
        if n > self._limit:
            log.warning(
                "a %d-byte record is larger than the %d-byte chunk limit: it gets chunk %s/%s alone",
                n, self._limit, shard.directory, chunk_name(len(shard.chunks)),
            )  # fmt: skip
            self._hand_over(shard_id, close=True)

    def end_block(self) -> None:
        """Hand every shard's lines over before the block they point into is released."""
        for shard_id, shard in enumerate(self.shards):
            if shard.pending:
                self._hand_over(shard_id, close=False)

    def finish(self) -> list[dict[str, Any]]:
        """Close every chunk, wait for the writer; return each shard's metadata."""
        for shard_id, shard in enumerate(self.shards):
            if shard.records:
                self._hand_over(shard_id, close=True)
        self._put(None)
        for thread in self._threads:
            thread.join()
        self._raise_if_failed()
        return [
            {
                "shard_id": i,
                "total_shards": self._num_shards,
                "status": "available",
                "total_tasks": sum(c["num_tasks"] for c in s.chunks),
                "num_chunks": len(s.chunks),
                "chunks": s.chunks,
                "assigned_to": None,
                "started_at": None,
                "completed_at": None,
            }
            for i, s in enumerate(self.shards)
        ]

    def abort(self) -> None:
        """Stop the writer and close its files (the caller removes them)."""
        self._error = self._error or RuntimeError("aborted")
        for jobs in (self._jobs, self._sums):
            while True:
                try:
                    jobs.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        jobs.get_nowait()
        for thread in self._threads:
            thread.join()

    def _hand_over(self, shard_id: int, *, close: bool) -> None:
        shard = self.shards[shard_id]
        path = f"{self._base}/{shard.directory}/{chunk_name(len(shard.chunks))}"
        data = b"".join(shard.pending)
        shard.pending.clear()
        meta = None
        if close:
            meta = {
                "chunk_id": len(shard.chunks),
                "file": chunk_name(len(shard.chunks)),
                "num_tasks": shard.records,
                "size_mb": round(shard.bytes / _MiB, 6),
                "size_bytes": shard.bytes,
                "crc32c": None,  # filled in by the writer thread
            }
            shard.chunks.append(meta)
            shard.bytes = shard.records = 0
        self._put((shard_id, path, data, meta))

    def _put(self, job: _Job | None) -> None:
        for jobs in (self._jobs, self._sums):
            while True:
                self._raise_if_failed()
                try:
                    jobs.put(job, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        open_files: dict[int, tuple[str, Any]] = {}  # shard -> (path, file or fd)
        written: list[str] = []
        try:
            while (job := self._jobs.get()) is not None:
                if self._error is not None:
                    continue
                shard_id, path, data, meta = job
                current = open_files.get(shard_id)
                if current is None or current[0] != path:
                    current = (path, self._open(path))
                handle = current[1]
                if data:
                    self._write(handle, data)
                if meta is None:
                    open_files[shard_id] = current
                else:
                    self._close(handle)
                    open_files.pop(shard_id, None)
                    written.append(path)
            if self._local and self._error is None:
                _make_durable(written)
        except BaseException as e:
            self._error = e
        finally:
            for _, handle in open_files.values():
                try:
                    self._close(handle)
                except OSError as e:
                    self._error = self._error or e

    def _checksum(self) -> None:
        """The same jobs as the writer, in the same order: running CRC32C per chunk, beside the I/O.
        crc32c releases the GIL on large buffers, so this runs truly in parallel."""
        sums: dict[str, int] = {}
        try:
            while (job := self._sums.get()) is not None:
                if self._error is not None:
                    continue
                _, path, data, meta = job
                crc = crc32c.crc32c(data, value=sums.get(path, 0))
                if meta is None:
                    sums[path] = crc
                else:
                    sums.pop(path, None)
                    meta["crc32c"] = f"{crc:08x}"
        except BaseException as e:
            self._error = e

    def _open(self, path: str) -> Any:
        if self._local:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # gcsfs buffers a whole block per open file: keep it small, one file per shard is open.
        return self._fs.open(path, "wb", block_size=8 << 20)

    def _write(self, handle: Any, data: bytes) -> None:
        if not self._local:
            handle.write(data)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(handle, view) :]

    def _close(self, handle: Any) -> None:
        if self._local:
            # Start writing the chunk back now, in the background, rather than leaving all of it
            # to the final flush; the final fdatasync then finds little left to do.
            os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(handle)
        else:
            handle.close()


def _make_durable(paths: list[str]) -> None:
    """fdatasync every chunk and fsync their directories: the master must never be published over
    chunks that a power cut could still take back."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    for directory in sorted({os.path.dirname(p) for p in paths}):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
