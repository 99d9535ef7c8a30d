"""Compressed inputs, read to their proper end.

A decompressor that reaches the end of its input without the format's end-of-stream marker has read a
truncated file; most libraries then simply stop (zstandard's stream reader does, at any cut), which would
build a dataset from part of the input. Here every stream is read to the end of the file and the end is
checked:

* gzip: each member's trailer (CRC-32 and length, checked by zlib); several members are one stream;
* bz2, xz: each stream's end marker (and check); several streams are one stream;
* zstd: the frames themselves are walked (headers and block sizes, without decoding) beside the
  decoder, so the file must end exactly at the end of a frame; the decoder checks a frame's checksum
  when it has one; skippable frames are skipped. python-zstandard decodes, in a child process for a
  large local file (:mod:`shardclaim.dataset.zstd_child`), else in this one; with
  ``SHARDCLAIM_ZSTD=process``, a ``zstd`` process for a local file where the executable is on PATH: the
  same files are accepted and refused every way (:mod:`shardclaim.dataset.zstd`).

gzip is inflated by ISA-L (python-isal) where it is installed, by zlib otherwise; gzip, bz2 and xz are
decompressed in a background thread a few 8 MiB blocks ahead of the builder (:class:`_ReadAhead`).

Zero bytes between or after gzip, bz2 and xz streams are padding (as gzip(1) and xz(1) accept); any other
byte after a stream must start another stream. A file with no stream at all is refused.
"""

from __future__ import annotations

import bz2
import lzma
import queue
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any

from shardclaim.dataset.zstd import READ_SIZE, Decoded, ZstdProcessReader, ZstdReader, zstd_decoder
from shardclaim.dataset.zstd_child import ZstdChildReader
from shardclaim.dataset.zstd_frames import truncated
from shardclaim.errors import CompressedStreamError

__all__ = ["open_decompressed"]


def open_decompressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A reader of the decompressed bytes of ``raw`` (which it closes) that raises
    :class:`CompressedStreamError` rather than ending early."""
    if compression == "zstd":
        # Not read ahead in a thread: python-zstandard wants the GIL back after every call, so a
        # read-ahead thread made builds slower (1.31x zstd -dc's time against 1.24x). A large local file
        # is decoded in a child process instead (see shardclaim.dataset.zstd_child).
        try:
            decoder, executable = zstd_decoder(raw)
        except BaseException:
            raw.close()
            raise
        if decoder == "process":
            try:
                return ZstdProcessReader(raw, executable)  # type: ignore[arg-type, return-value]
            except OSError:  # it cannot be started (a broken install, no process left): decode here
                pass
        if decoder == "child":
            try:
                return ZstdChildReader(raw)  # type: ignore[arg-type, return-value]
            except OSError:  # no process left, no memory to share: decode here
                pass
        return ZstdReader(raw)  # type: ignore[return-value]  # the read()/readinto() subset
    factories: dict[str, Callable[[], Any]] = {
        "gzip": _gzip_decoder_factory(),
        "bz2": bz2.BZ2Decompressor,
        "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO),
    }
    return _ReadAhead(  # type: ignore[return-value]  # the read()/readinto() subset
        _StreamReader(raw, compression, factories[compression])
    )


def _gzip_decoder_factory() -> Callable[[], Any]:
    """ISA-L's inflate where python-isal is installed (about 3x zlib's speed, the same API, trailers
    checked the same way), else zlib's."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency; a platform without a wheel falls back
        return lambda: zlib.decompressobj(wbits=31)
    return lambda: isal_zlib.decompressobj(wbits=31)


def _decoder_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (zlib.error, OSError, lzma.LZMAError, EOFError)
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover
        return errors
    return (*errors, getattr(isal_zlib, "error"))  # noqa: B009 - typed as an instance in its stubs


class _Reader(Decoded):
    """The part of a binary file the builder uses: ``readinto``, ``read``, a context manager."""

    _raw: Any

    kind = ""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def readinto(self, buffer: memoryview | bytearray) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self._raw.close()


