"""Background validation: when every input is a local file, processes validate while the builder writes.

They re-read the input from the page cache, each taking its own share (an uncompressed file is cut into
byte ranges, a compressed one is taken whole) and checking it with :mod:`shardclaim.dataset.validate`.
The build is published only once every share has been found valid; when several lines are bad, the
first in input order is reported. An input changed while they read it fails the build.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import signal
import stat
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from shardclaim.dataset import validate
from shardclaim.dataset.inputs import input_name, size_of
from shardclaim.dataset.localfs import is_local, usable_cpus
from shardclaim.dataset.lock import held_descriptors
from shardclaim.dataset.validate import Invalid, Share
from shardclaim.dataset.zstd import ENV as ZSTD_ENV
from shardclaim.errors import InputError

__all__ = ["BACKGROUND_FROM", "BackgroundValidator", "validators"]

_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def _worker_start(parent: int, inherited: list[int]) -> None:
    """First thing in each validator: it dies with the builder, and a forked one lets go of the build
    lock it inherited. A validator left behind by a builder killed with SIGKILL would otherwise sleep
    forever, holding the lock (so every later build of that output would fail as "in progress") and
    the builder's standard output and error (so a pipe reading them would never end)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the builder's to handle: it stops us
    with contextlib.suppress(ValueError, OSError):  # killed by SIGBUS (its input cut while mapped): no core
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if os.environ.get(ZSTD_ENV, "auto") in ("", "auto"):  # a validator is a background process already:
        os.environ[ZSTD_ENV] = "python"  # a zstd child of its own would only add a copy (and a process)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the builder died before that took effect
            os._exit(1)


def _stamp(f: Any) -> tuple[int, int, int, int]:
    """What tells a local input changed: its size, modification and change times (ns; the change time
    cannot be set back, as ``touch -r`` or ``rsync -a`` set the modification time) and inode."""
    st = os.stat(f.path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _context() -> Any:
    """fork where it is safe - on Linux, with no other thread in this process (so none can hold a lock
    the child would inherit) - which starts a validator in milliseconds; else spawn, which starts a new
    interpreter and imports the validator (about 0.3 s of CPU per process)."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def validators() -> int:
    """How many processes validate: every CPU but the one the builder writes with (two on two CPUs,
    where the three share them), at most 8. Validating is the build's heaviest work (a validator checks
    about 1.6-1.9 million 470-byte lines a second per core here with the C walk, 0.87 million with
    simdjson), so it takes what the machine has."""
    cpus = usable_cpus()
    return 2 if cpus <= 2 else min(8, cpus - 1)


# Starting the processes costs ~0.15 s when they are spawned (milliseconds when forked); the main thread
# validates this much in about that time.
BACKGROUND_FROM = 96 << 20


class BackgroundValidator:
    """Validates local inputs in background processes; ``problem()`` polls, ``result()`` waits."""

    def __init__(self, files: list[Any]) -> None:
        workers = validators()
        context = _context()
        inherited = held_descriptors() if context.get_start_method() == "fork" else []
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_worker_start,
            initargs=(os.getpid(), inherited),
        )
        self._futures: list[tuple[int, Future[Share]]] = []
        self._files = files
        self._workers = workers
        self._stamps: list[tuple[int, int, int, int]] = []

    def start(self) -> None:
        """Start validating. Apart from the constructor so that the caller holds the validator (to
        close it) before any process runs: a Ctrl-C at any point leaves none running its share."""
        files, workers = self._files, self._workers
        try:  # (an error or Ctrl-C half way: no validator is left running its share)
            self._stamps = [_stamp(f) for f in files]  # before anyone reads: see result()
            sizes = [size for size, *_ in self._stamps]
            share = max(1, -(-sum(sizes) // workers))
            for index, (f, size) in enumerate(zip(files, sizes, strict=True)):
                name = input_name(f)
                if getattr(f, "compression", None):
                    self._futures.append((index, self._pool.submit(validate.check_whole, f.path, name)))
                    continue
                check = validate.check_range  # (looked up here: tests replace it)
                for start in range(0, max(size, 1), share):
                    job = self._pool.submit(check, f.path, name, start, min(start + share, size))
                    self._futures.append((index, job))
        except BrokenProcessPool as e:  # a validator died while the shares were handed out
            self.close()
            raise self._died(e) from None
        except BaseException:
            self.close()
            raise

    @staticmethod
    def suits(files: list[Any], skip_invalid: bool) -> bool:
        """Worth it with a second core and inputs large enough to pay for starting the processes,
        when no line is to be skipped; possible only when every input is a regular local file (the
        validators read it again by its path: a pipe or a device would give them other bytes, or
        none)."""
        return (
            not skip_invalid
            and usable_cpus() > 1
            and all(is_local(f.fs) and _regular(f.path) for f in files)
            and sum(size_of(f) for f in files) >= BACKGROUND_FROM
        )

    def problem(self) -> Invalid | None:
        """A bad line, once one has been found (then the first in input order); else None. A validator
        found dead fails the build at once, as in :meth:`result`."""
        for _, job in self._futures:
            if not job.done():
                continue
            error = job.exception()  # any other error is the result()'s to raise, as before
            if isinstance(error, BrokenProcessPool) or (error is None and job.result()[0]):
                return self.result()
        return None

    def result(self) -> Invalid | None:
        """Wait for every share; the first bad line in input order, or None. Raises :class:`InputError`
        for an input changed since the validators started: they read the input again by its path, so
        they checked what the builder copied only if it did not change meanwhile (size, times and
        inode; ``--by-reference`` pins a local source in the same spirit)."""
        try:
            found = [(index, *r) for index, job in self._futures if (r := job.result()[0]) is not None]
        except BrokenProcessPool as e:  # a validator died: of its input cut while it was mapped, or killed
            raise self._died(e) from None
        # The change first: a bad line found in an input cut inside a line, or written on, may be it.
        self._raise_if_changed()
        if found:
            return min(found, key=lambda x: (x[0], x[1]))[2]
        return None

    def _died(self, e: BrokenProcessPool) -> InputError:
        """The error for a validator that died: its input changed (see :meth:`_raise_if_changed`, which
        raises that one), or else that it died."""
        self._raise_if_changed()
        names = [input_name(f) for f in self._files]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return InputError(
            f"a background validator of {shown} died before it finished ({e}); nothing was published", shown
        )

    def _raise_if_changed(self) -> None:
        for f, stamp in zip(self._files, self._stamps, strict=True):
            if _stamp(f) != stamp:
                name = input_name(f)
                raise InputError(
                    f"{name}: changed while it was read (it was written to during the build); nothing was "
                    "published: build again once it is complete",
                    name,
                )

    def big_integers(self) -> int:
        """Wait for every share; how many records hold integers beyond 64 bits."""
        return sum(job.result()[1] for _, job in self._futures)

    def close(self) -> None:
        """Stop at once: queued shares are cancelled and running ones stopped (a validator ignores
        Ctrl-C, and a share of a large input would otherwise run to its end before the builder exits)."""
        for _, job in self._futures:
            job.cancel()
        if any(not job.done() for _, job in self._futures):
            processes: dict[int, Any] = getattr(self._pool, "_processes", None) or {}
            for process in list(processes.values()):
                with contextlib.suppress(Exception):
                    process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
