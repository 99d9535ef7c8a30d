"""zstd inputs: the frame walker that checks where a file's frames end, and decoding in a ``zstd``
process.

By default every ``.zst`` input is decoded in process by python-zstandard
(:mod:`shardclaim.dataset.decompress`). With ``SHARDCLAIM_ZSTD=process``, a local ``.zst`` file (a
regular file opened by path) is decoded by a ``zstd -dcq`` child process reading the opened file as its
standard input, when a ``zstd`` executable is on ``PATH`` and this process may use two CPUs or more:
decoding then runs on another core, and the builder only reads the decoded bytes from a pipe, straight
into its own buffer (as xopen does for pigz and zstd); anything else (a URL, a pipe, no ``zstd``) still
goes to python-zstandard. It is not the default because the pipe is not free: the bytes are copied into
it and out of it, about a second of CPU per GiB more than python-zstandard in all, which only an idle
second core repays; on this project's 2-core test machine, busy with the builder's own line scan and
other work, the process path built 1.36-1.73x ``zstd -dc``'s time against 1.10-1.34x in process
(``python bench/compressed_speed.py``, same rounds).

Both decoders accept exactly the same files and refuse the others with the same
:class:`CompressedStreamError`, because the file's framing is judged by :class:`ZstdFrames` either way,
never by the decoder: the zstd tool also decodes gzip, xz and lz4 data, and files of skippable frames
only, which are not zstd inputs here. For the process, the frames are walked by their headers alone
(``pread`` of a few bytes per block, about 40 ms for 1 GiB of input) before the first byte is handed
out; a file whose frames are whole but which ``zstd`` refuses (a checksum, a corrupt block) is corrupt,
and a ``zstd`` killed by a signal is an error too, never the end of the input. The child writes its
messages to a temporary file, read when it exits non-zero; it runs in its own session, so a Ctrl-C at the
terminal reaches only the builder, whose ``close()`` kills and reaps the child (it also gets ``SIGPIPE``
if the builder dies). The builder only reads from the pipe, so it can never receive ``SIGPIPE`` itself.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from typing import IO

from shardclaim.dataset.localfs import usable_cpus
from shardclaim.errors import CompressedStreamError

__all__ = ["ENV", "ZstdFrames", "ZstdProcessReader", "truncated", "zstd_executable"]

#: The environment variable choosing the zstd decoder: ``python`` (the default) or ``process``.
ENV = "SHARDCLAIM_ZSTD"

_PIPE_SIZE = 1 << 20  # Linux's default ceiling for an unprivileged pipe (/proc/sys/fs/pipe-max-size)


def truncated(kind: str) -> CompressedStreamError:
    return CompressedStreamError(
        kind, f"the {kind} data ends before its end-of-stream marker: the file is truncated", truncated=True
    )


def zstd_executable(raw: IO[bytes]) -> str | None:
    """The ``zstd`` executable to decode ``raw`` with, or None for python-zstandard: a process decodes
    only an unbuffered local file (its file offset is where the reader is), and only a regular one
    (whose frames can be walked by seeking), and only when this process may run on two CPUs or more (on
    one, the pipe's copies are all it adds)."""
    choice = os.environ.get(ENV, "") or "python"
    if choice not in ("process", "python"):
        raise ValueError(f"{ENV} must be 'python' or 'process', got {choice!r}")
    if choice == "python" or not isinstance(raw, io.FileIO) or usable_cpus() < 2:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
    except (OSError, ValueError):
        return None
    return shutil.which("zstd") if regular else None


class ZstdProcessReader:
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

    def read(self, size: int = 1 << 20) -> bytes:
        buffer = bytearray(size)
        n = self.readinto(buffer)
        del buffer[n:]
        return bytes(buffer)

    def _check_exit(self) -> None:
        code = self._process.wait()
        if code < 0:
            killed = signal.Signals(-code).name
            problem = f"the zstd process was killed by {killed} before the end of the data"
        elif code:  # the frames are whole (walked first): what zstd refused is inside them
            problem = f"corrupt zstd data (zstd: {self._message()})"
        else:
            return
        raise CompressedStreamError("zstd", problem, truncated=False)

    def _message(self) -> str:
        """The child's last line of complaint, without its name for standard input."""
        self._messages.seek(0)
        lines = self._messages.read(8192).decode("utf-8", "replace").strip().splitlines() or ["no message"]
        text = lines[-1].replace("/*stdin*\\", "").removeprefix("zstd:").strip(" :")
        return f"{text}, exit status {self._process.returncode}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._process.poll() is None:
                self._process.kill()
        finally:
            self._out.close()
            self._process.wait()
            self._messages.close()
            self._raw.close()

    def __enter__(self) -> ZstdProcessReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _widen(pipe: IO[bytes]) -> None:
    """Ask for a 1 MiB pipe (64 KiB by default): fewer, larger reads, and more room for the child to
    run ahead. Best effort."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - not Linux, or a lower limit
        pass


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # the low four bits are free


class ZstdFrames:
    """Walks zstd frames (RFC 8878) by their headers and block sizes, so that the end of the file can
    be checked to be the end of a frame. Block contents are skipped, never decoded."""

    # states: what the next ``need`` header bytes are
    _MAGIC, _SKIP_SIZE, _DESCRIPTOR, _FRAME_HEADER, _BLOCK = range(5)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._head = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            take = min(self._need - len(self._head), n - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._need:
                header = bytes(self._head)
                self._head.clear()
                self._step(header)

    def walk(self, fd: int, pos: int) -> None:
        """Walk the file ``fd`` from offset ``pos`` to its end, reading the headers only (by ``pread``:
        the file offset is left alone), and check its end as :meth:`check_end` does."""
        size = os.fstat(fd).st_size
        while True:
            if self._skip:
                if pos + self._skip > size:
                    raise truncated("zstd")
                pos, self._skip = pos + self._skip, 0
            data = os.pread(fd, self._need - len(self._head), pos)
            if not data:
                break
            self.feed(data)
            pos += len(data)
        self.check_end()

    def _step(self, header: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            magic = int.from_bytes(header, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = self._DESCRIPTOR, 1
            elif magic & ~0xF == _SKIPPABLE:
                self._state, self._need = self._SKIP_SIZE, 4
            else:
                raise CompressedStreamError(
                    "zstd", f"bytes that start no zstd frame (0x{magic:08x})", truncated=False
                )
        elif state == self._SKIP_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = self._MAGIC, 4
        elif state == self._DESCRIPTOR:
            descriptor = header[0]
            single = descriptor >> 5 & 1
            content_size = (0, 2, 4, 8)[descriptor >> 6] or single  # 1 byte when single-segment
            self._checksum = bool(descriptor >> 2 & 1)
            rest = (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size
            self.frames += 1
            if rest:
                self._state, self._need = self._FRAME_HEADER, rest
            else:
                self._state, self._need = self._BLOCK, 3
        elif state == self._FRAME_HEADER:
            self._state, self._need = self._BLOCK, 3
        else:
            block = int.from_bytes(header, "little")
            kind = block >> 1 & 3
            if kind == 3:
                raise CompressedStreamError("zstd", "a zstd block of the reserved type", truncated=False)
            self._skip = 1 if kind == 1 else block >> 3  # an RLE block is one byte
            if block & 1:  # the frame's last block
                self._skip += 4 if self._checksum else 0
                self._state, self._need = self._MAGIC, 4

    def at_end_of_frame(self) -> bool:
        return self._state == self._MAGIC and not self._head and not self._skip

    def check_end(self) -> None:
        if self.frames == 0 and self.at_end_of_frame():
            raise CompressedStreamError("zstd", "no zstd frame in the file", truncated=True)
        if not self.at_end_of_frame():
            raise truncated("zstd")
