"""Checking that every input line is a record (see :mod:`shardclaim.dataset.records`), inline or in
background processes.

The fast check (``shardclaim._valid``'s C walk, else simdjson) builds no Python object; a line it does
not accept goes to the rule, which decides and words the error. A background process maps its input
and hands the C walk 8 MiB of whole lines a call: nothing runs per line in the interpreter, and no byte
is copied (reading cost 0.17-0.19 s of system time per GiB, copying out of the page cache); where a file
cannot be mapped, the range is read in 8 MiB blocks. simdjson, the fallback, is called once a line.

When every input is a local file, background processes validate while the builder writes: they re-read
the input from the page cache, each taking its own share (an uncompressed file is cut into byte ranges,
a compressed one is taken whole). The build is published only once every share has been found valid;
when several lines are bad, the first in input order is reported.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import resource
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from shardclaim.dataset.inputs import input_name, is_blank, lines_of, open_inputs, size_of
from shardclaim.dataset.localfs import is_local, usable_cpus
from shardclaim.dataset.lock import held_descriptors
from shardclaim.dataset.records import BOM, FAST_ERRORS, big_integers_in, c_walk, fast_validator
from shardclaim.dataset.zstd import ENV as ZSTD_ENV
from shardclaim.errors import InputError, InvalidRecordError

__all__ = ["BackgroundValidator", "Invalid", "check_lines"]

#: (input name, line number, reason)
Invalid = tuple[str, int, str]
#: (byte offset of the first bad line, its problem) or None; integers beyond 64 bits in good lines
Share = tuple[tuple[int, Invalid] | None, int]
_READ = 8 << 20  # a validator's step: bytes read at a time, or walked at a time in a mapped file
_MAP = True  # map the input where possible (tests turn it off to exercise the reading path)
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def check_lines(lines: Iterator[tuple[str, int, memoryview]]) -> Share:
    """Check ``(name, line number, line)`` in order up to the first line that is not a record."""
    check = fast_validator()
    big = 0
    for name, lineno, line in lines:
        if line[0] in b" \t\r\n" and is_blank(line):
            continue
        try:
            big += check(line)
        except InvalidRecordError as e:
            return (0, (name, lineno, e.reason)), big
    return None, big


def _check_whole(input_file: str, name: str) -> Share:
    """A compressed input, read whole: the first bad line as (byte offset 0, problem)."""
    return check_lines((name, lineno, line) for _, lineno, line in lines_of(open_inputs(input_file), None))


def _begin(f: Any, start: int, end: int) -> tuple[int, int]:
    """Position ``f`` at the first line that begins in [start, end); that offset, and ``end`` (which
    an opening byte order mark may move)."""
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":  # that line began in the previous range: past its newline, 64 KiB a
            while piece := f.read(1 << 16):  # read (readline on an unbuffered file reads a byte a call)
                if (nl := piece.find(b"\n")) >= 0:
                    f.seek(nl + 1 - len(piece), os.SEEK_CUR)
                    break
    elif f.read(3) == BOM:  # an encoding marker, not part of a line; the first line begins at 0
        end = max(end, 4)  # (before it): it is in the range even if the range ends inside the BOM
    else:
        f.seek(0)
    return f.tell(), end


def _check_range(path: str, name: str, start: int, end: int) -> Share:
    """Lines of a plain file that begin in [start, end): the first bad one as (offset, problem)."""
    walk = c_walk()
    if walk is not None:
        return _walk_range(walk, path, name, start, end)
    import simdjson

    parse = simdjson.Parser().parse
    big = 0
    with open(path, "rb", buffering=_READ) as f:
        pos, end = _begin(f, start, end)
        while pos < end:
            line = f.readline()
            if not line:
                break
            if not (line[0] in b" \t\r\n" and is_blank(line)):
                try:  # as records.fast_validator, written out: this loop is the validator's speed
                    if line[0] == 0xEF and line[:3] == BOM:
                        raise ValueError("BOM")
                    parse(line)
                except FAST_ERRORS:
                    try:
                        big += 1 if big_integers_in(_as_read(line)) else 0
                    except InvalidRecordError as e:
                        return (pos, (name, _line_number(path, pos), e.reason)), big
            pos += len(line)
    return None, big


def _walk_range(walk: Any, path: str, name: str, start: int, end: int) -> Share:
    """``_check_range`` with the C walk: the lines that begin in [start, end), walked in steps of about
    ``_READ`` bytes of whole lines, the file mapped (or read, see :func:`_read_range`); the lines the
    walk does not accept go to the rule."""
    with open(path, "rb", buffering=0) as f:
        pos, end = _begin(f, start, end)
        size = os.fstat(f.fileno()).st_size
        if pos >= min(end, size):
            return None, 0
        try:
            mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if _MAP else None
        except (OSError, ValueError, OverflowError):  # a filesystem without mmap; a 32-bit process
            mapped = None
        if mapped is None:
            return _read_range(walk, f, (path, name), (pos, end))
        with mapped:
            return _walk_mapped(walk, mapped, f.fileno(), (path, name), (pos, end))


def _walk_mapped(walk: Any, m: mmap.mmap, fd: int, names: tuple[str, str], span: tuple[int, int]) -> Share:
    """The lines of mapped file ``m`` (``names``: its path and name) that begin in ``span``, [pos, end).

    A file cut while it is mapped makes a read past its new end fatal (SIGBUS): each step first checks
    that the file has not shrunk, and stops if it has (the builder then finds it changed, by its stamp).
    Cut between that check and the step, the validator dies; the builder reports the change all the same
    (see :meth:`BackgroundValidator.result`), and the validator leaves no core dump (``_worker_start``)."""
    pos, end = span
    size = len(m)
    final = m.find(b"\n", min(end, size) - 1) + 1 or size  # the end of the line holding the last byte
    big = 0
    dropped = pos - pos % mmap.PAGESIZE
    i = pos
    while i < final:
        if os.fstat(fd).st_size < size:
            break
        stop = final if final - i <= _READ else m.find(b"\n", i + _READ - 1, final) + 1 or final
        bad, more = _walk_lines(walk, m, (i, stop), 0, names)
        big += more
        if bad is not None:
            return bad, big
        i = stop
        walked = i - i % mmap.PAGESIZE  # out of this process's memory (not the page cache): RSS stays small
        if walked > dropped and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED, dropped, walked - dropped)
            dropped = walked
    return None, big


def _read_range(walk: Any, f: Any, names: tuple[str, str], span: tuple[int, int]) -> Share:
    """``_walk_range`` on a file that cannot be mapped, ``f`` at ``span``'s start: read in blocks of whole
    lines (a block grows to hold a longer line), each walked in one call."""
    pos, end = span
    big = 0
    buf = bytearray(_READ)
    have = 0  # buf[:have] holds the file from pos
    while pos < end:
        got = f.readinto(memoryview(buf)[have:])
        have += got
        if got and have < len(buf):
            continue  # fill the block first
        if not have:
            break
        last = buf.rfind(b"\n", 0, have) + 1 if got else have  # the end of the whole lines
        if not last:
            buf.extend(bytes(len(buf)))  # no line ends in a full block: a longer line
            continue
        final = not got or end - pos <= last
        stop = last
        if end - pos <= last:  # the range ends here: up to the end of the line holding its last byte
            stop = buf.find(b"\n", end - pos - 1, last) + 1 or last
        bad, more = _walk_lines(walk, buf, (0, stop), pos, names)
        big += more
        if bad is not None:
            return bad, big
        if final:
            break
        buf[: have - stop] = buf[stop:have]  # the line cut by the block's end, moved to its start
        pos, have = pos + stop, have - stop
    return None, big


def _walk_lines(walk: Any, data: Any, span: tuple[int, int], offset: int, names: tuple[str, str]) -> Share:
    """Whole lines ``data[i:stop]`` (``span``; ``data`` holds the file from ``offset``) walked in one call,
    those it is unsure of judged by the rule: the first bad one (offset in the file) and big integers."""
    (i, stop), (path, name), big = span, names, 0
    while (i := walk(data, i, stop)) < stop:
        j = data.find(b"\n", i, stop) + 1 or stop
        try:
            big += 1 if big_integers_in(_as_read(bytes(data[i:j]))) else 0
        except InvalidRecordError as e:
            return (offset + i, (name, _line_number(path, offset + i), e.reason)), big
        i = j
    return None, big


def _as_read(line: bytes) -> bytes:
    """A line as the builder reads it: a last line without a newline gets one (so the rule words its
    error the same way inline and here)."""
    return line if line.endswith(b"\n") else line + b"\n"


def _line_number(path: str, offset: int) -> int:
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(_READ, offset))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count + 1


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
                    self._futures.append((index, self._pool.submit(_check_whole, f.path, name)))
                    continue
                for start in range(0, max(size, 1), share):
                    job = self._pool.submit(_check_range, f.path, name, start, min(start + share, size))
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
