"""What a record is: the one rule the validator and the reader share.

A record is one line holding one JSON value (RFC 8259) in UTF-8, and :func:`loads_exact` is the rule
itself. It is orjson's parser with one widening: an integer outside 64 bits ([-2**63, 2**64-1]) is read
as a Python ``int`` of any size (up to 4,300 digits, Python's own bound), where orjson alone would turn
it into a float, losing digits, or refuse it. Everything else orjson refuses is not a record: a byte order
mark (the builder drops one at the very start of an input file, where it is an encoding marker, so only
a BOM elsewhere reaches here), NaN and Infinity, numbers beyond a double's range, lone surrogates,
invalid UTF-8, raw control characters in strings, anything after the value, more than 1,024 levels of
nesting. Blank lines (JSON whitespace only) are not records and are counted apart.

The fast paths must never disagree with the rule, and the tests hold them to it:

* the validator runs a fast check first, and a line it does not accept (also every integer beyond 64
  bits) is decided by :func:`loads_exact`. The check is ``shardclaim._valid`` (``shardclaim/_valid.c``,
  an optional extension built where a C compiler is), which accepts only strict JSON away from the
  rule's edges and walks a whole block of lines in one call; else simdjson, once per line (a line
  starting with a BOM, which simdjson skips, is checked apart). On the benchmark's 470-byte records the C
  walk checks 1.26-1.41x the lines per second of simdjson called from Python (bench/validate_speed.py),
  and a validator, with no Python code per line, 1.6-1.9 M lines/s per core (0.87 M with simdjson).
  ``SHARDCLAIM_SCAN=python`` rules the C out, as it does for :mod:`shardclaim.dataset.lineends`;
* the reader runs orjson alone where the master says no record holds an integer beyond 64 bits
  (``big_integers`` is 0), else :func:`record_reader` looks at each line as the validator did.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from shardclaim.errors import InvalidRecordError

try:
    from shardclaim._valid import first_unsure as _c_first_unsure
except ImportError:  # installed without a C compiler: simdjson, a line at a time
    _C_WALK: Callable[[Any, int, int], int] | None = None
else:
    _C_WALK = _c_first_unsure

__all__ = [
    "BOM",
    "FAST_ERRORS",
    "big_integers_in",
    "c_ruled_out",
    "c_walk",
    "fast_validator",
    "loads_exact",
    "record_reader",
]

BOM = b"\xef\xbb\xbf"
#: What simdjson raises for a line it refuses: ValueError (also UnicodeDecodeError) for bad JSON,
#: RuntimeError for integers beyond 64 bits and documents too deep. The rule then decides.
FAST_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError)
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1

# A string (skipped as it is) or a number token; only integers of 19 digits or more can be out of range.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?', re.DOTALL)
# Big integers travel through orjson as strings carrying this per-process mark.
_MARK = f"\ue000{uuid.uuid4().hex}:"
_MARK_BYTES = _MARK.encode()


def loads_exact(line: bytes | memoryview) -> Any:
    """The record on ``line`` (its newline may be there), with integers of any size; raises
    :class:`InvalidRecordError` if the line is not a record. The definition; slow next to orjson."""
    return _exact(line)[0]


def big_integers_in(line: bytes | memoryview) -> int:
    """How many integers beyond 64 bits the record on ``line`` holds; raises
    :class:`InvalidRecordError` if the line is not a record."""
    return _exact(line)[1]


def _exact(line: bytes | memoryview) -> tuple[Any, int]:
    data = bytes(line)
    if data.startswith(BOM):
        raise InvalidRecordError("a byte order mark (U+FEFF) before the value")
    marked, count = _mark_big_integers(data)
    try:
        value = orjson.loads(marked)
    except orjson.JSONDecodeError as e:
        raise InvalidRecordError(str(e)) from None
    if count:
        value = _unmark(value, count)
    return value, count


def c_ruled_out() -> bool:
    """Whether ``SHARDCLAIM_SCAN`` is ``python`` (or ``numpy``): then neither C extension serves, this
    module's check nor :mod:`~shardclaim.dataset.lineends`'s walk. Read at each call (a block's worth
    of work), so no choice is frozen at import."""
    return os.environ.get("SHARDCLAIM_SCAN", "").lower() in {"python", "numpy"}


def c_walk() -> Callable[[Any, int, int], int] | None:
    """``walk(data, a, b)``: where the first line of ``data[a:b]`` that is neither blank nor certainly a
    record begins, or ``b`` (``shardclaim._valid.first_unsure``); None where it was not built or is
    ruled out (:func:`c_ruled_out`)."""
    return None if c_ruled_out() else _C_WALK


def _fast_accepts() -> Callable[[Any], bool]:
    """``accepts(line)``: True when the fast check takes a line that is not blank as a record as it is
    (no integer beyond 64 bits); False leaves it to the rule. The C walk, else simdjson."""
    walk = c_walk()
    if walk is not None:

        def accepts_c(line: Any) -> bool:
            n = len(line)  # (a line opening with whitespace goes to the rule: the walk skips blank ones)
            return bool(n) and line[0] not in b" \t\r\n" and walk(line, 0, n) == n

        return accepts_c
    import simdjson

    parse = simdjson.Parser().parse

    def accepts(line: Any) -> bool:
        if line[0] == 0xEF and bytes(line[:3]) == BOM:
            return False  # simdjson skips one; the rule does not
        try:
            parse(line)
        except FAST_ERRORS:
            return False
        return True

    return accepts


def fast_validator() -> Callable[[Any], int]:
    """``check(line) -> 0 | 1`` for a line that is not blank: 1 when the record holds an integer beyond
    64 bits; raises :class:`InvalidRecordError` when the line is not a record. The fast check first
    (see above), the rule when it does not accept the line."""
    accepts = _fast_accepts()

    def check(line: Any) -> int:
        return 0 if accepts(line) else 1 if big_integers_in(line) else 0

    return check


def record_reader(master: dict[str, Any]) -> Callable[[bytes], Any]:
    """The parser for the records of a dataset: orjson where the build counted no integer beyond 64
    bits (or a validated build from before the count, whose validator refused them), else one that looks
    at every line first, as the validator does, and reads those with big integers exactly."""
    if master.get("validated") is True and not master.get("big_integers"):
        return orjson.loads
    accepts = _fast_accepts()

    def loads(line: bytes) -> Any:
        return orjson.loads(line) if accepts(line) else loads_exact(line)

    return loads


def _mark_big_integers(data: bytes) -> tuple[bytes, int]:
    """``data`` with every integer beyond 64 bits (outside strings) turned into a marked string."""
    count = 0

    def mark(m: re.Match[bytes]) -> bytes:
        nonlocal count
        token = m.group(0)
        if token[0] == 0x22 or len(token) < 19 or b"." in token or b"e" in token or b"E" in token:
            return token
        if len(token) <= 21 and _I64_MIN <= int(token) <= _U64_MAX:  # else too long for 64 bits
            return token
        count += 1
        return b'"' + _MARK_BYTES + token + b'"'

    if len(data) < 19:
        return data, 0
    marked = _TOKEN.sub(mark, data)
    return marked, count


def _unmark(value: Any, count: int) -> Any:
    """Turn the marked strings back into ints, without recursion (nesting may be 1,024 deep). Every
    mark must come back as a value: one found as an object key was a number used as a key."""
    restored = 0

    def convert(v: Any) -> Any:
        nonlocal restored
        if isinstance(v, str) and v.startswith(_MARK):
            restored += 1
            try:
                return int(v[len(_MARK) :])
            except ValueError as e:  # more digits than Python converts
                raise InvalidRecordError(f"integer too long ({e})") from None
        return v

    root = [value]
    stack: list[list[Any] | dict[str, Any]] = [root]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            for key, v in container.items():
                if key.startswith(_MARK):
                    raise InvalidRecordError("a number used as an object key")
                container[key] = convert(v)
                if isinstance(v, dict | list):
                    stack.append(v)
        else:
            for i, v in enumerate(container):
                container[i] = convert(v)
                if isinstance(v, dict | list):
                    stack.append(v)
    if restored != count:
        raise InvalidRecordError("a number used as an object key")
    return root[0]
