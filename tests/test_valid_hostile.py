"""A hostile pass over the C line check (``shardclaim._valid``) and the validator built on it.

The promises held here: the C check never accepts a line the rule (``records.big_integers_in``)
refuses, nor one holding an integer beyond 64 bits (exhaustive byte-level UTF-8 and escape boundaries,
a product of number grammars, nesting around both limits, every byte at every token gap, a grammar
fuzzer with byte mutations, every sub-range of a line); nothing outside the given range is read (guard
pages on both sides, random lines); huge lines and absurd arguments fail cleanly; ``_walk_range`` finds
what a line-by-line pass finds with any block size and any cut of the file into ranges; and a validated
build gives the same chunks, the same first error and the same ``big_integers`` with and without the C
check, inline and with background validators, and never publishes an input changed while it was read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from shardclaim import create_sharded_dataset
from shardclaim.dataset import background, records, validate
from shardclaim.dataset.inputs import open_inputs
from shardclaim.errors import InputError, InvalidRecordError

_valid = pytest.importorskip("shardclaim._valid", reason="shardclaim._valid is not built (no C compiler?)")
first_unsure: Callable[[Any, int, int], int] = _valid.first_unsure

BOM = b"\xef\xbb\xbf"
BLANK = b" \t\r\n"


# --- helpers ---------------------------------------------------------------------------------------------


def rule_ok(line: bytes) -> bool:
    """The rule accepts the line and counts no integer beyond 64 bits in it."""
    try:
        return records.big_integers_in(line) == 0
    except InvalidRecordError:
        return False


def c_verdicts(lines: list[bytes]) -> list[bool]:
    """The C verdict on each line (no newline in any), from one walk over them all joined."""
    data = b"\n".join(lines) + b"\n"
    starts, pos = {}, 0
    for i, line in enumerate(lines):
        starts[pos] = i
        pos += len(line) + 1
    ok = [True] * len(lines)
    pos = 0
    while (pos := first_unsure(data, pos, len(data))) < len(data):
        ok[starts[pos]] = False
        pos = data.index(b"\n", pos) + 1
    return ok


def assert_never_lenient(lines: Iterable[bytes]) -> tuple[int, int]:
    """Every line the C check accepts (blank ones aside) is accepted by the rule with no big integer.
    Returns (accepted, refused) among the non-blank lines."""
    lines = [line for line in lines if b"\n" not in line]
    accepted = refused = 0
    for line, ok in zip(lines, c_verdicts(lines), strict=True):
        if not line.strip(b" \t\r"):
            assert ok, line  # blank: skipped, as the validator does
            continue
        if not ok:
            refused += 1
            continue
        accepted += 1
        assert rule_ok(line), f"C accepted what the rule refuses or counts: {line[:300]!r}"
    return accepted, refused


# --- 1. the C check against the rule ---------------------------------------------------------------------

# Bytes either side of every boundary a UTF-8 decoder or the string scan draws.
EDGE_BYTES = [
    0x00,
    0x1F,
    0x20,
    0x22,
    0x5C,
    0x7F,
    0x80,
    0x8F,
    0x90,
    0x9F,
    0xA0,
    0xBF,
    0xC0,
    0xC1,
    0xC2,
    0xDF,
    0xE0,
    0xE1,
    0xEC,
    0xED,
    0xEE,
    0xEF,
    0xF0,
    0xF1,
    0xF3,
    0xF4,
    0xF5,
    0xF7,
    0xF8,
    0xFE,
    0xFF,
]


def _utf8_cases() -> list[bytes]:
    seqs: list[bytes] = []
    for a in range(256):  # every pair of bytes
        for b in range(256):
            seqs.append(bytes([a, b]))
    for a in range(0xE0, 0x100):  # every three-byte lead and second byte, third at the edges
        for b in range(256):
            for c in (0x00, 0x22, 0x5C, 0x7F, 0x80, 0xBF, 0xC0, 0xFF):
                seqs.append(bytes([a, b, c]))
    for a in range(0xF0, 0x100):  # four-byte sequences: every edge combination
        for b in EDGE_BYTES:
            for c in (0x7F, 0x80, 0xBF, 0xC0):
                for d in (0x7F, 0x80, 0xBF, 0xC0):
                    seqs.append(bytes([a, b, c, d]))
    for a in range(0xF0, 0xF5):
        for b in range(256):
            seqs.append(bytes([a, b, 0x80, 0x80]))
    return [s for s in seqs if 0x0A not in s]


def test_utf8_at_every_boundary_inside_a_string() -> None:
    seqs = _utf8_cases()
    # closed strings, in an object and in an array; a string cut by the end of the line
    lines = [b'"' + s + b'"' for s in seqs]
    lines += [b'{"k":"x' + s + b'y"}' for s in seqs[::7]]
    lines += [b'["abcdefghijklmnopqrstuvwxyz' + s + b'"]' for s in seqs[::5]]  # after the 16-byte step
    lines += [b'"' + s for s in seqs[::3]]
    accepted, refused = assert_never_lenient(lines)
    # and it is not merely refusing everything: each valid sequence with no quote, backslash or control
    # byte is accepted (strict UTF-8 by Python's decoder)
    for s in seqs:
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not any(c in text for c in '"\\') and all(ord(c) >= 0x20 for c in text):
            assert first_unsure(b'"' + s + b'"\n', 0, len(s) + 3) == len(s) + 3, s
    assert accepted > 10_000
    assert refused > 50_000


HEX_EDGES = "0123456789abcdefABCDEF/:@G`g"  # and the bytes either side of each hex digit range


def _hex(v: int, rnd: random.Random) -> str:
    return "".join(c.upper() if rnd.random() < 0.5 else c for c in f"{v:04x}")


def test_escapes_and_surrogates() -> None:
    rnd = random.Random(11)
    lines = [b'"\\' + bytes([c]) + b'"' for c in range(256) if c != 0x0A]  # every byte after a backslash
    lines += [b'"\\' + bytes([c]) + b'x"' for c in range(256) if c != 0x0A]
    # every character in every position of a \u escape
    for pos in range(4):
        for c in HEX_EDGES + '\x00\x7f\xff"\\ ':
            digits = list("00e9")
            digits[pos] = c
            lines.append(('"\\u' + "".join(digits) + '"').encode("latin-1"))
    points = [
        0x0000,
        0x001F,
        0x0020,
        0x007F,
        0xD7FF,
        0xD800,
        0xD801,
        0xDABC,
        0xDBFF,
        0xDC00,
        0xDC01,
        0xDEAD,
        0xDFFF,
        0xE000,
        0xFEFF,
        0xFFFE,
        0xFFFF,
    ]
    tails = ["", '"', "\\", "\\u", "\\u0", "\\ud", "\\udc0", "\\n", "x", "\\\\udc00", "\\/"]
    for first in points:
        for second in points:
            for _ in range(3):  # letter cases
                esc = f"\\u{_hex(first, rnd)}\\u{_hex(second, rnd)}"
                lines.append(f'"{esc}"'.encode())
                lines.append(f'["{esc}x",1]'.encode())
                lines.append(f'{{"{esc}":0}}'.encode())
        for tail in tails:
            lines.append(f'"\\u{_hex(first, rnd)}{tail}"'.encode())
            lines.append(f'"\\u{_hex(first, rnd)}{tail}'.encode())  # the line ends inside the string
    # the low surrogate that completes a pair, cut off by the end of the line at every byte
    for cut in range(1, 14):
        lines.append(b'"\\ud83d\\ude00"'[:cut])
    accepted, refused = assert_never_lenient(lines)
    assert accepted > 1000
    assert refused > 1000
    for good in (b'"\\ud83d\\ude00"', b'"\\uD83D\\uDE00"', b'"\\uDbFf\\uDfFf"', b'"\\u0000"', b'"\\/"'):
        assert first_unsure(good, 0, len(good)) == len(good), good


SIGNS = ["", "-", "+", "--"]
INTS = [
    "0",
    "00",
    "01",
    "-",
    "1",
    "7",
    "10",
    "123456789012345678",
    "999999999999999999",
    "100000000000000000",
    "1000000000000000000",
    "9223372036854775807",
    "9223372036854775808",
    "9999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "1" + "0" * 300,
    "1" + "0" * 301,
    "",
]
FRACS = [
    "",
    ".",
    ".0",
    ".5",
    ".00000",
    ".000001",
    "." + "0" * 299 + "1",
    "." + "0" * 300 + "1",
    ".1e",
    "..5",
    "." + "9" * 40,
]
EXPS = [
    "",
    "e",
    "E",
    "e+",
    "e-",
    "e0",
    "E5",
    "e+5",
    "e-5",
    "e005",
    "e-0005",
    "e" + "0" * 40 + "7",
    "e299",
    "e300",
    "e301",
    "e-299",
    "e-300",
    "e-301",
    "e308",
    "e309",
    "e-307",
    "e-324",
    "e-325",
    "e999",
    "e-999",
    "e1000",
    "e+0300",
    "e--1",
    "e+-1",
    "e1.5",
    "ee1",
]


def test_a_product_of_number_grammars() -> None:
    numbers = [s + i + f + e for s in SIGNS for i in INTS for f in FRACS for e in EXPS]
    numbers += [
        ".5",
        "-.5",
        "1.e5",
        "0x10",
        "1_000",
        "Infinity",
        "-Infinity",
        "NaN",
        "-NaN",
        "infinity",
        "1e+",
        "-0",
        "-0.0",
        "-0e-0",
        "0e0",
        "2.2250738585072014e-308",
        "4.9e-324",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
    ]
    lines = []
    for n in numbers:
        b = n.encode()
        lines += [b, b"[" + b + b"]", b'{"n":' + b + b"}", b"[" + b + b"," + b + b"]", b" " + b + b"\r"]
    accepted, refused = assert_never_lenient(lines)
    assert accepted > 10_000
    assert refused > 50_000


def test_number_magnitudes_swept_across_both_edges_of_the_c_range() -> None:
    """The C decides the magnitude from digit counts and the exponent: sweep every layout of the
    mantissa (integer digits, zeros after the point) with exponents that put it on either side of the
    edges, and past the double's own range."""
    lines = []
    for int_digits in [1, 2, 3, 17, 18, 19, 20, 40, 300, 301, 600]:
        for frac_zeros in [None, 0, 1, 5, 18, 40, 299, 300]:
            whole = "9" * int_digits if frac_zeros is None or int_digits > 1 else "0"
            frac = "" if frac_zeros is None else "." + "0" * frac_zeros + "9"
            base = whole + frac
            for edge in (300, -300, 308, -308, 324, -324, 0):
                for delta in range(-4, 5):
                    exp = edge + delta - (int_digits - 1 if whole != "0" else -(frac_zeros or 0) - 1)
                    if abs(exp) > 999:
                        continue
                    for sign in ("", "-"):
                        lines.append(f"[{sign}{base}e{exp}]".encode())
                        lines.append(f"[{sign}{base}E{exp:+05d}]".encode())
    accepted, refused = assert_never_lenient(lines)
    assert accepted > 1000
    assert refused > 1000


