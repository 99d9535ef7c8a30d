"""What a record is: the validator and the reader agree on every line. A line the validator accepts,
the reader reads back (and exactly: integers beyond 64 bits stay integers); a line it refuses fails the
build, or is skipped and counted, the same way in the main thread and in the background processes."""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import InputError, create_sharded_dataset, iter_shard_records
from tests.test_dataset import records, validator  # noqa: F401 - the fixture

BOM = b"\xef\xbb\xbf"
BIG = 123456789012345678901234567890


def exact(line: bytes) -> Any:
    """The oracle: RFC 8259 JSON in UTF-8, no byte order mark, no NaN or Infinity, finite numbers,
    no lone surrogates, at most 1024 levels deep; integers of any size."""
    text = line.decode("utf-8")  # strict: invalid UTF-8, encoded surrogates and overlongs fail here
    if text.startswith("\ufeff"):
        raise ValueError("byte order mark")

    def finite(s: str) -> float:
        value = float(s)
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value

    def no_constant(s: str) -> None:
        raise ValueError(s)

    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            in_string, escaped = (escaped or c != '"'), (not escaped and c == "\\")
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    if deepest > 1024:
        raise ValueError("too deep")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2000)  # json.loads recurses once per level
    try:
        value = json.loads(text, parse_float=finite, parse_constant=no_constant)
    finally:
        sys.setrecursionlimit(limit)
    for s in _strings(value):
        s.encode("utf-8")  # lone surrogates (from \ud800 escapes) cannot be encoded
    return value


