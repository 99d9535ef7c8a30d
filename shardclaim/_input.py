"""Reading the builder's input: local paths or fsspec URLs, globs and lists, compressed by suffix,
as one stream of lines with file names and line numbers for error messages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import fsspec

from shardclaim.errors import ShardclaimError

__all__ = ["InputError", "is_blank", "lines_of", "names_of", "open_inputs", "size_of"]

_BLOCK = 8 << 20


class InputError(ShardclaimError, ValueError):
    """The input cannot be built into a dataset: a malformed line (with file and line), no records..."""


def open_inputs(input_file: str | Sequence[str]) -> list[Any]:
    paths = [input_file] if isinstance(input_file, str) else list(input_file)
    if not paths:
        raise InputError("no input files given")
    files: list[Any] = []
    for path in paths:
        matched = fsspec.open_files(path, mode="rb", compression="infer", expand=False)
        if any(c in path for c in "*?["):
            matched = fsspec.open_files(path, mode="rb", compression="infer")
            if not matched:
                raise InputError(f"no input file matches {path!r}")
        files.extend(matched)
    return files


def size_of(f: Any) -> int:
    try:
        return int(f.fs.size(f.path))
    except (OSError, TypeError, ValueError):
        return 0


def lines_of(files: list[Any], progress: Any) -> Iterator[tuple[str, int, bytes]]:
    """Yield (input name, line number, line with its newline) for every line of every input."""
    for f in files:
        name = f.full_name if hasattr(f, "full_name") else str(f.path)
        lineno = 0
        try:
            handle = f.open()
        except FileNotFoundError:
            raise InputError(f"input file not found: {name}") from None
        with handle:
            carry = b""
            while True:
                block = handle.read(_BLOCK)
                if not block:
                    break
                if progress is not None:
                    progress.update(len(block))
                if carry:
                    block = carry + block
                end = block.rfind(b"\n") + 1
                carry = block[end:]
                start = 0
                while start < end:
                    nl = block.index(b"\n", start) + 1
                    lineno += 1
                    yield name, lineno, block[start:nl]
                    start = nl
            if carry:
                lineno += 1
                yield name, lineno, carry + b"\n"


def is_blank(line: bytes) -> bool:
    return line[0] in b" \t\r\n" and not line.strip()


def names_of(files: list[Any]) -> str:
    return ", ".join(str(getattr(f, "full_name", f.path)) for f in files)
