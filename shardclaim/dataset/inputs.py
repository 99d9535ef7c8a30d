"""Reading the builder's input: local paths or fsspec URLs, globs and lists, compressed by suffix,
as one stream of lines with file names and line numbers for error messages.

An input URL may carry credentials: a password (``http://user:secret@host/x``) or a signature in its
query (``?X-Goog-Signature=...``, ``?X-Amz-Signature=...``, ``?sig=...``). They are used to read the input
and never shown: an input is named everywhere (the master's ``inputs``, errors, logs) without its
userinfo, query and fragment, and the text of any error raised while reading it is scrubbed of them.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import unquote

from shardclaim.dataset.decompress import open_decompressed
from shardclaim.dataset.localfs import COMPRESSIONS, LocalInput
from shardclaim.dataset.records import BOM
from shardclaim.errors import CompressedStreamError, InputError

__all__ = [
    "blocks_of",
    "input_name",
    "input_names",
    "is_blank",
    "lines_of",
    "names_of",
    "open_inputs",
    "scrub",
    "secrets_of",
    "shown",
    "size_of",
]

_BLOCK = 8 << 20


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
            matched = _open_urls(path, pattern=pattern)
        if pattern and not matched:
            raise InputError(f"no input file matches {shown(path)!r}", shown(path))
        files.extend(matched)
    return files


def _open_urls(url: str, *, pattern: bool) -> list[Any]:
    import fsspec

    try:
        opened = fsspec.open_files(url, mode="rb", expand=pattern)
    except Exception as e:  # whatever the filesystem raises: its text may quote the secret
        why = scrub(f"{type(e).__name__}: {e}", url)
        raise InputError(f"{shown(url)}: cannot be opened ({why})", shown(url)) from None
    return [RemoteInput(f.fs, f.path, f.full_name, url) for f in opened]


class RemoteInput:
    """One input behind an fsspec URL, read like :class:`LocalInput` (decompressed by suffix, checked
    to its end). ``full_name`` is the URL without credentials; ``secrets`` what to scrub from errors."""

    def __init__(self, fs: Any, path: str, full_name: str, given: str = "") -> None:
        self.fs = fs
        self.path = path
        self.full_name = shown(full_name)
        self.secrets = secrets_of(full_name) + secrets_of(given) + secrets_of(path)
        self.compression = COMPRESSIONS.get(os.path.splitext(_without_query(path))[1].lower())

    def open(self) -> IO[bytes]:
        raw = self.fs.open(self.path, "rb")
        return raw if self.compression is None else open_decompressed(raw, self.compression)


def size_of(f: Any) -> int:
    try:
        return int(f.fs.size(f.path))
    except (OSError, TypeError, ValueError):
        return 0


def blocks_of(
    files: list[Any], progress: Any, *, buffers: int = 1
) -> Iterator[tuple[int, str, bytes | bytearray, int, int]]:
    """Yield ``(input index, input name, data, start, end)`` where ``data[start:end]`` is whole lines.

    ``buffers`` 8 MiB buffers are read into in turn (each filled whole: a block is an 8 MiB window of
    the input's bytes, less the line it shares with the next); a buffer is read into again only after
    ``buffers - 1`` other blocks of whole windows have been yielded. With one buffer a block is valid
    until the next one is asked for; with two, also while the block after it is yielded and used (see
    :func:`~shardclaim.dataset.deal.planned`). Copy whatever must outlive that. The line that
    straddles two reads is yielded on its own (a small copy), so the large blocks are never joined. A
    last line without a newline gets one.
    An input that cannot be read to its end (missing, truncated, corrupt) raises :class:`InputError`
    naming it.
    """
    ring = [bytearray(_BLOCK) for _ in range(buffers)]
    views = [memoryview(b) for b in ring]
    turn = 0
    for index, f in enumerate(files):
        name = input_name(f)
        with _opened(f, name) as handle:
            readinto = getattr(handle, "readinto", None)
            carry = b""
            begin = -1  # the first read: a BOM opening the file is an encoding marker, dropped
            while True:
                data: bytes | bytearray
                buf, view = ring[turn], views[turn]
                try:
                    data, n = _fill(handle, readinto, buf, view)
                except Exception as e:  # see _opened
                    raise _unreadable(f, name, e) from None
                if not n:
                    break
                if progress is not None:
                    progress.update(n)
                begin = 3 if begin < 0 and data[:3] == BOM else 0
                first = data.find(b"\n", begin, n) + 1
                if first == 0:  # no newline at all: the carried line goes on
                    carry += bytes(data[begin:n])
                    continue
                if carry:
                    joined = carry + bytes(data[:first])
                    yield index, name, joined, 0, len(joined)
                else:
                    first = begin
                end = data.rfind(b"\n", 0, n) + 1
                if end > first:  # the buffer is in a block now: the next read takes the next buffer
                    turn = (turn + 1) % buffers
                    yield index, name, data, first, end
                carry = bytes(data[end:n])
            if carry:
                yield index, name, carry + b"\n", 0, len(carry) + 1


def _fill(handle: Any, readinto: Any, buf: bytearray, view: memoryview) -> tuple[bytes | bytearray, int]:
    """Read a whole block (short only at the end of the input), so that the blocks, and with them the
    ``blocks`` strategy's cuts, depend on the input's bytes alone, never on how a reader splits them."""
    if readinto is None:
        parts = []
        size = 0
        while size < _BLOCK and (part := handle.read(_BLOCK - size)):
            parts.append(part)
            size += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data, len(data)
    n = 0
    while n < _BLOCK and (got := readinto(view[n:])):
        n += got
    return buf, n


@contextmanager
def _opened(f: Any, name: str) -> Iterator[Any]:
    try:
        handle = f.open()
    except FileNotFoundError:
        raise InputError(f"input file not found: {name}", name) from None
    except Exception as e:  # an HTTP or cloud client raises its own types
        raise _unreadable(f, name, e) from None
    with handle:
        yield handle


def _unreadable(f: Any, name: str, e: BaseException) -> InputError:
    if isinstance(e, CompressedStreamError):
        return InputError(f"{name}: {e.problem}", name)
    return InputError(f"{name}: cannot be read ({_scrub_all(f'{type(e).__name__}: {e}', f)})", name)


def _scrub_all(text: str, f: Any) -> str:
    for secret in sorted(getattr(f, "secrets", ()), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
    """JSON whitespace only (a form feed is not: such a line is invalid, not blank)."""
    return line[0] in b" \t\r\n" and not bytes(line).strip(b" \t\r\n")


def input_name(f: Any) -> str:
    """How an input is named in messages and in the master metadata."""
    return str(getattr(f, "full_name", f.path))


def input_names(files: list[Any]) -> list[str]:
    return [input_name(f) for f in files]


def names_of(files: list[Any]) -> str:
    return ", ".join(input_names(files))


# -- names without credentials ----------------------------------------------------------------------

_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")
_QUERY = re.compile(r"[?#].*?(?=::|$)")  # up to the next link of a chained fsspec URL


def shown(url: str) -> str:
    """``url`` as it may be recorded and printed: without userinfo, query and fragment (which carry
    passwords, signatures and tokens). A local path is returned as it is."""
    if "://" not in url:
        return url
    return _QUERY.sub("", _USERINFO.sub("", url))


def secrets_of(url: str) -> list[str]:
    """The parts of ``url`` that :func:`shown` drops, raw and percent-decoded, to scrub from error text
    (which may quote the URL in another form)."""
    if "://" not in url:
        return []
    found = []
    for m in _USERINFO.finditer(url):
        found += [m.group(0), *m.group(0)[:-1].split(":", 1)]  # user:password@, user, password
    for m in _QUERY.finditer(url):
        found += [
            m.group(0),
            *(value for _, _, value in (p.partition("=") for p in re.split("[?#&;]", m.group(0)))),
        ]
    found += [unquote(p) for p in found]
    return sorted({p for p in found if len(p) >= 4}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _without_query(path: str) -> str:
    return _QUERY.sub("", path) if "://" in path or "?" in path else path
