"""Checking that every input line is JSON, inline or in a second process.

simdjson validates about 3x faster than ``orjson.loads`` on these records (850 vs 255 MB/s with 10 KB
lines): it checks the whole document without building Python objects. orjson only words the error.
When every input is a local file, a background process re-reads the input (from the page cache) and
validates it on the second core while the builder writes; the build is published only once that
process has found every line valid.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import orjson
import simdjson
from fsspec.implementations.local import LocalFileSystem

from shardclaim._input import is_blank, lines_of, open_inputs

__all__ = ["BackgroundValidator", "Invalid", "make_validator", "why_invalid"]

#: (input name, line number, reason)
Invalid = tuple[str, int, str]
INVALID_ERRORS = (ValueError, UnicodeDecodeError)


def make_validator() -> Callable[[Any], object]:
    """A function that raises one of :data:`INVALID_ERRORS` for a line that is not JSON."""
    parse: Callable[[Any], object] = simdjson.Parser().parse
    return parse


def why_invalid(line: bytes | memoryview) -> str:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return str(e)
    return "rejected by the validator"


def first_invalid(input_file: str | Sequence[str]) -> Invalid | None:
    """The first line of the inputs that is not JSON, or None. Runs in the background process."""
    parse = make_validator()
    for name, lineno, line in lines_of(open_inputs(input_file), None):
        if is_blank(line):
            continue
        try:
            parse(line)
        except INVALID_ERRORS:
            return name, lineno, why_invalid(line)
    return None


class BackgroundValidator:
    """Validates the inputs in a second process; ``problem()`` polls, ``result()`` waits."""

    def __init__(self, input_file: str | Sequence[str]) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        self._future: Future[Invalid | None] = self._pool.submit(first_invalid, input_file)

    @staticmethod
    def suits(files: list[Any], skip_invalid: bool) -> bool:
        """Worth it when there is a second core, the inputs are local and no line is to be skipped."""
        return (
            not skip_invalid
            and (os.cpu_count() or 1) > 1
            and all(isinstance(f.fs, LocalFileSystem) for f in files)
        )

    def problem(self) -> Invalid | None:
        """The invalid line found so far, without waiting (None while still running)."""
        return self._future.result() if self._future.done() else None

    def result(self) -> Invalid | None:
        return self._future.result()

    def close(self) -> None:
        self._future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
