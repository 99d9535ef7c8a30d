"""The zstd frame walker: where a file's zstd frames end, judged by their headers and block sizes alone.

Every zstd decoder of :mod:`shardclaim.dataset.zstd` accepts a file only if this walk ends at the end of
a frame, so all of them accept and refuse exactly the same files.
"""

from __future__ import annotations

import os

from shardclaim.errors import CompressedStreamError

__all__ = ["ZstdFrames", "truncated"]


def truncated(kind: str) -> CompressedStreamError:
    return CompressedStreamError(
        kind, f"the {kind} data ends before its end-of-stream marker: the file is truncated", truncated=True
    )


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