def _nest(depth: int, rnd: random.Random, inner: str) -> str:
    opens = [rnd.choice("[{") for _ in range(depth)]
    out = "".join("[" if o == "[" else '{"k":' for o in opens) + inner
    return out + "".join("]" if o == "[" else "}" for o in reversed(opens))


def test_nesting_around_the_c_limit_and_the_rule_s() -> None:
    rnd = random.Random(5)
    lines = []
    for depth in list(range(995, 1006)) + list(range(1020, 1030)):
        for inner in ["", "1", "[]", "{}", '"x"', "[1,2]", '{"a":[]}', "[", "]"]:
            lines.append(_nest(depth, rnd, inner).encode())
            lines.append(("[" * depth + inner + "]" * depth).encode())
            lines.append(('{"a":' * depth + (inner or "0") + "}" * depth).encode())
            lines.append(("[" * depth + inner + "]" * (depth - 1)).encode())  # one left open
            lines.append(("[" * depth + inner + "]" * (depth + 1)).encode())  # one closed too many
            lines.append((" [\t" * depth + inner + " ]\r" * depth).encode())
    accepted, _ = assert_never_lenient(lines)
    assert accepted > 50
    assert first_unsure(b"[" * 1000 + b"]" * 1000, 0, 2000) == 2000
    for depth in (1001, 1024, 1025, 100_000):
        line = b"[" * depth + b"]" * depth
        assert first_unsure(line, 0, len(line)) == 0


