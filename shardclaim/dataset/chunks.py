"""Writing chunk files: the builder's main thread copies records out, writer threads do the I/O.

Each shard owns one staging buffer at a time, a page-aligned slice of one preallocated arena. The main
thread copies every record into its shard's buffer (a ``memcpy``; the input block it came from can be
read into again at once); when the buffer is full it folds it into the chunk's running CRC32C and hands
it over as one job. Any of four writer threads writes it at its offset in the chunk file and returns it
to the free list; the one that completes a closed chunk's last write closes the file. Four writes in
flight keep the device busy, where one at a time left it idle between a completion and the next
request (2 GiB in 2.1 s against 1.7 s here). A remote file (gcsfs) is one stream, so there a shard's
jobs all go to the same writer, in order. ``write`` and ``crc32c`` release the GIL, so parsing and
writing overlap, and memory is the arena, whatever the input size: the main thread waits for a free
buffer when all are in flight.

On a local disk filesystem (ext4, XFS, btrfs...) the chunk files are opened with ``O_DIRECT``:
buffers go from the arena to the device without passing through the page cache. Filling the page
cache costs more CPU than anything else the builder does (a first-touch fault per page on a VM, then
the writeback), and the machine has little CPU to spare while it parses. Direct I/O needs every write
aligned: buffers are whole 4 KiB pages and only full ones are handed over mid-chunk; a chunk's last
write is padded to a page and the file truncated to its true size. Other filesystems (NFS, where every
direct write would be a synchronous round trip; tmpfs; FUSE), and any that refuses ``O_DIRECT`` after
all, get ordinary buffered writes of the same buffers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import resource
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shardclaim.crc import crc32c
from shardclaim.dataset.localfs import DIRECT_IO_FILESYSTEMS, filesystem_type, is_local, staging_arena
from shardclaim.layout import chunk_name, shard_dir

__all__ = ["ChunkWriter"]

log = logging.getLogger("shardclaim.dataset")
_MiB = 1 << 20
_PAGE = 4096  # O_DIRECT alignment: the logical block size of any common device divides it
_STAGING = 16 * _MiB  # all shards' current buffers together
_MAX_BUFFER = 2 * _MiB  # one write
_IN_FLIGHT = 16 * _MiB  # buffers handed over and not yet written
_WRITERS = 4  # writes in flight at once: one at a time leaves the device idle between them
_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux, FreeBSD; 0 elsewhere: buffered writes
_RESERVED_DESCRIPTORS = 128  # at least, for whatever else the process has open or opens
_REMOTE_BUFFERS = 256 * _MiB  # the upload buffers of all open remote chunk files together
_UPLOAD_UNIT = 256 << 10  # GCS resumable uploads go in multiples of 256 KiB

# (chunk file, buffer, bytes of it to write, file offset of its first byte, the chunk's last write?)
_Job = tuple["_File", memoryview, int, int, bool]


class _Shard:
    """The main thread's view of one shard: its chunks so far and its current staging buffer."""

    __slots__ = ("buffer", "bytes", "chunks", "crc", "directory", "file", "fill", "offset", "records")

    def __init__(self, directory: str, size: int) -> None:
        self.directory = directory
        self.chunks: list[dict[str, Any]] = []
        self.buffer: memoryview | None = None
        self.fill = size  # bytes used in the buffer; "full" while there is none, so add() takes one
        self.offset = 0  # where the buffer's first byte goes in the current chunk file
        self.bytes = 0  # in the current chunk
        self.records = 0  # in the current chunk
        self.crc = 0  # CRC32C of the current chunk's bytes handed over so far
        self.file: _File | None = None  # the current chunk's file, once it has been opened


