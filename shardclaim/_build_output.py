"""Where a build writes, and how it replaces an old dataset without ever losing it.

A build never writes into the dataset it may replace. It holds the output's lock (:mod:`._build_lock`)
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
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from shardclaim._build_lock import MARKER_KEY, FileLock, MarkerLock, ProcessLock
from shardclaim._localfs import filesystem
from shardclaim.errors import ShardclaimError
from shardclaim.layout import MASTER_KEY, SHARD_METADATA, check_master, check_shard
from shardclaim.store import RetryingStore, open_store
from shardclaim.store.base import RESERVED_PREFIX

__all__ = ["DatasetExistsError", "Output", "prepare_output"]

log = logging.getLogger("shardclaim.dataset")

_STAGING = f"{RESERVED_PREFIX}-build-"  # DIR/.shardclaim-build-ID, or PARENT/.DIR.shardclaim-build-ID
_ASIDE = f"{RESERVED_PREFIX}-old-"
_SHARD = re.compile(r"shard_[0-9]{3,}")
_SHARD_FILE = re.compile(rf"{SHARD_METADATA}|chunk_[0-9]{{4,}}\.jsonl")
_OLD_TOP = ("_finalize.json",)  # the fan-in marker of runs over the old dataset
_LISTED = {"status": "available", "attempt": "0", "failures": "0"}  # a shard's state, read by listings


class DatasetExistsError(ShardclaimError, FileExistsError):
    """The output already holds a dataset (or foreign files) and overwriting was not asked for."""


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
        return _LocalOutput(str(store.inner.root), output_dir, overwrite=overwrite)
    return _RemoteOutput(store, output_dir, overwrite=overwrite)


def _refuse_existing(output_dir: str, has_master: bool, overwrite: bool) -> None:
    if has_master and not overwrite:
        raise DatasetExistsError(
            f"{output_dir} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
        )


def _foreign(output_dir: str, example: str) -> DatasetExistsError:
    return DatasetExistsError(
        f"{output_dir} holds files that are not part of a shardclaim dataset "
        f"(e.g. {example!r}); choose an empty or new directory"
    )


def _metadata_bytes(key: str, doc: dict[str, Any]) -> bytes:
    check = check_master if key == MASTER_KEY else check_shard
    return orjson.dumps(check(key, doc), option=orjson.OPT_INDENT_2)


def _write_metadata(store: RetryingStore, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
    """Every shard's ``metadata.json`` (in parallel: one request each on an object store), then the master."""

    def one(index: int) -> None:
        key = f"{master['shards'][index]['directory']}/{SHARD_METADATA}"
        store.write(
            key,
            _metadata_bytes(key, shards[index]),
            if_generation_match=0,
            metadata=_LISTED,
        )

    with ThreadPoolExecutor(max_workers=min(16, len(shards))) as pool:
        list(pool.map(one, range(len(shards))))
    store.write(MASTER_KEY, _metadata_bytes(MASTER_KEY, master), if_generation_match=0)


# -- local directories ---------------------------------------------------------------------------