def test_every_byte_in_every_gap_of_a_record() -> None:
    """Form feed, vertical tab, NUL, a BOM, a stray CR... inserted between any two bytes of records."""
    templates = [b'{"a":[1,-2.5e3,"x\\u00e9",true,false,null],"b":{}}', b'[0,10,[],{},""]', b'"s"', b"123"]
    inserts = [bytes([c]) for c in range(256) if c != 0x0A] + [BOM, b"\\", b"\\u", b"\xc3", b"\xed\xa0\x80"]
    lines = []
    for t in templates:
        for at in range(len(t) + 1):
            for ins in inserts:
                lines.append(t[:at] + ins + t[at:])
            lines.append(t[:at] + t[at + 1 :])  # each byte left out
            lines.append(t[:at])  # cut short
    accepted, refused = assert_never_lenient(lines)
    assert accepted > 1000
    assert refused > 10_000
    for line in (b"{}\r", b"\r{}", b" \t[1,\r2]\t ", b"\x0c", b"{}\x0c", b"{}\x0b", b"\x00", BOM + b"{}"):
        assert rule_ok(line) == (first_unsure(line, 0, len(line)) == len(line)), line


# A grammar with edge values, and byte-level mutations of what it makes.

_CHARS = [
    "a",
    "Z",
    " ",
    "/",
    "'",
    "é",
    "Ж",
    "\u07ff",
    "\u0800",
    "中",
    "\ufffd",
    "\ufeff",
    "\uffff",
    "\U00010000",
    "\U0010ffff",
    "\u2028",
    "\x7f",
    '\\"',
    "\\\\",
    "\\/",
    "\\b",
    "\\f",
    "\\n",
    "\\r",
    "\\t",
    "\\u00e9",
    "\\u0000",
    "\\uFFFF",
    "\\ud83d\\ude00",
    "\\uDBFF\\uDFFF",
    "\\ud800",
    "\\udc00",
    "\\udc00\\ud800",
    "q" * 15,
    "r" * 16,
    "s" * 33,
]
_RAW = [
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\x80",
    b"\xc2",
    b"\xe0\xa0",
    b"\xf0\x90\x80",
    b"\xed\x9f\xbf",
    b"\xee\x80\x80",
    b"\xf4\x8f\xbf\xbf",
]
_NUMS = [
    "0",
    "-0",
    "7",
    "-1",
    "999999999999999999",
    "-999999999999999999",
    "1000000000000000000",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1.5",
    "-0.0",
    "1e300",
    "1e-300",
    "1e301",
    "9.99e300",
    "0.0001e-296",
    "1E+005",
    "1e0000000000000007",
    "1.7976931348623157e308",
    "1e309",
    "4.9e-324",
    "0e999",
    "123456789012345678901234567890e-10",
]
_WS = ["", "", "", " ", "\t", "\r", " \r\t "]
_TOKENS = [
    BOM,
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"1e",
    b"-",
    b"tru",
    b"\\",
    b'"',
    b"0",
    b"e999",
    b".",
    b"]",
    b"}",
    b"[",
    b"{",
    b",",
    b":",
    b"\r",
    b"\x00",
    b"\x0c",
    b"1" * 19,
    b"\xed\xa0\x80",
    b"\xc0\xaf",
]
_BYTES = (
    b'"\\{}[],:. -+eE019tfnuU\x00\x01\x1f\x7f\x80\xbf\xc0\xc1\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff\t\r\x0b\x0c'
)


def _gen_string(rnd: random.Random) -> bytes:
    if rnd.random() < 0.1:
        return b'"' + b"".join(rnd.choice(_RAW) for _ in range(rnd.randint(1, 3))) + b'"'
    return ('"' + "".join(rnd.choice(_CHARS) for _ in range(rnd.choice([0, 1, 3, 9]))) + '"').encode()


def _gen(rnd: random.Random, depth: int = 0) -> bytes:
    def ws() -> bytes:
        return rnd.choice(_WS).encode() if rnd.random() < 0.3 else b""

    k = rnd.random() if depth < 6 else rnd.random() * 0.6
    if k < 0.2:
        return _gen_string(rnd)
    if k < 0.45:
        if rnd.random() < 0.5:
            return rnd.choice(_NUMS).encode()
        return (
            repr(rnd.uniform(-1e6, 1e6)).encode()
            if rnd.random() < 0.5
            else str(rnd.randint(-99, 10**18)).encode()
        )
    if k < 0.55:
        return rnd.choice([b"true", b"false", b"null"])
    if k < 0.8:
        items = [ws() + _gen(rnd, depth + 1) + ws() for _ in range(rnd.randint(0, 5))]
        return b"[" + b",".join(items) + ws() + b"]"
    members = [
        ws()
        + (_gen(rnd, 9) if rnd.random() < 0.1 else _gen_string(rnd))
        + ws()
        + b":"
        + ws()
        + _gen(rnd, depth + 1)
        + ws()
        for _ in range(rnd.randint(0, 4))
    ]
    return b"{" + b",".join(members) + ws() + b"}"


def _mutate(rnd: random.Random, line: bytes, other: bytes) -> bytes:
    b = bytearray(line)
    for _ in range(rnd.choice([1, 1, 2, 3])):
        op = rnd.random()
        at = rnd.randint(0, len(b))
        if op < 0.2 and b:
            del b[min(at, len(b) - 1)]
        elif op < 0.4:
            b.insert(at, rnd.choice(_BYTES))
        elif op < 0.55 and b:
            b[min(at, len(b) - 1)] = rnd.choice(_BYTES)
        elif op < 0.62:
            del b[at:]
        elif op < 0.7:
            b[at:at] = b[at : rnd.randint(at, len(b))]
        elif op < 0.8:
            b[at:at] = rnd.choice(_TOKENS)
        elif op < 0.87 and b:
            b[min(at, len(b) - 1)] ^= 1 << rnd.randint(0, 7)
        elif op < 0.94 and other:
            i = rnd.randint(0, len(other))
            b[at:at] = other[i : rnd.randint(i, min(len(other), i + 40))]
        else:
            brackets = [i for i, c in enumerate(b) if c in b"{}[]"]
            if brackets:
                b[rnd.choice(brackets)] = rnd.choice(b"{}[]")
    return bytes(b).replace(b"\n", b"")