class ChunkWriter:
    """All chunk files of one build. ``add`` and ``finish`` from the main thread only."""

    def __init__(self, fs: Any, base: str, num_shards: int, limit: int) -> None:
        self._fs = fs
        self._base = base
        self._local = is_local(fs)
        self._direct = (  # the writer turns it off if the filesystem refuses it after all
            self._local and _DIRECT != 0 and filesystem_type(base) in DIRECT_IO_FILESYSTEMS
        )
        self._limit = self.limit = limit
        self._num_shards = self.num_shards = num_shards
        # Every shard keeps its chunk file open, unless that would take more descriptors than the
        # process may open (2,048 shards under `ulimit -n 1024`): then each write opens the file
        # again and closes it at once, and no more than one per writer thread is open.
        self._reopen = self._local and num_shards > descriptors_to_spare()
        share = _REMOTE_BUFFERS // num_shards // _UPLOAD_UNIT * _UPLOAD_UNIT
        self._remote_block = max(_UPLOAD_UNIT, min(8 * _MiB, share))
        size = max(_PAGE, min(_MAX_BUFFER, _STAGING // num_shards // _PAGE * _PAGE))
        count = num_shards + max(4, _IN_FLIGHT // size)
        self._size = size
        self._arena = staging_arena(size * count)
        self._free: queue.Queue[memoryview] = queue.Queue()
        whole = memoryview(self._arena)
        for i in range(count):
            self._free.put(whole[i * size : (i + 1) * size])
        self.shards = [_Shard(shard_dir(i, num_shards), size) for i in range(num_shards)]
        if self._local:  # any writer takes any job: writes carry their offset; see _File
            self._queues: list[queue.Queue[_Job | None]] = [queue.Queue()] * _WRITERS
        else:  # a remote file is one stream: a shard always goes to the same writer, in order
            self._queues = [queue.Queue() for _ in range(_WRITERS)]
        self._open_files: set[_File] = set()
        self._written: list[str] = []  # closed chunk files, to make durable before publishing
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(jobs,), name="shardclaim-writer", daemon=True)
            for jobs in self._queues
        ]
        for thread in self._threads:
            thread.start()

    # -- main thread ------------------------------------------------------------------------------

    def add(self, shard_id: int, line: memoryview, count: int = 1) -> None:
        """Append one record (with its newline), or ``count`` whole lines that fit in the current
        chunk, to the shard's current chunk."""
        shard = self.shards[shard_id]
        n = len(line)
        fill = shard.fill
        if fill + n <= self._size and shard.bytes + n <= self._limit:  # nearly every record
            shard.buffer[fill : fill + n] = line  # type: ignore[index]  # fill < size: it has one
            shard.fill = fill + n
            shard.bytes += n
            shard.records += count
            return
        if shard.records and shard.bytes + n > self._limit:
            self._close_chunk(shard_id)
        if not shard.records and not shard.chunks:
            self._fs.makedirs(f"{self._base}/{shard.directory}", exist_ok=True)
        done = 0
        while done < n:  # a record can be longer than a buffer, even than a chunk
            if shard.fill == self._size:
                self._next_buffer(shard_id)
            take = min(n - done, self._size - shard.fill)
            shard.buffer[shard.fill : shard.fill + take] = line[done : done + take]  # type: ignore[index]
            shard.fill += take
            done += take
        shard.bytes += n
        shard.records += count
        if n > self._limit:
            log.warning(
                "a %d-byte record is larger than the %d-byte chunk limit: it gets chunk %s/%s alone",
                n, self._limit, shard.directory, chunk_name(len(shard.chunks)),
            )  # fmt: skip
            self._close_chunk(shard_id)

    def finish(self) -> list[dict[str, Any]]:
        """Close every chunk, wait for the writer; return each shard's metadata."""
        for shard_id, shard in enumerate(self.shards):
            if shard.records:
                self._close_chunk(shard_id)
        self._stop()
        self._raise_if_failed()
        if self._local:
            _make_durable(self._written)
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
        """Stop the writers and close their files (the caller removes them)."""
        self._error = self._error or RuntimeError("aborted")
        self._stop()

    def _stop(self) -> None:
        for jobs in self._queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join()
        for file in list(self._open_files):  # left open by an error: close them, quietly
            with contextlib.suppress(Exception):
                self._close(file)

    def _next_buffer(self, shard_id: int) -> None:
        """The shard's buffer is full, or it has none: hand it over (whole pages, as direct I/O
        wants) and take a fresh one."""
        shard = self.shards[shard_id]
        fresh = self._take()
        if shard.buffer is not None:
            self._hand_over(shard_id, last=False)
            shard.offset += shard.fill
        shard.buffer, shard.fill = fresh, 0

    def _close_chunk(self, shard_id: int) -> None:
        """Close the shard's current chunk: its last bytes go to a writer, its metadata to the list."""
        shard = self.shards[shard_id]
        self._hand_over(shard_id, last=True)
        shard.chunks.append(
            {
                "chunk_id": len(shard.chunks),
                "file": chunk_name(len(shard.chunks)),
                "num_tasks": shard.records,
                "size_mb": round(shard.bytes / _MiB, 6),
                "size_bytes": shard.bytes,
                "crc32c": f"{shard.crc:08x}",
            }
        )
        shard.buffer, shard.fill, shard.offset, shard.file = None, self._size, 0, None
        shard.bytes = shard.records = shard.crc = 0

    def _hand_over(self, shard_id: int, *, last: bool) -> None:
        """The shard's buffer, folded into the chunk's CRC32C, goes to a writer."""
        shard = self.shards[shard_id]
        assert shard.buffer is not None  # records > 0, and every record has at least its newline
        shard.crc = crc32c(shard.buffer[: shard.fill], value=shard.crc)
        if shard.file is None:  # the chunk's first bytes: open it here, before any writer needs it
            shard.file = self._open(f"{self._base}/{shard.directory}/{chunk_name(len(shard.chunks))}")
            self._open_files.add(shard.file)
        file = shard.file
        with file.lock:
            file.pending += 1
            file.closing = last
        job = (file, shard.buffer, shard.fill, shard.offset, last)
        self._queues[shard_id % _WRITERS].put(job)

    def _take(self) -> memoryview:
        while True:
            self._raise_if_failed()
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer threads ---------------------------------------------------------------------------

    def _run(self, jobs: queue.Queue[_Job | None]) -> None:
        while (job := jobs.get()) is not None:
            file, buffer, length, offset, last = job
            try:
                if self._error is None:
                    self._write(file, buffer, length, offset, last=last)
            except BaseException as e:  # keep draining: every buffer must come back
                self._error = self._error or e
            self._free.put(buffer)  # the buffer can be filled again
            with file.lock:
                file.pending -= 1
                done = file.closing and file.pending == 0
            if done and self._error is None:  # every write of the chunk has landed
                try:
                    self._open_files.discard(file)
                    self._close(file)
                    self._written.append(file.path)
                except BaseException as e:  # a remote upload can fail only at close
                    self._error = self._error or e

    def _open(self, path: str) -> _File:
        if not self._local:
            # gcsfs buffers up to a block per open file, and every shard has one open: the blocks
            # share _REMOTE_BUFFERS (2,048 shards get 256 KiB each, not 8 MiB: 512 MiB, not 16 GiB).
            return _File(path, self._fs.open(path, "wb", block_size=self._remote_block), direct=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        file = None
        if self._direct:
            try:
                file = _File(path, os.open(path, flags | _DIRECT, 0o644), direct=True)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._buffered_from_now_on(f"the filesystem refuses O_DIRECT ({e})")
        if file is None:
            file = _File(path, os.open(path, flags, 0o644), direct=False)
        if self._reopen:  # created (and truncated) now; each write opens it again, briefly
            os.close(file.handle)
            file.handle = -1
        return file

    def _write(self, file: _File, buffer: memoryview, length: int, offset: int, *, last: bool) -> None:
        if not self._local:
            file.handle.write(buffer[:length])
            return
        if not self._reopen:
            self._pwrite(file, file.handle, buffer, length, offset, direct=file.opened_direct, last=last)
            return
        with file.lock:
            direct = file.direct
        fd = os.open(file.path, os.O_WRONLY | os.O_CLOEXEC | (_DIRECT if direct else 0))
        try:
            self._pwrite(file, fd, buffer, length, offset, direct=direct, last=last)
        finally:
            os.close(fd)

    def _pwrite(
        self, file: _File, fd: int, buffer: memoryview, length: int, offset: int, *, direct: bool, last: bool
    ) -> None:
        # A direct chunk's last write is padded to whole pages and the file cut back to its size
        # (the chunk's other writes all lie below that size, so their order does not matter).
        end = -(-length // _PAGE) * _PAGE if direct and file.direct and last else length
        done = 0
        while done < end:
            try:
                done += os.pwrite(fd, buffer[done:end], offset + done)
            except OSError as e:
                if not direct or e.errno != errno.EINVAL:
                    raise
                # Accepted at open, refused at write: an alignment this device does not take.
                self._buffered_from_now_on(f"O_DIRECT writes fail ({e})")
                with file.lock:
                    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_DIRECT)
                    file.direct = False
                end = length
        if last and done > length:
            os.ftruncate(fd, offset + length)

    def _buffered_from_now_on(self, why: str) -> None:
        if self._direct:
            log.info("writing chunks through the page cache: %s", why)
        self._direct = False

    def _close(self, file: _File) -> None:
        if not self._local:
            file.handle.close()
            return
        if file.handle < 0:  # reopened for each write: nothing is open
            return
        if not file.direct and hasattr(os, "posix_fadvise"):  # not on macOS
            # Start writing the chunk back now, in the background, rather than leaving all of it
            # to the final flush; the final fdatasync then finds little left to do.
            os.posix_fadvise(file.handle, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(file.handle)
        file.handle = -1


class _File:
    """An open chunk file, shared by the writers: a descriptor (local) or an fsspec file (remote).
    ``pending`` counts the jobs handed over and not yet written; the writer that finishes the last
    one of a closing chunk closes the file."""

    __slots__ = ("closing", "direct", "handle", "lock", "opened_direct", "path", "pending")

    def __init__(self, path: str, handle: Any, *, direct: bool) -> None:
        self.path = path
        self.handle = handle
        self.direct = self.opened_direct = direct
        self.lock = threading.Lock()
        self.pending = 0
        self.closing = False


def descriptors_to_spare() -> int:
    """File descriptors this process may still open, less a reserve for everything else it does
    (the store, validator processes, the caller's own files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): assume a busy process
        in_use = 256
    return soft - in_use - max(_RESERVED_DESCRIPTORS, soft // 8)


def _make_durable(paths: list[str]) -> None:
    """fdatasync every chunk and fsync their directories: the master must never be published over
    chunks that a power cut could still take back."""

    def sync(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    # At once, not one after another: each fdatasync of a direct-written chunk is one journal commit and
    # a device flush (4 ms here), and concurrent ones share them (16 chunks: 8 ms, from 60). _WRITERS at
    # a time: no more descriptors than the writers held (see descriptors_to_spare).
    with ThreadPoolExecutor(_WRITERS) as pool:
        list(pool.map(sync, paths))
    for directory in sorted({os.path.dirname(p) for p in paths}):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
