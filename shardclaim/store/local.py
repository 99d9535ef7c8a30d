"""A directory as a store, with compare-and-swap that holds across processes.

Layout: object ``a/b.json`` is the plain file ``ROOT/a/b.json`` (so users, fsspec and ``cat`` read it
as it is). Its *generation* is the file's modification time in nanoseconds, which the store sets
explicitly on every write to ``max(previous + 1, now_ns)``; its custom metadata is the extended
attribute ``user.shardclaim`` (JSON). Both are put on a temporary file that is then renamed over the
object, so bytes, generation and metadata change in one atomic step and a reader needs no lock.

A conditional write checks the current generation and renames under an exclusive lock on the
directory's ``.shardclaim.lock`` file (``flock``) plus a process-wide mutex (on NFS ``flock`` becomes a
POSIX lock, which does not exclude threads of the same process).

Where it is safe:

* local filesystems with nanosecond timestamps and user extended attributes (ext4, XFS, btrfs,
  tmpfs >= 6.6): yes; the store refuses, with a message, a filesystem that drops either;
* NFSv4.2 (Linux >= 5.9 for xattrs) with working locks: yes — the lock round-trip revalidates the
  client's attribute cache, and ``now()``/``updated`` come from the server's clock (inode change
  times), not the client's;
* NFSv3 (no xattrs), SMB, FUSE object-store mounts (gcsfuse, s3fs-fuse: no atomic rename, no locks):
  no. Use the ``gs://`` backend for a bucket.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shardclaim.errors import GenerationMismatchError, ObjectNotFoundError, StoreError, TransientStoreError
from shardclaim.store.base import (
    RESERVED_PREFIX,
    Generation,
    ObjectInfo,
    StoredObject,
    clock_checked,
    store_clock,
    validate_key,
    validate_metadata,
)

__all__ = ["LocalStore"]

_XATTR = "user.shardclaim"
_STAMP = "_generation"  # not a valid metadata key, so it cannot clash with one
_LOCK_NAME = f"{RESERVED_PREFIX}.lock"
_CLOCK_NAME = f"{RESERVED_PREFIX}.clock"
_TMP_PREFIX = f"{RESERVED_PREFIX}-tmp."

# POSIX record locks (what flock becomes on NFS) belong to the process, not the file descriptor:
# two threads of one process would both "hold" them. This mutex makes the exclusion process-wide.
_process_mutex = threading.Lock()


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class LocalStore:
    """Objects as files under ``root``; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._root = Path(root).absolute()
        self._fsync = fsync

    @property
    def root(self) -> Path:
        return self._root

    @property
    def url(self) -> str:
        return str(self._root)

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(key).split("/"))

    # -- reading -------------------------------------------------------------------------------

    def read(self, key: str) -> StoredObject:
        with _translated("read", key):
            return self._read(key)

    def _read(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(key) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not _is_regular(st.st_mode):
                raise ObjectNotFoundError(key)
            data = f.read()
            meta = _read_metadata(fd, st.st_mtime_ns)
        return StoredObject(key, data, st.st_mtime_ns, _from_ns(st.st_ctime_ns), meta, datetime.now(UTC))

    def list(self, prefix: str = "", *, suffix: str = "") -> list[ObjectInfo]:
        with _translated("list", prefix):
            return self._list(prefix, suffix)

    def _list(self, prefix: str, suffix: str) -> builtins.list[ObjectInfo]:
        # Walk only the directory the prefix pins down: "shard_0" -> ROOT, "shard_000/" -> shard_000.
        head, _, _ = prefix.rpartition("/")
        start = self._root.joinpath(*head.split("/")) if head else self._root
        found: list[ObjectInfo] = []
        for key, path in self._walk(start, head + "/" if head else ""):
            if not (key.startswith(prefix) and key.endswith(suffix)):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # replaced or removed while we walked
            try:
                st = os.fstat(fd)
                meta = _read_metadata(fd, st.st_mtime_ns)
            finally:
                os.close(fd)
            found.append(ObjectInfo(key, st.st_mtime_ns, _from_ns(st.st_ctime_ns), st.st_size, meta))
        found.sort(key=lambda o: o.key)
        return found

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[tuple[str, Path]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{key_prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                yield f"{key_prefix}{entry.name}", Path(entry.path)

    def now(self) -> datetime:
        with _translated("now", _CLOCK_NAME):
            return clock_checked(self._now)

    def _now(self) -> datetime:
        # The filesystem's clock: touch a scratch file and read its change time. On a local disk
        # this is the kernel clock; on NFS it is the server's, shared by every client, and bounded
        # like GCS's and S3's (store_clock): a server's clock years off would expire every live lease.
        self._root.mkdir(parents=True, exist_ok=True)
        path = self._root / _CLOCK_NAME
        try:
            os.utime(path)
        except FileNotFoundError:
            path.touch()
        when = _from_ns(os.stat(path).st_ctime_ns)
        store_clock(str(self._root), when)  # (raises if it is years off)
        return when

    # -- writing -------------------------------------------------------------------------------

    def write(
        self,
        key: str,
        data: bytes,
        *,
        if_generation_match: Generation | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        with _translated("write", key):
            return self._write(key, data, if_generation_match, metadata)

    def _write(
        self,
        key: str,
        data: bytes,
        if_generation_match: Generation | None,
        metadata: Mapping[str, str] | None,
    ) -> ObjectInfo:
        path = self._path(key)
        meta = validate_metadata(metadata)
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            msg = f"{key!r}: a parent of it is an object, not a directory"
            raise StoreError(msg) from e
        # Bytes and metadata go to a private temporary file first, outside the lock.
        tmp = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_all(fd, data)
                if self._fsync:
                    os.fsync(fd)
                with self._locked(directory):
                    current = _generation_of(path)
                    if if_generation_match is not None and current != if_generation_match:
                        raise GenerationMismatchError(key, if_generation_match)
                    generation = max(current + 1, time.time_ns())
                    if meta:  # stamped with its generation: a file changed behind our back has none
                        _set_metadata(fd, {**meta, _STAMP: str(generation)}, self._root)
                    os.utime(fd, ns=(generation, generation))
                    st = os.fstat(fd)
                    if st.st_mtime_ns != generation:
                        msg = (
                            f"the filesystem under {self._root} does not keep nanosecond "
                            "modification times, which the local store needs for generations"
                        )
                        raise StoreError(msg)
                    os.rename(tmp, path)
            finally:
                os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._fsync:
            _fsync_directory(directory)
        return ObjectInfo(key, generation, _from_ns(st.st_ctime_ns), len(data), meta)

    def _locked(self, directory: Path) -> _DirectoryLock:
        return _DirectoryLock(directory / _LOCK_NAME)


class _DirectoryLock:
    """Exclusive across processes (flock) and across threads (process-wide mutex)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        _process_mutex.acquire()
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            _process_mutex.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self._fd)  # closing releases the flock
        finally:
            _process_mutex.release()


#: Failures of the filesystem that pass: a full disk or quota (someone frees space), an I/O error or a
#: stale NFS handle (the server comes back), an interrupted or busy call.
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.EAGAIN, errno.EINTR, errno.EBUSY,
     errno.ETIMEDOUT, errno.ENOLCK, errno.ECONNRESET}
)  # fmt: skip


@contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    """The filesystem's errors as the store's: transient ones retried above, the rest a StoreError."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        if e.errno in _TRANSIENT_ERRNOS:
            raise TransientStoreError(operation, f"{key!r}: {e}") from e
        raise StoreError(f"{operation} failed: {key!r}: {e}") from e


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _generation_of(path: Path) -> int:
    """Current generation of the object at ``path``, 0 when absent."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _set_metadata(fd: int, meta: Mapping[str, str], root: Path) -> None:
    try:
        os.setxattr(fd, _XATTR, orjson.dumps(dict(meta)))
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            msg = (
                f"the filesystem under {root} does not support user extended attributes, which "
                "the local store needs for object metadata (NFSv3? use NFSv4.2 or a local disk)"
            )
            raise StoreError(msg) from e
        raise


def _read_metadata(fd: int, generation: int) -> dict[str, str]:
    """The object's metadata, or none when it cannot be trusted: absent, corrupt, or stamped with
    another generation than the file's (the file was edited in place, or copied, behind the store)."""
    try:
        raw = os.getxattr(fd, _XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        return {}
    stamp = meta.pop(_STAMP, None)
    if stamp is not None and stamp != str(generation):
        return {}
    return meta


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