@pytest.mark.parametrize("seed", range(8))
def test_grammar_fuzz_with_byte_mutations(seed: int) -> None:
    """~40,000 lines a seed; the batch walk, the line alone and the line without its newline agree."""
    rnd = random.Random(7000 + seed)
    lines: list[bytes] = []
    prev = b""
    for _ in range(3600):
        base = _gen(rnd)
        if rnd.random() < 0.03:
            base = _nest(rnd.choice([999, 1000, 1001]), rnd, "1").encode()
        lines.append(base)
        lines += [_mutate(rnd, base, prev) for _ in range(10)]
        prev = base
    accepted, refused = assert_never_lenient(lines)
    assert accepted > 5000
    assert refused > 5000
    for line, ok in zip(lines, c_verdicts(lines), strict=True):  # the batch walk, a line at a time
        assert (first_unsure(line, 0, len(line)) == len(line)) == ok, line  # the copy path
        assert (first_unsure(line + b"\n", 0, len(line) + 1) == len(line) + 1) == ok, line


def test_every_sub_range_of_a_line_is_walked_as_the_bytes_alone() -> None:
    """A range cut inside a UTF-8 sequence, an escape, a number or a literal ends a line there: the walk
    stops where a check of each line of ``data[a:b]`` alone stops, and never accepts a line the rule
    refuses. Also as a bytearray and as a memoryview slice."""
    data = b'{"\xc3\xa9\\ud83d\\ude00":[-12.5e3,true,null,"\xf0\x9f\x98\x80"]}\n[1,\r\n 2]\n\n"x"\n 7'
    alone: dict[bytes, bool] = {}
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            got = first_unsure(data, a, b)
            assert first_unsure(bytearray(data), a, b) == got
            assert first_unsure(memoryview(data)[a:b], 0, b - a) == got - a
            expect, pos = b, a
            for piece in data[a:b].split(b"\n"):
                if pos >= b:
                    break
                if piece.strip(b" \t\r"):
                    if piece not in alone:
                        alone[piece] = first_unsure(piece + b"\n", 0, len(piece) + 1) == len(piece) + 1
                        assert not alone[piece] or rule_ok(piece), piece
                    if not alone[piece]:
                        expect = pos
                        break
                pos += len(piece) + 1
            assert got == expect, (a, b)
    assert sum(alone.values()) > 20


# --- 2. memory safety ------------------------------------------------------------------------------------


EDGE_ENDINGS = [  # lines cut where a scan would want one more byte
    b"tru", b"t", b"fals", b"nul", b"1e", b"1.", b"-", b"0.5e+", b'"', b'"\\', b'"\\u',
    b'"\\u12', b'"\\ud83d', b'"\\ud83d\\', b'"\\ud83d\\ude0', b'"\xc3', b'"\xe4\xb8',
    b'"\xf0\x9f\x9f', b"[", b"{", b'{"a"', b'{"a":', b"[1,", b" ", b"\t\r", b"12345678901234567",
    b"[[[[", b'"abcdefghijklmnopqrstuvwxyz0123456789', b'["' + b"x" * 40, b"true", b"[1]",
    b'{"a":"\\ud83d\\ude00"}',
]  # fmt: skip


