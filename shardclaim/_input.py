"""Reading the builder's input: local paths or fsspec URLs, globs and lists, compressed by suffix,
as one stream of lines with file names and line numbers for error messages."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from shardclaim._build_decompress import CompressedStreamError, open_decompressed
from shardclaim._localfs import COMPRESSIONS, LocalInput
from shardclaim.errors import ShardclaimError

__all__ = [
    "InputError",
    "blocks_of",
    "input_name",
    "input_names",
    "is_blank",
    "lines_of",
    "names_of",
    "open_inputs",
    "size_of",
]

_BLOCK = 8 << 20


class InputError(ShardclaimError, ValueError):
    """The input cannot be built into a dataset: a malformed line (with file and line), no records..."""


def open_inputs(input_file: str | Sequence[str]) -> list[Any]:
    """Each path, URL or glob in order: local paths as :class:`LocalInput` (without importing
    fsspec), URLs as :class:`RemoteInput`."""
    paths = [input_file] if isinstance(input_file, str) else list(input_file)
    if not paths:
        raise InputError("no input files given")
    files: list[Any] = []
    for path in paths:
        matched: list[Any]
        pattern = any(c in path for c in "*?[")
        if "://" not in path:
            local = os.path.expanduser(path)
            if pattern:
                matched = [LocalInput(p) for p in sorted(glob.glob(local)) if os.path.isfile(p)]
            else:
                matched = [LocalInput(local)]
        else:
            import fsspec

            opened = fsspec.open_files(path, mode="rb", expand=pattern)
            matched = [RemoteInput(f.fs, f.path, f.full_name) for f in opened]
        if pattern and not matched:
            raise InputError(f"no input file matches {path!r}")
        files.extend(matched)
    return files


class RemoteInput:
    """One input behind an fsspec URL, read like :class:`LocalInput` (decompressed by suffix, checked
    to its end)."""

    def __init__(self, fs: Any, path: str, full_name: str) -> None:
        self.fs = fs
        self.path = path
        self.full_name = full_name
        self.compression = COMPRESSIONS.get(os.path.splitext(path)[1].lower())

    def open(self) -> IO[bytes]:
        raw = self.fs.open(self.path, "rb")
        return raw if self.compression is None else open_decompressed(raw, self.compression)


def size_of(f: Any) -> int:
    try:
        return int(f.fs.size(f.path))
    except (OSError, TypeError, ValueError):
        return 0


def blocks_of(files: list[Any], progress: Any) -> Iterator[tuple[int, str, bytes | bytearray, int, int]]:
    """Yield ``(input index, input name, data, start, end)`` where ``data[start:end]`` is whole lines.

    One 8 MiB buffer is read into again and again, so a block is only valid until the next one is
    asked for: copy whatever must outlive it. The line that straddles two reads is yielded on its own
    (a small copy), so the large blocks are never joined. A last line without a newline gets one.
    An input that cannot be read to its end (missing, truncated, corrupt) raises :class:`InputError`
    naming it.
    """
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    for index, f in enumerate(files):
        name = input_name(f)
        with _opened(f, name) as handle:
            readinto = getattr(handle, "readinto", None)
            carry = b""
            while True:
                data: bytes | bytearray
                try:
                    if readinto is not None:
                        n = readinto(view)
                        data = buf
                    else:
                        data = handle.read(_BLOCK)
                        n = len(data)
                except (OSError, ValueError, EOFError) as e:
                    raise _unreadable(name, e) from None
                if not n:
                    break
                if progress is not None:
                    progress.update(n)
                first = data.find(b"\n", 0, n) + 1
                if first == 0:  # no newline at all: the carried line goes on
                    carry += bytes(data[:n])
                    continue
                if carry:
                    joined = carry + bytes(data[:first])
                    yield index, name, joined, 0, len(joined)
                else:
                    first = 0
                end = data.rfind(b"\n", 0, n) + 1
                if end > first:
                    yield index, name, data, first, end
                carry = bytes(data[end:n])
            if carry:
                yield index, name, carry + b"\n", 0, len(carry) + 1


@contextmanager
def _opened(f: Any, name: str) -> Iterator[Any]:
    try:
        handle = f.open()
    except FileNotFoundError:
        raise InputError(f"input file not found: {name}") from None
    except (OSError, ValueError) as e:
        raise _unreadable(name, e) from None
    with handle:
        yield handle


def _unreadable(name: str, e: BaseException) -> InputError:
    if isinstance(e, CompressedStreamError):
        return InputError(f"{name}: {e.problem}")
    return InputError(f"{name}: cannot be read ({type(e).__name__}: {e})")


def lines_of(files: list[Any], progress: Any) -> Iterator[tuple[str, int, memoryview]]:
    """Every line of every input as ``(input name, line number, line with its newline)``.

    A line is a view into a reused buffer: valid until the next line is asked for.
    """
    current, lineno = -1, 0
    for index, name, data, start, end in blocks_of(files, progress):
        if index != current:
            current, lineno = index, 0
        view = memoryview(data)
        pos = start
        while pos < end:
            nl = data.index(b"\n", pos, end) + 1
            lineno += 1
            yield name, lineno, view[pos:nl]
            pos = nl
        view.release()


def is_blank(line: bytes | memoryview) -> bool:
    return line[0] in b" \t\r\n" and not bytes(line).strip()


def input_name(f: Any) -> str:
    """How an input is named in messages and in the master metadata."""
    return str(getattr(f, "full_name", f.path))


def input_names(files: list[Any]) -> list[str]:
    return [input_name(f) for f in files]


def names_of(files: list[Any]) -> str:
    return ", ".join(input_names(files))
