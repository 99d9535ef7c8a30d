"""One build at a time per output: the builder's lock.

A second build into the same output fails at once with :class:`BuildInProgressError`; it never waits,
and it never touches the first one's files. The lock is held from before the output is inspected until
after the new dataset is published and the old one removed.

* **Local directory**: ``flock`` on ``DIR/.shardclaim-build.lock``. It dies with its process, so a
  killed build leaves nothing to clean up before the next one may start. When the builder swaps a new
  directory into place, the new directory's lock file is already held by the same build, so the lock
  passes over with the swap; a build that opened the old lock file sees that the path now names another
  file and tries again. Threads of one process exclude each other too (on NFS, ``flock`` becomes a
  POSIX lock, which does not).
* **Object stores**: the marker object ``_build.json``, created with ``if_generation_match=0`` (exactly
  one of N racing builds succeeds) and rewritten every :data:`HEARTBEAT_SECONDS` by its build, each
  write conditioned on the generation it last wrote. A marker not rewritten for :data:`STALE_AFTER`
  on the store's clock (``now()`` against the object's update time) was left by a build that died; the
  next build takes it over by a conditional write on the generation it judged, so only one can. A build
  whose marker was taken over (it was paused for longer than that) learns it at its next heartbeat and
  fails before publishing.
* **memory://**: the store lives in one process: a lock in that process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shardclaim.errors import BuildInProgressError, GenerationMismatchError, ObjectNotFoundError
from shardclaim.store import Generation, RetryingStore

__all__ = [
    "HEARTBEAT_SECONDS",
    "LOCK_FILE",
    "MARKER_KEY",
    "STALE_AFTER",
    "FileLock",
    "MarkerLock",
    "ProcessLock",
]

log = logging.getLogger("shardclaim.dataset")

LOCK_FILE = ".shardclaim-build.lock"
MARKER_KEY = "_build.json"
HEARTBEAT_SECONDS = 15.0
STALE_AFTER = timedelta(seconds=120)

_held: set[str] = set()  # locks this process holds (flock does not exclude threads on NFS)
_held_mutex = threading.Lock()
_descriptors: set[int] = set()  # the open lock files of the FileLocks this process holds


def held_descriptors() -> list[int]:
    """The file descriptors of the build locks this process holds: a forked child inherits them, and
    with them the lock, which would then outlive the build; the child closes them first (see
    :mod:`~shardclaim.dataset.background`)."""
    with _held_mutex:
        return sorted(_descriptors)


def _holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(UTC).isoformat()}


def _describe(raw: bytes) -> str:
    try:
        info = orjson.loads(raw)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "holder unknown"


class ProcessLock:
    """Excludes the threads of this process from a name."""

    def __init__(self, name: str, output: str) -> None:
        with _held_mutex:
            if name in _held:
                raise BuildInProgressError(output, f"a thread of this process, pid {os.getpid()}")
            _held.add(name)
        self._name = name

    def release(self) -> None:
        with _held_mutex:
            _held.discard(self._name)


class FileLock:
    """``flock`` on ``directory/.shardclaim-build.lock`` (created, never followed if a link)."""

    def __init__(self, directory: str, output: str) -> None:
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd = -1
        self._process: ProcessLock | None = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.pread(fd, 4096, 0))
                os.close(fd)
                raise BuildInProgressError(output, holder) from None
            except BaseException:
                os.close(fd)
                raise
            st = os.fstat(fd)
            try:
                now = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # swapped out or removed by the build that held it: take the new one
                continue
            try:
                self._process = ProcessLock(f"file:{st.st_dev}:{st.st_ino}", output)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            with _held_mutex:
                _descriptors.add(fd)
            info = orjson.dumps(_holder_info())
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            return

    def release(self) -> None:
        """Remove the lock file if it is still this lock's, then let go of it."""
        if self._fd < 0:
            return
        try:
            st = os.fstat(self._fd)
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            with _held_mutex:
                _descriptors.discard(self._fd)
            os.close(self._fd)
            self._fd = -1
            if self._process is not None:
                self._process.release()


class MarkerLock:
    """The ``_build.json`` marker on an object store, heartbeated by a background thread."""

    def __init__(self, store: RetryingStore, fs: Any, base: str, output: str) -> None:
        self._store = store
        self._fs = fs
        self._path = f"{base}/{MARKER_KEY}"
        self._output = output
        self._doc = {"state": "building", "build": uuid.uuid4().hex, **_holder_info()}
        self._write_mutex = threading.Lock()
        self._stop = threading.Event()
        self._lost = ""
        self._generation = self._acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="shardclaim-build-marker", daemon=True)
        self._thread.start()

    def _bytes(self, **change: str) -> bytes:
        """The marker's bytes, unique to this write (a write token): on S3 a rewrite of the same bytes
        would keep its ETag, and a rival that judged the old marker stale could still take it over."""
        return orjson.dumps({**self._doc, **change, "write_token": uuid.uuid4().hex})

    def _acquire(self) -> Generation:
        data = self._bytes()
        while True:
            try:
                return self._store.write(MARKER_KEY, data, if_generation_match=0).generation
            except GenerationMismatchError:
                pass
            try:
                current = self._store.read(MARKER_KEY)
            except ObjectNotFoundError:
                continue  # removed in between: try to create it again
            try:
                state = orjson.loads(current.data).get("state")
            except (orjson.JSONDecodeError, AttributeError):
                state = None
            age = self._store.now() - current.updated
            if state == "building" and age <= STALE_AFTER:
                holder = _describe(current.data)
                raise BuildInProgressError(
                    self._output,
                    f"{holder}; its marker {MARKER_KEY} was renewed {age.total_seconds():.0f} s ago",
                )
            try:  # released, or left by a build that died: take it over, if no one else does first
                return self._store.write(MARKER_KEY, data, if_generation_match=current.generation).generation
            except GenerationMismatchError:
                raise BuildInProgressError(self._output, "another build took the output just now") from None

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.renew()
            except BuildInProgressError:
                return
            except Exception as e:  # a store outage: keep trying; staleness is judged by others
                log.warning("could not renew the build marker %s: %s", self._path, e)

    def renew(self) -> None:
        """Rewrite the marker on the generation this build last wrote; :class:`BuildInProgressError`
        if another build has taken it over since."""
        with self._write_mutex:
            if self._lost:
                raise BuildInProgressError(self._output, self._lost)
            try:
                info = self._store.write(MARKER_KEY, self._bytes(), if_generation_match=self._generation)
            except GenerationMismatchError:
                self._lost = "this build's marker was taken over: it was judged stale"
                raise BuildInProgressError(self._output, self._lost) from None
            self._generation = info.generation

    def release(self) -> None:
        """Stop the heartbeat and remove the marker, if it is still this build's."""
        self._stop.set()
        self._thread.join()
        try:
            self.renew()  # fresh and ours: no one can take it over in the next moments
            with self._write_mutex:
                try:
                    self._fs.rm(self._path)
                except FileNotFoundError:  # a store the filesystem does not show (memory://)
                    released = self._bytes(state="released")
                    self._store.write(MARKER_KEY, released, if_generation_match=self._generation)
        except Exception as e:  # never hide the build's own outcome behind the marker's
            log.warning("could not release the build marker %s: %s", self._path, e)