class _ReadAhead(_Reader):
    """Decompresses in a background thread, a few blocks ahead of the reader, so that inflating overlaps
    with the builder's own work (the decoders release the GIL). Errors reach the reader in order, at
    the point of the stream where they happened."""

    _BLOCK = 8 << 20
    _AHEAD = 2

    def __init__(self, inner: _Reader) -> None:
        super().__init__(inner)  # type: ignore[arg-type]  # closed through close()
        self.kind = inner.kind
        self._ready: queue.Queue[tuple[bytearray | None, int, BaseException | None]] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(self._AHEAD + 1):
            self._free.put(bytearray(self._BLOCK))
        self._stopping = threading.Event()
        self._current: bytearray | None = None
        self._pos = self._len = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="shardclaim-inflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        inner: _Reader = self._raw
        try:
            while not self._stopping.is_set():
                try:
                    buf = self._free.get(timeout=0.2)
                except queue.Empty:
                    continue
                n = 0
                with memoryview(buf) as view:
                    while n < len(buf) and (got := inner.readinto(view[n:])):
                        n += got
                self._ready.put((buf, n, None))
                if n == 0:
                    return
        except BaseException as e:  # handed to the reader, raised there
            self._ready.put((None, 0, e))

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._current is None or self._pos == self._len:
            if self._done:
                return 0
            if self._current is not None:
                self._free.put(self._current)
                self._current = None
            buf, n, error = self._ready.get()
            if error is not None:
                self._done = True
                raise error
            if n == 0:
                self._done = True
                return 0
            self._current, self._pos, self._len = buf, 0, n
        assert self._current is not None
        take = min(len(buffer), self._len - self._pos)
        buffer[:take] = self._current[self._pos : self._pos + take]
        self._pos += take
        return take

    def close(self) -> None:
        self._stopping.set()  # it finishes the block it is on (the queue of ready blocks never blocks it)
        self._thread.join()
        self._raw.close()


class _StreamReader(_Reader):
    """gzip (zlib), bz2 and xz: one decompressor per stream, output bounded by the caller's buffer."""

    def __init__(self, raw: IO[bytes], kind: str, factory: Callable[[], Any]) -> None:
        super().__init__(raw)
        self.kind = kind
        self._factory = factory
        self._decoder: Any = None  # None between streams
        self._pending = b""  # compressed bytes not yet given to a decoder
        self._streams = 0
        self._zlib = kind == "gzip"  # zlib (and isal) keep what they did not take in unconsumed_tail
        self._errors = _decoder_errors()

    def readinto(self, buffer: memoryview | bytearray) -> int:
        want = len(buffer)
        while True:
            if self._decoder is not None and self._decoder.eof:  # all of the stream's output is out
                self._pending = self._decoder.unused_data + self._pending
                self._decoder = None
            if self._decoder is None and not self._next_stream():
                return 0
            out = self._decode(want)
            if out:
                buffer[: len(out)] = out
                return len(out)
            if self._decoder.eof:
                continue
            if self._zlib or self._decoder.needs_input:
                more = self._raw.read(READ_SIZE)
                if not more:
                    raise truncated(self.kind)
                self._pending = self._pending + more if self._pending else more

    def _decode(self, want: int) -> bytes:
        try:
            if self._zlib:
                out: bytes = self._decoder.decompress(self._pending, want)
                self._pending = self._decoder.unconsumed_tail
                return out
            out = self._decoder.decompress(self._pending, want)
            self._pending = b""
            return out
        except self._errors as e:
            raise CompressedStreamError(self.kind, f"corrupt {self.kind} data ({e})", truncated=False) from e

    def _next_stream(self) -> bool:
        """Start the next stream, skipping zero padding; False at a clean end of the file."""
        while True:
            self._pending = self._pending.lstrip(b"\0")
            if self._pending:
                self._decoder = self._factory()
                self._streams += 1
                return True
            self._pending = self._raw.read(READ_SIZE)
            if not self._pending:
                if self._streams == 0:
                    raise CompressedStreamError(self.kind, f"no {self.kind} data in the file", truncated=True)
                return False