def key(value: Any) -> str:
    """A value as comparable text: exact (ints stay ints), deep structures included."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2000)
    try:
        return json.dumps(value, sort_keys=True)
    finally:
        sys.setrecursionlimit(limit)


def _strings(value: Any) -> list[str]:
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out += list(v)
            stack += list(v.values())
        elif isinstance(v, list):
            stack += v
    return out


# (line without its newline, "valid" | "invalid" | "blank")
TRICKY: dict[str, tuple[bytes, str]] = {
    "bom-mid-file": (BOM + b'{"a": 1}', "invalid"),
    "bom-after-space": (b" " + BOM + b'{"a": 1}', "invalid"),
    "big-int": (b'{"id": %d}' % BIG, "valid"),
    "big-negative-int": (b'{"id": %d}' % -BIG, "valid"),
    "u64-max": (b'{"id": 18446744073709551615}', "valid"),
    "u64-max-plus-one": (b'{"id": 18446744073709551616}', "valid"),
    "i64-min-minus-one": (b"[-9223372036854775809]", "valid"),
    "400-digit-int": (b"[" + b"7" * 400 + b"]", "valid"),
    "5000-digit-int": (b"[" + b"7" * 5000 + b"]", "invalid"),
    "big-int-as-key": (b"{%d: 1}" % BIG, "invalid"),
    "big-int-in-string": (b'{"s": "%d"}' % BIG, "valid"),
    "big-int-then-garbage": (b"[%d] x" % BIG, "invalid"),
    "big-int-deep": (b"[" * 1023 + b"%d" % BIG + b"]" * 1023, "valid"),
    "big-int-too-deep": (b"[" * 1025 + b"%d" % BIG + b"]" * 1025, "invalid"),
    "big-float": (b"[1e400]", "invalid"),
    "big-float-digits": (b"[" + b"9" * 400 + b".5]", "invalid"),
    "tiny-float": (b"[1e-400]", "valid"),
    "nan": (b'{"a": NaN}', "invalid"),
    "infinity": (b"[-Infinity]", "invalid"),
    "lone-high-surrogate": (b'{"a": "\\ud800"}', "invalid"),
    "lone-low-surrogate": (b'["\\udc00x"]', "invalid"),
    "surrogate-pair": (b'["\\ud83d\\ude00"]', "valid"),
    "encoded-surrogate": (b'["\xed\xa0\x80"]', "invalid"),
    "invalid-utf8": (b'{"a": "\xff"}', "invalid"),
    "overlong-utf8": (b'["\xc0\xaf"]', "invalid"),
    "trailing-garbage": (b'{"a": 1} x', "invalid"),
    "two-values": (b"{} {}", "invalid"),
    "depth-1024": (b"[" * 1024 + b"]" * 1024, "valid"),
    "depth-1025": (b"[" * 1025 + b"]" * 1025, "invalid"),
    "escaped-nul": (b'{"a": "\\u0000"}', "valid"),
    "raw-control-char": (b'{"a": "x\x01"}', "invalid"),
    "duplicate-keys": (b'{"a": 1, "a": 2}', "valid"),
    "whitespace-only": (b" \t \r", "blank"),
    "form-feed-only": (b"\x0c", "invalid"),
    "space-and-form-feed": (b" \x0c ", "invalid"),
    "crlf": (b'{"a": 1}\r', "valid"),
    "scalar": (b"42", "valid"),
    "string": (b'"just a string"', "valid"),
    "leading-zero": (b"[01]", "invalid"),
}


def build(tmp_path: Path, lines: list[bytes], **kwargs: Any) -> dict[str, Any]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines))
    return create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2, **kwargs)


def read_all(tmp_path: Path) -> list[Any]:
    return [r for s in range(2) for r in iter_shard_records(str(tmp_path / "ds"), s)]


@pytest.mark.parametrize("case", list(TRICKY))
def test_validator_and_reader_agree_on_a_tricky_line(tmp_path: Path, validator: str, case: str) -> None:  # noqa: F811
    line, verdict = TRICKY[case]
    good = records(10)
    lines = [*good[:5], line + b"\n", *good[5:]]
    if verdict == "invalid":
        with pytest.raises(InputError, match=r"in\.jsonl, line 6: not valid JSON"):
            build(tmp_path, lines)
        with pytest.raises(ValueError, match=r"."):  # the oracle agrees
            exact(line)
        return
    master = build(tmp_path, lines)
    got = read_all(tmp_path)
    want = [orjson.loads(g) for g in good]
    if verdict == "valid":
        want.append(exact(line))
        assert master["total_tasks"] == 11
    else:
        assert (master["total_tasks"], master["blank_lines"]) == (10, 1)
    assert sorted(map(key, got)) == sorted(map(key, want))


@pytest.mark.parametrize("last", [b"tru", b'{"a": 1', b'["x"] y'])
def test_a_bad_last_line_without_a_newline_is_worded_as_the_rule_words_it_with_one(
    tmp_path: Path,
    validator: str,  # noqa: F811
    last: bytes,
) -> None:
    """The builder gives an input's last line a newline; the background validators judge it so too,
    so the message is the same wherever the line was checked."""
    from shardclaim.dataset.records import loads_exact
    from shardclaim.errors import InvalidRecordError

    with pytest.raises(InvalidRecordError) as rule:
        loads_exact(last + b"\n")
    with pytest.raises(InputError) as e:
        build(tmp_path, [*records(10), last])
    assert str(e.value).endswith(f"in.jsonl, line 11: not valid JSON ({rule.value.reason})")


def test_every_line_the_validator_keeps_the_reader_reads_and_it_skips_only_what_the_reader_cannot(
    tmp_path: Path,
) -> None:
    """Thousands of mutated lines, built with --skip-invalid: the kept ones read back as the oracle
    parses them, exactly, and the skipped ones are those the oracle refuses."""
    lines = [b'{"first": "line"}\n', *fuzzed_lines(4000)]  # a BOM opening the file would be dropped
    verdicts = []
    for line in lines:
        try:
            verdicts.append(exact(line.rstrip(b"\n")))
        except (ValueError, RecursionError):
            verdicts.append(ValueError)
    master = build(tmp_path, lines, skip_invalid=True)
    valid = [v for v in verdicts if v is not ValueError]
    blank = sum(1 for line in lines if not line.strip(b" \t\r\n"))
    assert master["skipped_invalid"] == len(lines) - len(valid) - blank
    assert Counter(map(key, read_all(tmp_path))) == Counter(map(key, valid))
    assert master["skipped_invalid"] > 500  # the mutations did make invalid lines
    assert len(valid) > 1000


def fuzzed_lines(n: int) -> list[bytes]:
    rng = random.Random(9)
    seeds = [
        b'{"a": 1, "b": [1, 2.5, -3e5, true, false, null], "c": "x\\u00e9\\n\xc3\xa9"}',
        b'[1, {"k": "v"}, "s", %d]' % BIG,
        b'"str"',
        b"123",
        b'{"\\ud83d\\ude00": "\xf0\x9f\x98\x80", "n": 18446744073709551615}',
    ]
    pieces = [bytes([i]) for i in range(256)] + [
        BOM, b"\\u", b"\\ud800", b"\\udc00", b"e", b".", b"-", b"+", b'"', b"\\", b"1" * 20,
        b"9" * 25, b"\xed\xa0\x80", b"\xc0\x80", b"NaN", b"Infinity", b"true", b" ", b"\r",
    ]  # fmt: skip
    out = []
    for _ in range(n):
        s = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 3)):
            pos = rng.randint(0, len(s))
            op = rng.random()
            if op < 0.4:
                s[pos:pos] = rng.choice(pieces)
            elif op < 0.7 and len(s) > 1:
                del s[pos : pos + rng.randint(1, 3)]
            else:
                s[pos : pos + 1] = rng.choice(pieces)
        out.append(bytes(s).replace(b"\n", b" ") + b"\n")
    return out


def test_a_byte_order_mark_opening_an_input_file_is_dropped(tmp_path: Path, validator: str) -> None:  # noqa: F811
    """A BOM is an encoding marker at the start of a file, not part of its first record: dropped there
    (also in a compressed file and in each of several inputs); anywhere else it makes a line invalid."""
    a, b = records(30), records(30, seed=5)
    (tmp_path / "a.jsonl").write_bytes(BOM + b"".join(a))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(BOM + b"".join(b)))
    master = create_sharded_dataset(
        [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz")], str(tmp_path / "ds"), num_shards=2
    )
    assert master["total_tasks"] == 60
    chunks = b"".join(p.read_bytes() for p in sorted((tmp_path / "ds").glob("shard_*/chunk_*.jsonl")))
    assert BOM not in chunks
    assert Counter(chunks.splitlines(True)) == Counter(a + b)
    assert len(read_all(tmp_path)) == 60


def test_integers_beyond_64_bits_are_counted_in_the_master_and_read_back_exactly(
    tmp_path: Path,
    validator: str,  # noqa: F811
) -> None:
    lines = [b'{"id": %d, "i": %d}\n' % (BIG + i, i) for i in range(7)] + records(20)
    master = build(tmp_path, lines)
    assert master["big_integers"] == 7
    got = read_all(tmp_path)
    assert sorted(r["id"] for r in got if "i" in r) == [BIG + i for i in range(7)]
    assert all(type(r["id"]) is int for r in got)


def test_a_dataset_without_big_integers_says_so(tmp_path: Path) -> None:
    assert build(tmp_path, records(20))["big_integers"] == 0
    (tmp_path / "ds").rename(tmp_path / "old")
    assert build(tmp_path, records(20), validate=False)["big_integers"] is None
