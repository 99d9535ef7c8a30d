"""A large local ``.zst`` input decoded by python-zstandard in a child process, on another core.

python-zstandard wants the GIL back after every call into zstd, so in the builder's process decoding
cannot overlap the builder's own work: a read-ahead thread made builds slower, and decoding alone costs
about what ``zstd -dc`` takes. A child Python process runs :class:`~shardclaim.dataset.zstd.ZstdReader`,
the same code as in process (so the same files are accepted and refused with the same errors), on the
opened file as its standard input, and decodes into slots of memory shared with the builder (a
``memfd``), which copies each slot out once: no pipe carries the decoded bytes.

The protocol: the child sends an 8-byte header per message on a pipe of its own (not its standard
output, where a ``sitecustomize`` may print), first READY (after its imports), then per slot the
number of decoded bytes in it (0: the end, checked like the in-process end) or ERROR with the problem;
the builder sends one byte back per slot it has copied out, on a socket (with ``MSG_NOSIGNAL``: a child
gone is never a SIGPIPE here), and the child waits for it before it decodes into that slot again. The
child runs ``python -P`` with the builder's ``sys.path`` (as multiprocessing's spawn does), so it
imports what the builder imports and nothing from its working directory.

Until READY nothing it did counts: a child that cannot start (no interpreter, an import failing),
says something else first, or says nothing for ``_READY_WITHIN`` seconds is killed, the file is put
back at the offset where it was handed over, and the builder decodes it in process. After READY, a
child that dies before the end is an error, never the end of the input. The child runs in its own
session (a Ctrl-C at the terminal reaches only the builder, whose ``close()`` kills and reaps it), and
it ends when the builder does: its next write finds the pipe closed, or its wait for a slot finds the
socket closed, within one slot's decoding; and, started from the main thread, by ``PR_SET_PDEATHSIG``
too, which reaches it even stopped. (Not from another thread: the signal fires when the *thread* that
started the child ends, which a reader may outlive.)

One difference from decoding in process, by design: the child decodes up to three slots (24 MiB) ahead
of the builder, so bytes appended to the file, or a part rewritten, after it read them are not seen
where the in-process decoder would see them. What comes out is always the file as the child read it,
whole or refused, never mixed or short (tests/test_zstd_child_hostile.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import IO

import orjson

from shardclaim.dataset.zstd import Decoded, ZstdReader, check_exit, last_line, stop
from shardclaim.errors import CompressedStreamError

__all__ = ["ZstdChildReader"]

log = logging.getLogger(__name__)

_SLOTS = 3  # one being copied out, two decoded ahead
_SLOT = 8 << 20  # the builder reads 8 MiB blocks
_HEAD = struct.Struct("<q")
_READY, _ERROR, _OS_ERROR = -1, -2, -3
_PR_SET_PDEATHSIG = 1
_READY_WITHIN = 30.0  # seconds: an interpreter and this package's imports take ~0.1 s
_NO_SIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


class ZstdChildReader(Decoded):
    """The decoded bytes of a local regular zstd file, from a python-zstandard child (see the module's
    docstring): ``readinto``, ``read``, ``close``, a context manager. Closing it early kills the child
    and reaps it."""

    kind = "zstd"

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self._start = raw.tell()  # where the child starts reading, and the fallback too
        self._error: BaseException | None = None
        self._fallback: ZstdReader | None = None
        self._ready = self._done = self._closed = False
        self._slot = self._pos = self._len = 0
        self._holding = False  # a slot is being copied out
        said_r, said_w = os.pipe()  # the child's words
        self._out: IO[bytes] = open(said_r, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._tokens: socket.socket | None = None
        memory_fd = -1
        theirs: socket.socket | None = None
        try:
            self._messages = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            memory_fd = os.memfd_create("shardclaim-zstd", os.MFD_CLOEXEC)
            os.ftruncate(memory_fd, _SLOTS * _SLOT)
            self._memory = mmap.mmap(memory_fd, _SLOTS * _SLOT)
            self._view = memoryview(self._memory)
            # slot tokens go back on a socket, sent with MSG_NOSIGNAL: a child gone is an error here,
            # never a SIGPIPE (which a process embedding the library may not ignore)
            self._tokens, theirs = socket.socketpair()
            fds = (memory_fd, theirs.fileno(), said_w)
            main = threading.current_thread() is threading.main_thread()
            parent = os.getpid() if main and sys.platform == "linux" else 0  # 0: no death signal
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-c",
                    _CHILD,
                    orjson.dumps(sys.path).decode(),
                    *map(str, fds),
                    str(parent),
                ],
                stdin=raw.fileno(),
                stdout=self._messages,
                stderr=self._messages,
                start_new_session=True,
                pass_fds=fds,
            )
        except BaseException:
            self._out.close()
            self._release()
            raise
        finally:
            for fd in (memory_fd, said_w):
                if fd >= 0:
                    os.close(fd)
            if theirs is not None:
                theirs.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._fallback is not None:
            return self._fallback.readinto(buffer)
        if self._error is not None:
            raise self._error
        if self._done:
            return 0
        if self._pos == self._len:
            try:
                if not self._next_slot():
                    return 0 if self._fallback is None else self._fallback.readinto(buffer)
            except BaseException as e:
                self._error = e
                raise
        take = min(len(buffer), self._len - self._pos)
        start = self._slot * _SLOT + self._pos
        buffer[:take] = self._view[start : start + take]
        self._pos += take
        return take

    def _next_slot(self) -> bool:
        """Hand the slot copied out back to the child and take the next one; False at the end (or when
        the child did not start and this process decodes instead)."""
        if self._holding:
            self._holding = False
            self._slot = (self._slot + 1) % _SLOTS
            assert self._tokens is not None
            with contextlib.suppress(OSError):  # it is gone: what it said last, or how it ended, comes next
                self._tokens.send(b"\0", _NO_SIGNAL)
        if not self._ready:
            poll = select.poll()  # (not select(): a builder may hold descriptors past FD_SETSIZE)
            poll.register(self._out.fileno(), select.POLLIN)
            ready = bool(poll.poll(_READY_WITHIN * 1000)) and self._header() == _READY
            if not ready:  # it did not start: from where it was handed over, this process decodes
                self._fall_back()
                return False
            self._ready = True
        n = self._header()
        if n is None:  # it died, or failed, before the end
            self._check_exit()
            raise CompressedStreamError("zstd", "the zstd decoding process ended early", truncated=False)
        if n == 0:
            self._done = True
            self._check_exit()
            return False
        if n == _ERROR:
            raise _problem(orjson.loads(self._exactly(self._header() or 0) or b"{}"))
        if n == _OS_ERROR:
            number, text = orjson.loads(self._exactly(self._header() or 0) or b"[0, null]")
            raise OSError(number, text)
        if not 0 < n <= _SLOT:
            raise CompressedStreamError("zstd", f"the zstd decoding process sent {n} bytes", truncated=False)
        self._holding = True
        self._pos, self._len = 0, n
        return True

    def _header(self) -> int | None:
        data = self._exactly(_HEAD.size)
        return _HEAD.unpack(data)[0] if len(data) == _HEAD.size else None

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n and (part := self._out.read(n - len(data))):
            data += part
        return data

    def _fall_back(self) -> None:
        stop(self._process, self._out)
        code, said = self._process.returncode, last_line(self._messages)
        log.debug("the zstd decoding process did not start (exit status %s: %s); decoding here", code, said)
        self._raw.seek(self._start)
        self._fallback = ZstdReader(self._raw)

    def _check_exit(self) -> None:
        check_exit(self._process, "the zstd decoding process", lambda: (
            f"the zstd decoding process failed (exit status {self._process.returncode}): "
            f"{last_line(self._messages)}"
        ))  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            stop(self._process, self._out)
        finally:
            self._release()
            if self._fallback is not None:
                self._fallback.close()  # it closes the file too
            else:
                self._raw.close()

    def _release(self) -> None:
        if self._tokens is not None:
            self._tokens.close()
            self._tokens = None
        if hasattr(self, "_view"):
            self._view.release()
            self._memory.close()
        if hasattr(self, "_messages"):
            self._messages.close()


def _problem(said: dict[str, object]) -> CompressedStreamError:
    return CompressedStreamError(
        "zstd",
        str(said.get("problem") or "the zstd decoding process failed"),
        truncated=bool(said.get("truncated")),
    )


def child_main(memory_fd: int, tokens_fd: int, said_fd: int, parent: int) -> None:
    """The child: decode standard input into the shared slots (see the module's docstring)."""
    if parent:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the builder died before that took effect
            os._exit(1)
    memory = mmap.mmap(memory_fd, _SLOTS * _SLOT)
    view = memoryview(memory)

    def send(n: int, payload: bytes = b"") -> None:
        data = _HEAD.pack(n) + (_HEAD.pack(len(payload)) + payload if payload else b"")
        while data:
            data = data[os.write(said_fd, data) :]

    reader = ZstdReader(open(0, "rb", buffering=0, closefd=False))  # noqa: SIM115 - fd 0, not ours to close
    send(_READY)
    in_flight = slot = 0
    try:
        while True:
            if in_flight == _SLOTS:
                if not os.read(tokens_fd, 1):
                    return  # the builder closed: it wants no more
                in_flight -= 1
            part = view[slot * _SLOT : (slot + 1) * _SLOT]
            n = 0
            while n < _SLOT and (got := reader.readinto(part[n:])):
                n += got
            send(n)
            if n == 0:
                return
            in_flight += 1
            slot = (slot + 1) % _SLOTS
    except CompressedStreamError as e:
        send(_ERROR, orjson.dumps({"problem": e.problem, "truncated": e.truncated}))
    except OSError as e:
        send(_OS_ERROR, orjson.dumps([e.errno or 0, e.strerror or str(e)]))


# The child's whole program (run with -P: no working directory on its path): the builder's path, then the
# module. An import failing exits before READY, and the builder decodes in process.
_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from shardclaim.dataset.zstd_child import child_main; "
    "child_main(*map(int, sys.argv[2:6]))"
)