def test_guard_pages_on_both_sides_of_random_lines() -> None:
    """Random mutants end exactly at a page the process may not read (and begin just after one): a read
    past either end kills the child with SIGSEGV. The verdicts match those of ordinary buffers."""
    rnd = random.Random(99)
    lines: list[bytes] = []
    prev = b""
    while len(lines) < 3000:
        base = _gen(rnd)
        lines += [base, *(_mutate(rnd, base, prev) for _ in range(5))]
        prev = base
    lines += [b'"' + b"x" * n for n in range(40)] + [b'"' + b"y" * n + b"\\" for n in range(40)]
    # UTF-8 runs of every length up to a few 16-byte steps, closed or cut at the end (the SSSE3 step)
    for n in range(1, 24):
        for text in ("é" * n, "中" * n, "a😀" * n, "é中😀" * n):
            raw = text.encode()
            lines += [b'"' + raw, b'"' + raw[:-1], b'["' + raw + b'"]', b'{"k":"' + raw + b'"}']
    lines += EDGE_ENDINGS
    lines = [line for line in lines if len(line) < 3000]
    script = textwrap.dedent(
        """
        import ctypes, mmap, sys
        from shardclaim._valid import first_unsure
        page = mmap.PAGESIZE
        region = mmap.mmap(-1, 3 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(base, page, 0) == 0  # PROT_NONE before
        assert libc.mprotect(base + 2 * page, page, 0) == 0  # and after
        view = memoryview(region)
        out = []
        for hexline in sys.stdin.read().split():
            data = bytes.fromhex(hexline[1:])
            for tail in (b"", b"\\n"):
                line = data + tail
                at = 2 * page - len(line)  # ends at the guard page after
                view[at : 2 * page] = line
                out.append(first_unsure(view, at, 2 * page) - at)
                view[page : page + len(line)] = line  # begins after the guard page before
                out.append(first_unsure(view, page, page + len(line)) - page)
                view[page : 2 * page] = bytes(page)
        print(" ".join(map(str, out)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join("L" + line.hex() for line in lines),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = list(map(int, done.stdout.split()))
    expected = []
    for line in lines:
        for tail in (b"", b"\n"):
            whole = line + tail
            verdict = first_unsure(bytes(whole), 0, len(whole))
            expected += [verdict, verdict]
    assert got == expected


def test_huge_lines_and_deep_nesting() -> None:
    body = b"a\xc3\xa9\\n" * (20 << 20)  # 100 MiB of string
    line = b'["' + body + b'"]'
    n = len(line)
    assert first_unsure(line, 0, n) == n  # without a newline: the copy path
    assert first_unsure(line + b"\n", 0, n + 1) == n + 1
    assert first_unsure(memoryview(line)[1:], 0, n - 1) == 0  # '"...' alone is not a record
    bad = line[:-4] + b'\\ud800"]'  # a lone surrogate at the very end
    assert first_unsure(bad, 0, len(bad)) == 0
    del bad
    cut = bytearray(line[:-2])  # the closing quote missing
    assert first_unsure(cut, 0, len(cut)) == 0
    cut[-1:] = b"\x01"  # a control byte at the end
    assert first_unsure(cut + b'"]\n', 0, n + 1) == 0
    del cut
    del body, line
    deep = b"[" * 100_000 + b"]" * 100_000
    assert first_unsure(deep, 0, len(deep)) == 0
    assert first_unsure(b"{" * 100_000, 0, 100_000) == 0
    assert first_unsure(b'{"a":' * 100_000, 0, 500_000) == 0
    many = b"[1]\n" * 1_000_000 + b"[2"
    assert first_unsure(many, 0, len(many)) == len(many) - 2


class _Index:
    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


@pytest.mark.parametrize(
    ("a", "b", "error"),
    [
        (-1, 3, ValueError),
        (3, 2, ValueError),
        (0, 9, ValueError),
        (-(2**70), 0, (ValueError, OverflowError)),
        (0, 2**70, (ValueError, OverflowError)),
        (2**63, 2**63, (ValueError, OverflowError)),
        (0.0, 8, TypeError),
        ("0", 8, TypeError),
        (None, 8, TypeError),
    ],
)
def test_absurd_ranges_are_refused(a: Any, b: Any, error: Any) -> None:
    with pytest.raises(error):
        first_unsure(b"[1]\n[2]\n", a, b)


def test_odd_buffers() -> None:
    data = b"[1]\n{}\n"
    assert first_unsure(data, _Index(0), _Index(7)) == 7
    assert first_unsure(data, False, True) == 0  # "[" alone
    assert first_unsure(data, 7, 7) == 7
    assert first_unsure(data, 4, 7) == 7
    with pytest.raises(TypeError):
        first_unsure(data=data, a=4, b=7)  # type: ignore[call-arg]
    for args in [(), (data,), (data, 0), (data, 0, 7, 7)]:
        with pytest.raises(TypeError):
            first_unsure(*args)
    with pytest.raises(BufferError):
        first_unsure(memoryview(data)[::2], 0, 4)  # not contiguous
    for bad in ("[1]\n", None, 12, [b"[1]"]):
        with pytest.raises(TypeError):
            first_unsure(bad, 0, 1)
    import array

    words = array.array("I", [0x0A5D315B])  # b"[1]\n" on a little-endian machine
    if sys.byteorder == "little":
        assert first_unsure(words, 0, 4) == 4
        assert first_unsure(memoryview(words), 0, 4) == 4
    with pytest.raises(ValueError, match="need 0 <= a <= b"):
        first_unsure(words, 0, 5)  # the length is in bytes
    grow = bytearray(b"[1]\n")
    assert first_unsure(grow, 0, 4) == 4
    with pytest.raises(ValueError, match="need 0 <= a <= b"):
        first_unsure(grow, 0, 5)
    grow += b"x\n"  # the buffer was released on both paths, else a bytearray cannot grow (BufferError)
    assert first_unsure(grow, 0, 6) == 4


# --- 3. _walk_range: blocks, ranges, BOM, CRLF ------------------------------------------------------------

_WALK_LINES = [
    b'{"a":1}',
    b"[1,2,3]",
    '{"s":"é中😀"}'.encode(),
    b"",
    b" ",
    b"\t\r",
    b"\r",
    b"12345678901234567890",
    b"[-9223372036854775809]",
    b"[18446744073709551615]",
    b"tru",
    b'{"a":',
    BOM + b"{}",
    b"{}x",
    b'"\xed\xa0\x80"',
    b"[" * 1001 + b"]" * 1001,
    b"[" * 1025 + b"]" * 1025,
    b'"' + b"x" * 40 + b'"',
    b"\x0c",
    b"{}\r",
    b"[1e400]",
    b"1.5",
    b'"\\ud800"',
    b'{"k":[' + b"0," * 30 + b"0]}",
]


def _reference(data: bytes, start: int, end: int, name: str) -> validate.Share:
    """The lines that begin in [start, end) (an opening BOM dropped: the line after it begins at 0), in
    order, by the rule alone (the same wording for a bad last line inline and in a validator)."""
    bom = data.startswith(BOM)
    big = 0
    s = 0
    while s < len(data) or (s == 0 and not data):
        e = data.find(b"\n", s)
        e = len(data) if e < 0 else e + 1
        first = bom and s == 0
        mine = start == 0 if first else start <= s < end
        at = 3 if first else s
        line = data[at:e]
        if mine and line.strip(BLANK):
            try:  # a last line without a newline is judged as the builder reads it: with one
                big += 1 if records.big_integers_in(line if line.endswith(b"\n") else line + b"\n") else 0
            except InvalidRecordError as err:
                return (at, (name, data.count(b"\n", 0, at) + 1, err.reason)), big
        if e >= len(data):
            break
        s = e
    return None, big


def _walk_file(rnd: random.Random) -> bytes:
    lines = []
    for _ in range(rnd.randint(0, 12)):
        if rnd.random() < 0.7:
            lines.append(rnd.choice(_WALK_LINES))
        else:
            lines.append(b'{"v":"' + b"y" * rnd.randint(0, 70) + b'"}')
    data = b"".join(line + rnd.choice([b"\n", b"\n", b"\r\n"]) for line in lines)
    if data and rnd.random() < 0.3:
        data = data[:-1]  # no newline at the end
    if rnd.random() < 0.2:
        data = BOM + data
    return data


@pytest.fixture(params=["mapped", "read"])
def each_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``_walk_range`` both ways: the file mapped (the default), and read in blocks (where it cannot be
    mapped); each must take the path it is meant to."""
    if request.param == "read":
        monkeypatch.setattr(validate, "_MAP", False)
        monkeypatch.setattr(validate, "_walk_mapped", _not_called)
    else:
        monkeypatch.setattr(validate, "_read_range", _not_called)
    return str(request.param)


def _not_called(*args: Any) -> Any:
    raise AssertionError("the other way was taken")


@pytest.mark.parametrize("seed", range(3))
def test_walk_range_with_any_block_size_and_any_cut(
    seed: int, each_way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each range's result - first bad line (offset, line number, reason) and big-integer count - is
    the reference's and the simdjson path's, for blocks of one byte up; the ranges partition the lines."""
    rnd = random.Random(seed)
    path = str(tmp_path / "f.jsonl")
    walk = records.c_walk()
    assert walk is not None
    for _ in range(250):
        data = _walk_file(rnd)
        Path(path).write_bytes(data)
        monkeypatch.setattr(validate, "_READ", rnd.choice([1, 2, 3, 4, 5, 7, 8, 13, 16, 64, 1 << 20]))
        size = len(data)
        cuts = sorted({0, size, *(rnd.randint(0, size) for _ in range(rnd.randint(0, 4)))})
        total_big = 0
        first_bad = None
        for a, b in zip(cuts, cuts[1:] or [size], strict=False):
            got = validate._walk_range(walk, path, "f", a, b)
            assert got == _reference(data, a, b, "f"), (validate._READ, a, b, data[:300])
            if validate._READ > 1:  # (open() takes buffering=1 for line buffering)
                monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
                assert validate.check_range(path, "f", a, b) == got
                monkeypatch.delenv("SHARDCLAIM_SCAN")
            total_big += got[1]
            if got[0] is not None and first_bad is None:
                first_bad = got[0]
        whole = _reference(data, 0, size, "f")
        assert first_bad == whole[0]
        if whole[0] is None:
            assert total_big == whole[1]


@pytest.mark.parametrize("block", [1, 2, 5, 16, 1 << 20])
def test_walk_range_long_lines_crlf_bom_and_a_range_ending_inside_a_line(
    block: int, each_way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_READ", block)
    walk = records.c_walk()
    long_ok = b'{"t":"' + b"z" * 5000 + b'"}'
    long_bad = b'{"t":"' + b"z" * 5000 + b'\\x"}'
    data = BOM + long_ok + b"\r\n" + b"[1]\r\n" + long_bad + b"\r\n" + b"[99999999999999999999]\r\n" + long_ok
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    bad_at = data.index(long_bad)
    for a, b in [
        (0, 1),
        (0, 3),
        (0, 4),
        (0, 100),
        (1, 100),
        (0, bad_at),
        (0, bad_at + 1),
        (bad_at, bad_at + 1),
        (bad_at + 1, len(data)),
        (bad_at - 1, bad_at),
        (0, len(data)),
        (3, len(data)),
    ]:
        got = validate._walk_range(walk, str(path), "f", a, b)
        assert got == _reference(data, a, b, "f"), (a, b)
    found = validate._walk_range(walk, str(path), "f", 0, bad_at + 1)[0]
    assert found is not None
    assert found[0] == bad_at
    assert found[1][:2] == ("f", 3)
    assert validate._walk_range(walk, str(path), "f", bad_at + 1, len(data)) == (None, 1)


def _syscalls() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("syscr:")).split()[1])


def test_a_long_line_across_a_range_start_is_skipped_in_few_reads(each_way: str, tmp_path: Path) -> None:
    if not os.path.exists("/proc/self/io"):
        pytest.skip("no /proc/self/io")
    line = b'["' + b"y" * (1 << 20) + b'"]\n'
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"[1]\n" + line + b"[2]\n")
    before = _syscalls()
    assert validate._walk_range(records.c_walk(), str(path), "f", 10, len(line)) == (None, 0)
    reads = _syscalls() - before
    # the simdjson path (a buffered file) needs a handful; one read a byte would be over a million
    assert reads < 1000, reads


# --- 4. whole builds: with and without the C check ------------------------------------------------------


def _snapshot(out: Path) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    for p in sorted(out.rglob("*")):
        if p.is_dir() or p.name.startswith(".shardclaim"):
            continue
        rel = str(p.relative_to(out))
        if rel == "master_metadata.json":
            master = json.loads(p.read_bytes())
            master.pop("created_at")
            snap[rel] = master
        else:
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def _build(
    src: str, out: Path, monkeypatch: pytest.MonkeyPatch, *, c: bool, **kw: Any
) -> tuple[str, dict[str, Any] | str]:
    """("ok", snapshot) or ("error", message), with the C check or with simdjson."""
    if c:
        monkeypatch.delenv("SHARDCLAIM_SCAN", raising=False)
        assert records.c_walk() is not None
    else:
        monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
        assert records.c_walk() is None
    shutil.rmtree(out, ignore_errors=True)
    try:
        create_sharded_dataset(src, str(out), **kw)
    except InputError as e:
        assert not (out / "master_metadata.json").exists()  # nothing published
        return "error", str(e)
    finally:
        monkeypatch.delenv("SHARDCLAIM_SCAN", raising=False)
    return "ok", _snapshot(out)


_GOOD = [
    b'{"id":1,"t":"caf\xc3\xa9"}',
    b"[1,2,3]",
    b'{"big":123456789012345678901234567890}',
    b'"s"',
    b"0",
    b'{"n":-9223372036854775809,"m":18446744073709551616}',
    b'{"u":"\\ud83d\\ude00"}',
    b"  [true]\t",
    b'{"f":1e300,"g":-0.0}',
    b"[" * 1001 + b"]" * 1001,
    b'{"x":"' + b"w" * 3000 + b'"}',
]
_BAD = [
    b"tru",
    b'{"a":',
    BOM + b"{}",
    b'"\xed\xa0\x80"',
    b'"\\ud800"',
    b"[1e400]",
    b"[" * 1025 + b"]" * 1025,
    b"{}x",
    b"\x0c",
    b'"\x01"',
    b"NaN",
    b"[01]",
    b'{"a":1,}',
    b"\xff",
    b'"\xc3"',
    b"{1:2}",
]


def _small_inputs() -> list[tuple[str, bytes]]:
    rnd = random.Random(3)
    cases = []
    for i in range(6):
        lines = [rnd.choice(_GOOD) for _ in range(40)] + [b"", b" \r", b"\t"]
        rnd.shuffle(lines)
        eol = b"\r\n" if i % 2 else b"\n"
        data = (BOM if i % 3 == 0 else b"") + eol.join(lines) + (eol if i % 4 else b"")
        cases.append((f"good{i}", data))
    for i, bad in enumerate(_BAD):
        lines = [rnd.choice(_GOOD) for _ in range(30)]
        at = rnd.randint(0, 30)
        lines[at:at] = [bad]
        lines.insert(rnd.randint(at + 1, len(lines)), rnd.choice(_BAD))  # a second bad line after it
        ending = b"" if i % 3 == 0 else b"\n"
        cases.append((f"bad{i}", b"\n".join(lines) + ending))
        cases.append((f"lastbad{i}", b"\n".join(lines[:at]) + b"\n" + bad + ending))  # the last line
    return cases


@pytest.mark.parametrize("strategy", ["blocks", "round_robin", "contiguous"])
def test_small_builds_are_the_same_with_and_without_the_c_check(
    strategy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _small_inputs()
    for name, data in inputs if strategy == "blocks" else inputs[::3]:
        src = tmp_path / f"{name}.jsonl"
        src.write_bytes(data)
        with_c = _build(str(src), tmp_path / "c", monkeypatch, c=True, num_shards=3, strategy=strategy)
        without = _build(str(src), tmp_path / "py", monkeypatch, c=False, num_shards=3, strategy=strategy)
        assert with_c == without, name
        # and each verdict is the rule's: the first bad line by number, the big integers counted
        body = data[3:] if data.startswith(BOM) else data
        lines = body.split(b"\n")
        if body.endswith(b"\n"):
            lines.pop()
        bad = [i + 1 for i, line in enumerate(lines) if line.strip(BLANK) and not _rule_accepts(line + b"\n")]
        big = sum(1 for line in lines if line.strip(BLANK) and _rule_accepts(line) and _big(line + b"\n"))
        if bad:
            assert with_c[0] == "error"
            assert f", line {bad[0]}: not valid JSON" in with_c[1], (name, with_c)
        else:
            assert with_c[0] == "ok", (name, with_c)
            assert with_c[1]["master_metadata.json"]["big_integers"] == big  # type: ignore[index]
        if strategy == "blocks":  # by reference: check_lines, a line at a time
            by_ref = _build(str(src), tmp_path / "c", monkeypatch, c=True, num_shards=3, by_reference=True)
            assert by_ref == _build(
                str(src), tmp_path / "py", monkeypatch, c=False, num_shards=3, by_reference=True
            )
            assert by_ref[0] == with_c[0]
            if bad:
                assert by_ref[1] == with_c[1]
            else:
                assert by_ref[1]["master_metadata.json"]["big_integers"] == big  # type: ignore[index]
        # skipping the bad lines: the inline walk goes on after each line it left to the rule
        kw = {"num_shards": 3, "strategy": strategy, "skip_invalid": True}
        with_c = _build(str(src), tmp_path / "c", monkeypatch, c=True, **kw)
        without = _build(str(src), tmp_path / "py", monkeypatch, c=False, **kw)
        assert with_c == without, name
        if with_c[0] == "ok":
            master = with_c[1]["master_metadata.json"]  # type: ignore[index]
            assert master["skipped_invalid"] == len(bad), name
            assert master["big_integers"] == big, name
            assert master["total_tasks"] == sum(1 for line in lines if line.strip(BLANK)) - len(bad)


@pytest.mark.parametrize("block", [7, 64, 333, 4096])
def test_inline_builds_over_tiny_blocks_are_the_same_with_and_without_the_c_check(
    block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline walk asks the C where the first unsure line of a block is, then again after each line
    it leaves to the rule: with blocks of a few bytes, most lines straddle two reads (a joined copy),
    and the unsure lines fall at every place in a block."""
    from shardclaim.dataset import inputs

    monkeypatch.setattr(inputs, "_BLOCK", block)
    rnd = random.Random(block)
    for i in range(4):
        lines = [rnd.choice(_GOOD + _BAD[3:] if i else _GOOD) for _ in range(60)] + [b"", b" \r"]
        rnd.shuffle(lines)
        src = tmp_path / f"in{i}.jsonl"
        src.write_bytes((BOM if i % 2 else b"") + b"\r\n".join(lines) + (b"\n" if i % 3 else b""))
        for skip in (False, True):
            kw = {"num_shards": 2, "skip_invalid": skip}
            with_c = _build(str(src), tmp_path / "c", monkeypatch, c=True, **kw)
            without = _build(str(src), tmp_path / "py", monkeypatch, c=False, **kw)
            assert with_c == without, (block, i, skip)
            assert with_c[0] == ("error" if i and not skip else "ok"), with_c


@pytest.mark.parametrize("validated", [True, False])
def test_records_read_back_are_exact_with_and_without_the_c_check(
    validated: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader looks at each line as the validator did where a record may hold a big integer (or the
    build did not validate): every value read back is the oracle's, integers of any size exact."""
    from shardclaim.dataset.read import iter_shard_records
    from tests.test_build_json import exact, key

    rnd = random.Random(8)
    lines = [rnd.choice(_GOOD) for _ in range(200)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    create_sharded_dataset(str(src), str(out), num_shards=2, strategy="contiguous", validate=validated)
    want = [key(exact(line)) for line in lines]
    for scan in ("", "python"):
        monkeypatch.setenv("SHARDCLAIM_SCAN", scan)
        got = [key(v) for shard in range(2) for v in iter_shard_records(str(out), shard)]
        assert got == want, scan


def _big(line: bytes) -> bool:
    return records.big_integers_in(line) > 0


def _rule_accepts(line: bytes) -> bool:
    try:
        records.big_integers_in(line)
    except InvalidRecordError:
        return False
    return True


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A ≥ 96 MiB input (background validators): varied records, CRLF and blank lines, big integers,
    an opening BOM. Returns (path, lines, big integers)."""
    rnd = random.Random(42)
    lines = []
    for i in range(2000):
        text = "".join(
            rnd.choice(["word ", "é ", "中文 ", "😀", '\\"', "\\n", "\\u00e9", "\\ud83d\\ude00"])
            for _ in range(rnd.randint(5, 120))
        )
        rec = f'{{"id":{i},"t":"{text}","g":[[0,1,2],[3,4,5]],"x":{rnd.uniform(-1e9, 1e9)!r}'
        if i % 97 == 0:
            rec += f',"big":{rnd.choice([10**25, -(2**63) - 1, 2**64])}'
        lines.append(rec.encode() + b"}" + rnd.choice([b"\n", b"\n", b"\r\n", b"\n\n", b"\n \t\r\n"]))
    block = b"".join(lines)
    repeat = -(-(97 << 20) // len(block))
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    path.write_bytes(BOM + block * repeat)
    big_per_block = sum(1 for i in range(2000) if i % 97 == 0)
    return path, block.count(b"\n") * repeat, big_per_block * repeat


def _background(path: Path) -> bool:
    return background.BackgroundValidator.suits(open_inputs(str(path)), False)


def test_large_valid_build_is_the_same_with_and_without_the_c_check(
    big_input: tuple[Path, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, big = big_input
    if not _background(path):
        pytest.skip("one CPU: no background validators")
    with_c = _build(str(path), tmp_path / "c", monkeypatch, c=True, num_shards=5)
    without = _build(str(path), tmp_path / "py", monkeypatch, c=False, num_shards=5)
    assert with_c[0] == "ok", with_c
    assert with_c == without
    assert with_c[1]["master_metadata.json"]["big_integers"] == big  # type: ignore[index]


@pytest.mark.parametrize("where", ["middle", "last-line-no-newline"])
def test_large_builds_report_the_same_first_bad_line(
    where: str, big_input: tuple[Path, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = big_input
    if not _background(path):
        pytest.skip("one CPU: no background validators")
    data = bytearray(path.read_bytes())
    if where == "middle":
        # two bad lines in the second half (another validator's share), the first one reported
        for frac, bad in ((0.9, b'{"a":1,}'), (0.6, b'["\\ud800"]')):
            at = data.index(b"\n", int(len(data) * frac)) + 1
            data[at:at] = bad + b"\n"
        first = data.index(b'["\\ud800"]')
    else:
        data += b'{"a":[1,2'
        first = len(data) - 9
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    del data
    with_c = _build(str(src), tmp_path / "c", monkeypatch, c=True, num_shards=4)
    without = _build(str(src), tmp_path / "py", monkeypatch, c=False, num_shards=4)
    assert with_c[0] == "error"
    assert with_c == without
    lineno = src.read_bytes().count(b"\n", 0, first) + 1
    assert f"{src}, line {lineno}: not valid JSON" in with_c[1]  # type: ignore[operator]


def test_large_builds_of_several_inputs_with_odd_small_ones(
    big_input: tuple[Path, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background validators take each input apart: an empty one, one that is only a BOM, one whose
    first line follows a BOM and whose last has no newline; the first bad line is named by input."""
    path, _, big = big_input
    if not _background(path):
        pytest.skip("one CPU: no background validators")
    odd = {"empty": b"", "bom": BOM, "tail": BOM + b"\r\n[18446744073709551616]\r\n \n[1]"}
    for name, data in odd.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
    inputs = [
        str(tmp_path / "empty.jsonl"),
        str(tmp_path / "bom.jsonl"),
        str(path),
        str(tmp_path / "tail.jsonl"),
    ]
    with_c = _build(inputs, tmp_path / "c", monkeypatch, c=True, num_shards=3)  # type: ignore[arg-type]
    without = _build(inputs, tmp_path / "py", monkeypatch, c=False, num_shards=3)  # type: ignore[arg-type]
    assert with_c[0] == "ok", with_c
    assert with_c == without
    assert with_c[1]["master_metadata.json"]["big_integers"] == big + 1  # type: ignore[index]
    # a bad first line just after a BOM, in the last input; and a bad line in a later input is not reported
    (tmp_path / "bad.jsonl").write_bytes(BOM + b"tru\n[1]\n")
    (tmp_path / "worse.jsonl").write_bytes(b"[1]\n[2]\n{")
    inputs = [str(path), str(tmp_path / "bad.jsonl"), str(tmp_path / "worse.jsonl")]
    with_c = _build(inputs, tmp_path / "c", monkeypatch, c=True, num_shards=3)  # type: ignore[arg-type]
    without = _build(inputs, tmp_path / "py", monkeypatch, c=False, num_shards=3)  # type: ignore[arg-type]
    assert with_c == without
    assert with_c[0] == "error"
    assert f"{tmp_path / 'bad.jsonl'}, line 1: not valid JSON" in with_c[1]  # type: ignore[operator]


# --- 5. an input changed while the validators read it ---------------------------------------------------


def _changed_build(
    src: Path, out: Path, change: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> str:
    """Build with the input changed just after the validators took its stamps (so before any of them
    read it): deterministic, no timing. The build's error message; the build must not succeed."""
    stamp = background._stamp

    def stamp_then_change(f: Any) -> tuple[int, int, int, int]:
        taken = stamp(f)
        change(src)
        return taken

    calls = 0

    def once(f: Any) -> tuple[int, int, int, int]:
        nonlocal calls
        calls += 1
        return stamp_then_change(f) if calls == 1 else stamp(f)

    monkeypatch.setattr(background, "_stamp", once)
    shutil.rmtree(out, ignore_errors=True)
    with pytest.raises(InputError) as info:
        create_sharded_dataset(str(src), str(out), num_shards=3)
    assert not (out / "master_metadata.json").exists()
    assert calls >= 1  # the stamps were taken
    return str(info.value)


def _truncate_at_line(p: Path) -> None:
    with open(p, "r+b") as f:
        size = f.seek(0, 2)
        f.seek(size - 200_000)
        chunk = f.read(100_000)
        f.truncate(size - 200_000 + chunk.index(b"\n") + 1)


def _truncate_mid_line(p: Path) -> None:
    with open(p, "r+b") as f:
        size = f.seek(0, 2)
        f.seek(size - 200_000)
        chunk = f.read(100_000)
        f.truncate(size - 200_000 + chunk.index(b'\n{"id"') + 10)  # inside a record


def _append_bad_line(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"not json\n")


def _continue_the_last_line(p: Path) -> None:
    with open(p, "r+b") as f:
        f.seek(-1, 2)
        assert f.read(1) == b"\n"
        f.seek(-1, 2)
        f.write(b"junk\n")


CHANGES: list[Any] = [
    pytest.param(_truncate_at_line, "c", id="truncated-at-a-line-end"),
    pytest.param(_append_bad_line, "c", id="appended"),
    pytest.param(_append_bad_line, "python", id="appended-simdjson"),
    pytest.param(_truncate_mid_line, "c", id="truncated-in-a-line"),
    pytest.param(_truncate_mid_line, "python", id="truncated-in-a-line-simdjson"),
    pytest.param(_continue_the_last_line, "c", id="last-line-written-on"),
]


@pytest.mark.parametrize(("change", "scan"), CHANGES)
def test_an_input_changed_while_read_is_reported_as_changed(
    change: Callable[[Path], None],
    scan: str,
    big_input: tuple[Path, int, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _, _ = big_input
    if not _background(path):
        pytest.skip("one CPU: no background validators")
    if scan == "python":
        monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
    src = tmp_path / "in.jsonl"
    shutil.copyfile(path, src)
    message = _changed_build(src, tmp_path / "out", change, monkeypatch)
    assert "changed while it was read" in message, message
