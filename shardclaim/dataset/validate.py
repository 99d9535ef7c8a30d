"""Checking that every input line is a record (see :mod:`shardclaim.dataset.records`): a run of lines
inline, or one validator's share of a local input (:mod:`shardclaim.dataset.background` runs those).

The fast check (``shardclaim._valid``'s C walk, else simdjson) builds no Python object; a line it does
not accept goes to the rule, which decides and words the error. A validator maps its input and hands
the C walk 8 MiB of whole lines a call: nothing runs per line in the interpreter, and no byte is copied
(reading cost 0.17-0.19 s of system time per GiB, copying out of the page cache); where a file cannot be
mapped, the range is read in 8 MiB blocks. simdjson, the fallback, is called once a line.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

from shardclaim.dataset.inputs import is_blank, lines_of, open_inputs
from shardclaim.dataset.records import BOM, FAST_ERRORS, big_integers_in, c_walk, fast_validator
from shardclaim.errors import InvalidRecordError

__all__ = ["Invalid", "Share", "check_lines", "check_range", "check_whole"]

#: (input name, line number, reason)
Invalid = tuple[str, int, str]
#: (byte offset of the first bad line, its problem) or None; integers beyond 64 bits in good lines
Share = tuple[tuple[int, Invalid] | None, int]
_READ = 8 << 20  # a validator's step: bytes read at a time, or walked at a time in a mapped file
_MAP = True  # map the input where possible (tests turn it off to exercise the reading path)


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


def check_whole(input_file: str, name: str) -> Share:
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


def check_range(path: str, name: str, start: int, end: int) -> Share:
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
    """``check_range`` with the C walk: the lines that begin in [start, end), walked in steps of about
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
    limit = min(end, size)  # the lines that begin before it
    big = 0
    dropped = pos - pos % mmap.PAGESIZE
    i = pos
    while i < limit:
        if os.fstat(fd).st_size < size:
            break
        if limit - i <= _READ:  # the last step: to the end of the line holding the range's last byte
            stop = m.find(b"\n", limit - 1) + 1 or size
        else:  # the whole lines of the next _READ bytes, or the one longer line that starts at i
            stop = m.rfind(b"\n", i, i + _READ) + 1 or m.find(b"\n", i + _READ) + 1 or size
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