class _LocalOutput(Output):
    def __init__(self, root: str, output_dir: str, *, overwrite: bool) -> None:
        self.fs, _ = filesystem(root)
        self._shown = output_dir
        self._target = os.path.realpath(root)  # a link to the output is the user's choice: follow it
        self._created = not os.path.lexists(self._target)
        if not self._created and not os.path.isdir(self._target):
            raise DatasetExistsError(f"{output_dir} exists and is not a directory")
        os.makedirs(self._target, exist_ok=True)
        self._locks: list[FileLock] = [FileLock(self._target, output_dir)]
        self._staging = ""
        self._old: list[str] = []
        try:
            has_master = self._inspect()
            _refuse_existing(output_dir, has_master, overwrite)
            self._remove_stale()
            self._staging = self._make_staging()
        except BaseException:
            self.close()
            raise
        self.chunk_base = self._staging

    def _inspect(self) -> bool:
        """Whether there is a master; refuse foreign files and links; note the old dataset's entries."""
        has_master = False
        with os.scandir(self._target) as entries:
            listed = list(entries)
        for entry in listed:
            path = entry.path
            if entry.is_symlink():
                raise _link(path)
            if entry.name.startswith(RESERVED_PREFIX):
                continue  # the store's and the builder's own files, stale staging areas
            if entry.name == MASTER_KEY and entry.is_file(follow_symlinks=False):
                has_master = True
            elif entry.name in _OLD_TOP and entry.is_file(follow_symlinks=False):
                pass
            elif _SHARD.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                self._inspect_shard(path)
            else:
                raise _foreign(self._shown, entry.name)
            self._old.append(entry.name)
        return has_master

    def _inspect_shard(self, directory: str) -> None:
        with os.scandir(directory) as entries:
            listed = list(entries)
        for entry in listed:
            if entry.is_symlink():
                raise _link(entry.path)
            if entry.name.startswith(RESERVED_PREFIX) and entry.is_file(follow_symlinks=False):
                continue
            if not (_SHARD_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                raise _foreign(self._shown, f"{os.path.basename(directory)}/{entry.name}")

    def _remove_stale(self) -> None:
        """Staging areas and set-aside trees of builds that died: no live build uses them, since this
        one holds the lock."""
        parent, name = os.path.split(self._target)
        beside = f".{name}{_STAGING}"
        for directory, prefixes in ((self._target, (_STAGING, _ASIDE)), (parent, (beside,))):
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                stale = [
                    e.path for e in entries if e.name.startswith(prefixes) and e.is_dir(follow_symlinks=False)
                ]
            for path in stale:
                log.info("removing %s, left by a build that did not finish", path)
                shutil.rmtree(path, ignore_errors=True)

    def _make_staging(self) -> str:
        """A sibling of the output if it can be swapped with it, else a directory inside it."""
        parent, name = os.path.split(self._target)
        build = uuid.uuid4().hex[:12]
        beside = os.path.join(parent, f".{name}{_STAGING}{build}")
        try:
            if not name or os.path.ismount(self._target):
                raise OSError(errno.EBUSY, "a mount point cannot be swapped", self._target)
            os.mkdir(beside, 0o755)
        except OSError:
            beside = ""
        if beside and _exchange_works(beside, self._target):
            self._locks.append(FileLock(beside, self._shown))  # the output's lock once swapped in
            self._swap = True
            return beside
        if beside:
            shutil.rmtree(beside, ignore_errors=True)
        self._swap = False
        inside = os.path.join(self._target, f"{_STAGING}{build}")
        os.mkdir(inside, 0o755)
        return inside

    def publish(self, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
        if self._swap:
            _write_metadata(open_store(self._staging), shards, master)
            _exchange(self._staging, self._target)  # from here on the new dataset is the one
            old, self._staging = self._staging, ""
            try:
                _fsync_directory(os.path.dirname(self._target))
            except OSError as e:  # published all the same; only a power cut could take it back
                log.warning("could not flush %s: %s", os.path.dirname(self._target), e)
            shutil.rmtree(old, ignore_errors=True)  # the old tree, under the staging area's name
            return
        staging = open_store(self._staging)
        for index, doc in enumerate(shards):  # written in staging: the switch is renames only
            key = f"{master['shards'][index]['directory']}/{SHARD_METADATA}"
            staging.write(key, _metadata_bytes(key, doc), if_generation_match=0, metadata=_LISTED)
        aside = os.path.join(self._target, f"{_ASIDE}{os.path.basename(self._staging)[len(_STAGING) :]}")
        os.mkdir(aside)
        moves = [(os.path.join(self._target, name), os.path.join(aside, name)) for name in self._old]
        moves.sort(key=lambda m: os.path.basename(m[0]) != MASTER_KEY)  # the master first: not whole
        moves += [
            (os.path.join(self._staging, e["directory"]), os.path.join(self._target, e["directory"]))
            for e in master["shards"]
        ]
        done: list[tuple[str, str]] = []
        try:
            for source, destination in moves:
                os.rename(source, destination)
                done.append((source, destination))
            _fsync_directory(self._target)
            open_store(self._target).write(
                MASTER_KEY, _metadata_bytes(MASTER_KEY, master), if_generation_match=0
            )
        except BaseException:
            for source, destination in reversed(done):  # put the old dataset back as it was
                with contextlib.suppress(OSError):
                    os.rename(destination, source)
            with contextlib.suppress(OSError):
                os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = ""

    def abort(self) -> None:
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = ""

    def close(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks = []
        if self._created:  # the output did not exist: leave none behind if nothing was published
            with contextlib.suppress(OSError):
                os.rmdir(self._target)


def _real_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _link(path: str) -> DatasetExistsError:
    return DatasetExistsError(
        f"{path} is a symbolic link: a build never writes through a link in its output, nor removes "
        "one; remove it or choose another directory"
    )


# renameat2(2): swap two paths in one step (Linux 3.15+, glibc 2.28+; ext4, XFS, btrfs, tmpfs...).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    return getattr(libc, "renameat2", None)


def _exchange(a: str, b: str) -> None:
    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", a)
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), a, None, b)


def _exchange_works(beside: str, target: str) -> bool:
    """Whether ``beside`` can be swapped with ``target``: tried on two empty directories, one in
    each place (a mount point or a filesystem without the call says no)."""
    if os.stat(beside).st_dev != os.stat(target).st_dev:
        return False
    probe_a = os.path.join(beside, f"{RESERVED_PREFIX}-probe")
    probe_b = os.path.join(target, f"{RESERVED_PREFIX}-probe-{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(probe_a)
        os.mkdir(probe_b)
        _exchange(probe_a, probe_b)
    except OSError:
        return False
    finally:
        for probe in (probe_a, probe_b):
            with contextlib.suppress(OSError):
                os.rmdir(probe)
    return True


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            self._old = [k for k in keys if k != MARKER_KEY and not k.startswith(_STAGING)]
            for key in self._old:
                top, _, rest = key.partition("/")
                layout = (
                    key == MASTER_KEY
                    or key in _OLD_TOP
                    or (_SHARD.fullmatch(top) is not None and _SHARD_FILE.fullmatch(rest) is not None)
                )
                if not layout:
                    raise _foreign(output_dir, key)
            _refuse_existing(output_dir, MASTER_KEY in self._old, overwrite)
            for stale in sorted({k.split("/", 1)[0] for k in keys if k.startswith(_STAGING)}):
                log.info("removing %s/%s, left by a build that did not finish", output_dir, stale)
                _rm(self.fs, f"{self._base}/{stale}", recursive=True)
        except BaseException:
            self.close()
            raise
        # Always a staging area of this build's own: even a build that lost its marker while paused
        # can then never write over another build's chunks.
        self.chunk_base = f"{self._base}/{_STAGING}{uuid.uuid4().hex[:12]}"

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
        expected = sum(len(doc["chunks"]) for doc in shards)
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
        self.fs.copy(staged, [f"{self._base}/{c[len(self.chunk_base) + 1 :]}" for c in staged])
        _write_metadata(self._store, shards, master)
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
