"""A local directory as a build's output: a staging directory swapped with it in one step, or moved
into it by renames where the swap is impossible (see :mod:`shardclaim.dataset.output`)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import uuid
from typing import Any

from shardclaim.dataset.localfs import filesystem
from shardclaim.dataset.lock import FileLock
from shardclaim.dataset.output import (
    ASIDE,
    LISTED,
    OLD_TOP,
    OLD_TOP_DIRS,
    SHARD_DIR,
    SHARD_FILE,
    STAGING,
    Output,
    foreign,
    metadata_bytes,
    refuse_existing,
    write_metadata,
)
from shardclaim.errors import DatasetExistsError
from shardclaim.layout import MASTER_KEY, SHARD_METADATA
from shardclaim.store import open_store
from shardclaim.store.base import RESERVED_PREFIX

__all__ = ["LocalOutput"]

log = logging.getLogger("shardclaim.dataset")


class LocalOutput(Output):
    def __init__(self, root: str, output_dir: str, *, overwrite: bool) -> None:
        self.fs, _ = filesystem(root)
        self._shown = output_dir
        self._target = os.path.realpath(root)  # a link to the output is the user's choice: follow it
        self._created = not os.path.lexists(self._target)
        if not self._created and not os.path.isdir(self._target):
            raise DatasetExistsError(f"{output_dir} exists and is not a directory", output_dir)
        os.makedirs(self._target, exist_ok=True)
        self._locks: list[FileLock] = [FileLock(self._target, output_dir)]
        self._staging = ""
        self._old: list[str] = []
        try:
            has_master = self._inspect()
            refuse_existing(output_dir, has_master, overwrite)
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
                raise _link(self._shown, path)
            if entry.name.startswith(RESERVED_PREFIX):
                continue  # the store's and the builder's own files, stale staging areas
            if entry.name == MASTER_KEY and entry.is_file(follow_symlinks=False):
                has_master = True
            elif (entry.name in OLD_TOP and entry.is_file(follow_symlinks=False)) or (
                entry.name in OLD_TOP_DIRS and entry.is_dir(follow_symlinks=False)
            ):
                pass  # what runs over the old dataset left: it goes with it
            elif SHARD_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                self._inspect_shard(path)
            else:
                raise foreign(self._shown, entry.name)
            self._old.append(entry.name)
        return has_master

    def _inspect_shard(self, directory: str) -> None:
        with os.scandir(directory) as entries:
            listed = list(entries)
        for entry in listed:
            if entry.is_symlink():
                raise _link(self._shown, entry.path)
            if entry.name.startswith(RESERVED_PREFIX) and entry.is_file(follow_symlinks=False):
                continue
            if not (SHARD_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                raise foreign(self._shown, f"{os.path.basename(directory)}/{entry.name}")

    def _remove_stale(self) -> None:
        """Staging areas and set-aside trees of builds that died: no live build uses them, since this
        one holds the lock."""
        parent, name = os.path.split(self._target)
        beside = f".{name}{STAGING}"
        for directory, prefixes in ((self._target, (STAGING, ASIDE)), (parent, (beside,))):
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
        beside = os.path.join(parent, f".{name}{STAGING}{build}")
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
        inside = os.path.join(self._target, f"{STAGING}{build}")
        os.mkdir(inside, 0o755)
        return inside

    def publish(self, shards: list[dict[str, Any]], master: dict[str, Any]) -> None:
        if self._swap:
            write_metadata(open_store(self._staging), shards, master)
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
            staging.write(key, metadata_bytes(key, doc), if_generation_match=0, metadata=LISTED)
        aside = os.path.join(self._target, f"{ASIDE}{os.path.basename(self._staging)[len(STAGING) :]}")
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
                MASTER_KEY, metadata_bytes(MASTER_KEY, master), if_generation_match=0
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


def _link(output_dir: str, path: str) -> DatasetExistsError:
    return DatasetExistsError(
        f"{path} is a symbolic link: a build never writes through a link in its output, nor removes "
        "one; remove it or choose another directory",
        output_dir,
        path,
    )


# renameat2(2): swap two paths in one step (Linux 3.15+, glibc 2.28+; ext4, XFS, btrfs, tmpfs...).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # the C library the interpreter uses
    except (AttributeError, OSError):  # not Linux, or a C library without it
        return None


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
