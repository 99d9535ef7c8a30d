"""Local paths without fsspec: the few filesystem calls the builder and the reader make.

Importing fsspec costs about 70 ms (it pulls in asyncio), a third of a small build's whole run and a
noticeable share of a large one; local paths, the common case, do not need it. URLs still go through
fsspec, imported on first use (``s3://`` through :func:`shardclaim.store.s3.chunk_filesystem`).
``filesystem(url)`` hands out one or the other with the same methods.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import sys
from typing import IO, Any

__all__ = [
    "COMPRESSIONS",
    "DIRECT_IO_FILESYSTEMS",
    "LocalFS",
    "LocalInput",
    "filesystem",
    "filesystem_type",
    "is_local",
    "staging_arena",
    "usable_cpus",
]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container's or taskset's share), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# What fsspec's compression="infer" calls these suffixes, and how to open them.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}


class LocalFS:
    """The fsspec calls shardclaim makes, on local paths (an fsspec-compatible subset)."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def rm(self, path: str, recursive: bool = False) -> None:
        if recursive and os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def open(self, path: str, mode: str = "rb", **_: Any) -> IO[bytes]:
        return open(path, mode)


class LocalInput:
    """One local input file, like fsspec's ``OpenFile``: ``open()`` gives the decompressed bytes."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.full_name = self.path
        self.fs = LocalFS()
        self.compression = COMPRESSIONS.get(os.path.splitext(path)[1].lower())

    def open(self) -> IO[bytes]:
        """The file's bytes, decompressed and checked to end where the compressed stream ends."""
        raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 - readinto straight into the caller's buffer
        if self.compression is None:
            return raw
        from shardclaim.dataset.decompress import open_decompressed

        return open_decompressed(raw, self.compression)


def filesystem(url: str) -> tuple[Any, str]:
    """``(filesystem, path)`` for a store URL: :class:`LocalFS` for a local path, else fsspec's."""
    if "://" not in url:
        return LocalFS(), url.rstrip("/") or "/"
    if url.startswith("s3://"):  # the S3 store's endpoint, and write buffers S3 accepts
        from shardclaim.store.s3 import chunk_filesystem

        return chunk_filesystem(url)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def is_local(fs: Any) -> bool:
    if isinstance(fs, LocalFS):
        return True
    if "fsspec" not in sys.modules:  # an fsspec filesystem cannot exist before fsspec is imported
        return False
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


# Filesystems on a local block device, where O_DIRECT takes the page cache out of the way. Elsewhere
# (NFS, FUSE, overlay, tmpfs) it is refused, ignored or turns every write into a synchronous round
# trip, so the builder writes through the page cache there.
DIRECT_IO_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})


def filesystem_type(path: str, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (Linux: from /proc/self/mounts), or None."""
    if mounts is None:
        try:
            with open("/proc/self/mounts") as f:
                mounts = f.read()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")  # the file escapes spaces in mount points
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def staging_arena(size: int) -> mmap.mmap:
    """``size`` bytes of zeroed, page-aligned memory for the staging buffers: private, and in 2 MiB pages
    where the kernel grants them (``MADV_HUGEPAGE``). A direct write goes to the device as one segment
    per physically contiguous piece of its buffer: from 4 KiB pages a 2 MiB write is 512 pieces, which
    this machine's virtio disk (``max_segments`` 254) takes as three requests; from one huge page, as
    one. ``mmap(-1, size)`` alone is a shared map, tmpfs memory, which stays in 4 KiB pages: a build of
    1 GiB of small records took 1.11-1.28 s in-process with it against 0.66-0.87 s with this,
    alternating, and ``bench/write_floor.py``'s raw build went from 1.24x ``split``'s time to 1.00x."""
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    arena = mmap.mmap(-1, size, flags=private) if private else mmap.mmap(-1, size)  # (Windows: no flags)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is not None:
        with contextlib.suppress(OSError):  # refused (THP disabled): 4 KiB pages, as before
            arena.madvise(advice)
    return arena
