"""zstd inputs: the frame walker that checks where a file's frames end, and the decoders.

Three decoders, chosen by ``SHARDCLAIM_ZSTD`` (:func:`zstd_decoder`):

* ``auto`` (the default): a local ``.zst`` file (a regular file opened by path) of 16 MiB or more is
  decoded by python-zstandard in a child process (:mod:`shardclaim.dataset.zstd_child`) when this
  process may use two CPUs or more; anything else by python-zstandard in this process
  (:class:`ZstdReader`). ``child`` and ``python`` force one or the other (``child`` still needs a local
  regular file).
* ``process``: a local ``.zst`` file is decoded by a ``zstd -dcq`` child reading the opened file as its
  standard input, when a ``zstd`` executable is on ``PATH`` and this process may use two CPUs or more:
  the builder reads the decoded bytes from a pipe, straight into its own buffer (as xopen does for pigz
  and zstd); anything else (a URL, a pipe, no ``zstd``) goes to python-zstandard. It is not the default
  because the pipe is not free: the bytes are copied into it and out of it, about a second of CPU per
  GiB more than python-zstandard; on this project's 2-core test machine it built 1.36-1.73x ``zstd
  -dc``'s time against 1.10-1.34x in process (``python bench/compressed_speed.py``, same rounds).

All of them accept exactly the same files and refuse the others with the same
:class:`CompressedStreamError`, because the file's framing is judged by :class:`ZstdFrames`
(:mod:`shardclaim.dataset.zstd_frames`) either way, never by the decoder: the zstd tool also decodes gzip,
xz and lz4 data, and files of skippable frames only, which are not zstd inputs here. In this process and in
the python child, the frames are walked as the decoder reads them; for the ``zstd`` process, by their
headers alone (``pread`` of a few bytes per block, about 40 ms for 1 GiB of input) before the first byte is
handed out. A file whose frames are whole but which ``zstd`` refuses (a checksum, a corrupt block) is
corrupt, and a ``zstd`` killed by a signal is an error too, never the end of the input. The child writes
its messages to a temporary file, read when it exits non-zero; it runs in its own session, so a Ctrl-C at
the terminal reaches only the builder, whose ``close()`` kills and reaps the child (it also gets
``SIGPIPE`` if the builder dies). The builder only reads from the pipe, so it can never receive ``SIGPIPE``
itself.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Self

from shardclaim.dataset.localfs import usable_cpus
from shardclaim.dataset.zstd_frames import ZstdFrames, truncated
from shardclaim.errors import CompressedStreamError

__all__ = [
    "CHILD_FROM",
    "ENV",
    "READ_SIZE",
    "Decoded",
    "ZstdProcessReader",
    "ZstdReader",
    "zstd_decoder",
]

#: The environment variable choosing the zstd decoder: ``auto`` (the default), ``child``, ``python`` or
#: ``process``.
ENV = "SHARDCLAIM_ZSTD"
_CHOICES = ("auto", "child", "python", "process")

#: With ``auto``, the compressed size from which a child process decodes: it starts in about 80 ms
#: (an interpreter and this package's imports), which 16 MiB of zstd input (~0.1 s to decode) repays.
CHILD_FROM = 16 << 20

_PIPE_SIZE = 1 << 20  # Linux's default ceiling for an unprivileged pipe (/proc/sys/fs/pipe-max-size)
#: Compressed bytes a decoder in this process asks of the file at a time (gzip, bz2 and xz too).
READ_SIZE = 1 << 20


def zstd_decoder(raw: IO[bytes]) -> tuple[str, str]:
    """Which decoder reads ``raw`` (see the module's docstring): ``("process", executable)``,
    ``("child", "")`` or ``("python", "")``. A process decodes only an unbuffered local file (its file
    offset is where the reader is), and only a regular one (whose frames can be walked by seeking, and
    which a child can read from that offset), and only when this process may run on two CPUs or more
    (on one, the copies are all it adds)."""
    choice = os.environ.get(ENV, "") or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(map(repr, _CHOICES))}; got {choice!r}")
    if choice == "python" or not isinstance(raw, io.FileIO) or usable_cpus() < 2:
        return "python", ""
    try:
        st = os.fstat(raw.fileno())
        left = st.st_size - raw.tell()
    except (OSError, ValueError):
        return "python", ""
    if not stat.S_ISREG(st.st_mode):
        return "python", ""
    if choice == "process":
        executable = shutil.which("zstd")
        return ("process", executable) if executable else ("python", "")
    if not hasattr(os, "memfd_create") or not sys.executable or (choice == "auto" and left < CHILD_FROM):
        return "python", ""
    return "child", ""


class Decoded:
    """What the builder reads a decoded input through: ``readinto`` and ``close`` (a subclass's),
    ``read``, a context manager."""

    def readinto(self, buffer: memoryview | bytearray) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read(self, size: int = READ_SIZE) -> bytes:
        if size == 0:
            return b""
        buffer = bytearray(size)
        n = self.readinto(buffer)
        del buffer[n:]
        return bytes(buffer)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ZstdReader(Decoded):
    """python-zstandard's stream reader in this process, fed through a tap that walks the frames it
    reads."""

    kind = "zstd"

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._frames = ZstdFrames()
        self._tap = _Tap(raw, self._frames)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._tap,  # type: ignore[arg-type]  # it calls read() only
            read_size=READ_SIZE,
            read_across_frames=True,
            closefd=False,
        )
        self._errors: tuple[type[Exception], ...] = (zstandard.ZstdError,)
        self._done = False

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._done:
            return 0
        try:
            n: int = self._reader.readinto(buffer)
        except self._errors as e:
            if self._tap.eof and not self._frames.at_end_of_frame():  # an error at the end, in a frame
                raise truncated("zstd") from e
            raise CompressedStreamError("zstd", f"corrupt zstd data ({e})", truncated=False) from e
        if n:
            return n
        while self._tap.read(READ_SIZE):  # the decoder stopped: whatever follows must be frames too
            pass
        self._frames.check_end()
        self._done = True
        return 0

    def close(self) -> None:
        try:
            self._reader.close()  # type: ignore[no-untyped-call]
        finally:
            self._raw.close()


class _Tap:
    """The compressed file as the decoder reads it, every byte also shown to the frame walker."""

    def __init__(self, raw: IO[bytes], frames: ZstdFrames) -> None:
        self._raw = raw
        self._frames = frames
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size and size > 0 else READ_SIZE)
        if data:
            self._frames.feed(data)
        else:
            self.eof = True
        return data


class ZstdProcessReader(Decoded):
    """The decoded bytes of a local zstd file, from a ``zstd -dcq`` child reading it (see the module's
    docstring): ``readinto``, ``read``, ``close``, a context manager. Closing it early kills the child
    and reaps it."""

    kind = "zstd"

    def __init__(self, raw: io.FileIO, executable: str) -> None:
        self._raw = raw
        self._start = raw.tell()
        self._error: CompressedStreamError | None = None
        self._walked = self._done = self._closed = False
        self._messages = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self._process = subprocess.Popen(
                [executable, "-dcq"],
                stdin=raw.fileno(),
                stdout=subprocess.PIPE,
                stderr=self._messages,
                bufsize=0,
                start_new_session=True,
            )
        except BaseException:
            self._messages.close()
            raise
        assert self._process.stdout is not None
        self._out: IO[bytes] = self._process.stdout
        _widen(self._out)

    @property
    def pid(self) -> int:
        return self._process.pid

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._error is not None:
            raise self._error
        if self._done:
            return 0
        try:
            if not self._walked:
                self._walked = True
                ZstdFrames().walk(self._raw.fileno(), self._start)
            n = self._out.readinto(buffer)  # type: ignore[attr-defined]  # a raw FileIO
            if n:
                return int(n)
            self._check_exit()
        except CompressedStreamError as e:
            self._error = e
            raise
        self._done = True
        return 0

    def _check_exit(self) -> None:  # the frames are whole (walked first): what zstd refused is inside them
        check_exit(self._process, "the zstd process", lambda: f"corrupt zstd data (zstd: {self._message()})")

    def _message(self) -> str:
        """The child's last line of complaint, without its name for standard input."""
        text = last_line(self._messages).replace("/*stdin*\\", "").removeprefix("zstd:").strip(" :")
        return f"{text}, exit status {self._process.returncode}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            stop(self._process, self._out)
        finally:
            self._messages.close()
            self._raw.close()


def stop(process: subprocess.Popen[bytes], out: IO[bytes]) -> None:
    """Kill a decoding child if it still runs, close the pipe it writes to, and reap it."""
    try:
        if process.poll() is None:
            process.kill()
    finally:
        out.close()
        process.wait()


def check_exit(process: subprocess.Popen[bytes], who: str, failed: Callable[[], str]) -> None:
    """Wait for a decoding child; raise CompressedStreamError unless it exited with status 0: killed (by
    what, named ``who``), or failed (as ``failed()`` words it)."""
    code = process.wait()
    if code < 0:
        problem = f"{who} was killed by {signal.Signals(-code).name} before the end of the data"
    elif code:
        problem = failed()
    else:
        return
    raise CompressedStreamError("zstd", problem, truncated=False)


def last_line(messages: IO[bytes]) -> str:
    """The last line a child wrote to its (temporary) standard error file."""
    messages.seek(0)
    lines = messages.read(8192).decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def _widen(pipe: IO[bytes]) -> None:
    """Ask for a 1 MiB pipe (64 KiB by default): fewer, larger reads, and more room for the child to
    run ahead. Best effort."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - not Linux, or a lower limit
        pass
