"""The C fast path of the validator (``shardclaim._valid``) against the rule: it may be too careful,
never too lenient. Every line it accepts is a record with no integer beyond 64 bits, by the rule
(``records.loads_exact``) and by the tests' own oracle; it accepts the ordinary records a build meets
(else it would be no fast path); a walk over many lines stops exactly where a line-by-line check does;
a build is the same with it as with simdjson. (Guard pages around the buffer, showing nothing outside
the range is read: tests/test_valid_hostile.py.)"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardclaim.dataset import records
from shardclaim.errors import InvalidRecordError
from tests.test_build_json import TRICKY, exact

_valid = pytest.importorskip("shardclaim._valid", reason="shardclaim._valid is not built (no C compiler?)")
first_unsure: Callable[[bytes | bytearray | memoryview, int, int], int] = _valid.first_unsure

I64_MIN, U64_MAX = -(2**63), 2**64 - 1


def accepted(line: bytes) -> bool:
    """The C verdict on one line (its newline may be there): a record for certain, or a blank line."""
    return first_unsure(line, 0, len(line)) == len(line)


def is_blank(line: bytes) -> bool:
    return not line.strip(b" \t\r\n")


def no_big_integers(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and not I64_MIN <= v <= U64_MAX:
            return False
        if isinstance(v, dict):
            stack += v.values()
        elif isinstance(v, list):
            stack += v
    return True


def assert_safe(line: bytes) -> bool:
    """If C accepts ``line`` (and it is not blank), the rule and the oracle do, with no big integer.
    Returns the C verdict."""
    ok = accepted(line)
    if ok and not is_blank(line):
        body = line.rstrip(b"\n")
        try:
            assert records.big_integers_in(line) == 0, line[:200]
        except InvalidRecordError as e:
            raise AssertionError(f"C accepted what the rule refuses ({e.reason}): {line[:200]!r}") from None
        assert no_big_integers(exact(body)), line[:200]
    return ok


# --- values: ordinary ones (C must accept them) and edge ones (C may leave them to the rule) ---


CODE_POINTS = [0xE9, 0x416, 0x7FF, 0x800, 0x4E2D, 0xFFFD, 0xFFFE, 0x10000, 0x1F7E5, 0x10FFFF]


def _string(rnd: random.Random, edgy: bool) -> str:
    out = []
    for _ in range(rnd.choice([0, 1, 3, 8, 20, 70])):
        kind = rnd.random()
        if kind < 0.55:
            out.append(rnd.choice("abcxyz 019_-/:,{}[]"))
        elif kind < 0.65:
            out.append(rnd.choice(['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]))
        elif kind < 0.72:
            out.append(f"\\u{rnd.choice([0, 0x1F, 0x41, 0xE9, 0x7FF, 0x800, 0xFFFD, 0xFFFF]):04x}")
        elif kind < 0.76:
            hi, lo = rnd.randint(0xD800, 0xDBFF), rnd.randint(0xDC00, 0xDFFF)
            out.append(f"\\u{hi:04x}\\u{lo:04X}")
        elif kind < 0.80 and edgy:
            out.append(f"\\u{rnd.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF]):04x}")  # lone surrogates
        else:
            out.append(chr(rnd.choice(CODE_POINTS)))
    return '"' + "".join(out) + '"'


def _number(rnd: random.Random, edgy: bool) -> str:
    kind = rnd.random()
    if kind < 0.4:
        return str(rnd.choice([0, 1, 7, -3, 42, 10**17, -(10**17), 10**18 - 1, -(10**18 - 1)]))
    if kind < 0.7:
        return repr(rnd.uniform(-1e6, 1e6))
    if kind < 0.85 or not edgy:
        mantissa = rnd.choice(["0", "1", "-1", "12.5", "0.001", "-0.0", "9.87654321"])
        return f"{mantissa}{rnd.choice('eE')}{rnd.choice(['', '+', '-'])}{rnd.randint(0, 250)}"
    return rnd.choice(
        [
            "9" * rnd.randint(19, 25),
            "-" + "9" * rnd.randint(18, 22),
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e308",
            "1.8e308",
            "1e309",
            "-1e400",
            "1e-300",
            "1e-324",
            "4.9e-324",
            "1e-400",
            "0e999",
            "0.0e-9999",
            "1e0000000000005",
            "0." + "0" * rnd.randint(290, 320) + "1",
            "1" + "0" * rnd.randint(290, 320) + ".0",
            "123456789012345678901234567890e-10",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
        ]
    )


def value(rnd: random.Random, depth: int = 0, edgy: bool = False) -> str:
    ws = (lambda: rnd.choice(["", "", "", " ", "\t", "\r", "  \t"])) if rnd.random() < 0.3 else (lambda: "")
    kind = rnd.random() if depth < 6 else rnd.random() * 0.6
    if kind < 0.2:
        return _string(rnd, edgy)
    if kind < 0.45:
        return _number(rnd, edgy)
    if kind < 0.55:
        return rnd.choice(["true", "false", "null"])
    if kind < 0.8:
        items = [ws() + value(rnd, depth + 1, edgy) + ws() for _ in range(rnd.randint(0, 5))]
        return "[" + ",".join(items) + ws() + "]"
    members = [
        ws() + _string(rnd, edgy) + ws() + ":" + ws() + value(rnd, depth + 1, edgy) + ws()
        for _ in range(rnd.randint(0, 5))
    ]
    return "{" + ",".join(members) + ws() + "}"


INTERESTING = (
    b'"\\{}[],:. -+eE019tfnu\x00\x01\x1f\x7f\x80\xbf\xc0\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff\t\r\n\x0b\x0c'
)


def mutants(rnd: random.Random, line: bytes, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(line)
        op = rnd.random()
        at = rnd.randint(0, max(len(b) - 1, 0))
        if op < 0.25 and b:
            del b[at]
        elif op < 0.5:
            b.insert(at, rnd.choice(INTERESTING))
        elif op < 0.7 and b:
            b[at] = rnd.choice(INTERESTING)
        elif op < 0.8:
            b = b[:at]
        elif op < 0.9 and b:
            j = rnd.randint(at, len(b))
            b[at:at] = b[at:j]
        elif op < 0.95:
            b[at:at] = rnd.choice([b"\xef\xbb\xbf", b"\\u", b"\\ud800", b"1e", b"-", b"tru", b"\\"])
        else:  # a bracket for another
            brackets = [i for i, c in enumerate(b) if c in b"{}[]"]
            if brackets:
                i = rnd.choice(brackets)
                b[i] = rnd.choice(b"{}[]")
        out.append(bytes(b).replace(b"\n", b""))
    return out


# --- the properties ---


@pytest.fixture(params=["utf8-16-bytes", "utf8-one-sequence"])
def each_utf8_step(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with each way of checking UTF-8 in a string: 16 bytes a step (SSSE3, the default
    where the CPU has it) and one sequence a step (every other machine)."""
    simd = _valid.utf8_simd(request.param == "utf8-16-bytes")
    if request.param == "utf8-16-bytes" and not simd:
        _valid.utf8_simd(True)
        pytest.skip("this CPU has no SSSE3")
    try:
        yield request.param
    finally:
        _valid.utf8_simd(True)


@pytest.mark.usefixtures("each_utf8_step")
@pytest.mark.parametrize("case", list(TRICKY))
def test_the_tricky_lines_are_never_accepted_wrongly(case: str) -> None:
    line, kind = TRICKY[case]
    ok = assert_safe(line + b"\n")
    if kind == "invalid":
        assert not ok
    if kind == "blank":
        assert ok  # skipped as blank, as the validator does


@pytest.mark.usefixtures("each_utf8_step")
@pytest.mark.parametrize("seed", range(8))
def test_ordinary_records_are_accepted(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(400):
        line = value(rnd).encode() + b"\n"
        assert accepted(line), line[:300]
        assert_safe(line)


@pytest.mark.usefixtures("each_utf8_step")
@pytest.mark.parametrize("seed", range(12))
def test_edge_values_and_mutants_are_never_accepted_wrongly(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    checked = refused = 0
    for _ in range(250):
        base = value(rnd, edgy=True).encode()
        for line in [base, *mutants(rnd, base, 12)]:
            checked += 1
            refused += not assert_safe(line + b"\n")
            assert_safe(line)  # a last line without its newline
    assert refused > checked // 4  # the mutants did reach the refusals


def test_every_line_of_one_or_two_bytes() -> None:
    for a in range(256):
        assert_safe(bytes([a]))
        for b in range(256):
            assert_safe(bytes([a, b]) + b"\n")


def test_every_short_line_over_the_grammar_s_bytes() -> None:
    alphabet = b'"\\{}[],:0-1.eEtu \xc3\xa9\xed\xa0'
    for a in alphabet:
        for b in alphabet:
            for c in alphabet:
                assert_safe(bytes([a, b, c]))
                assert_safe(bytes([b"["[0], a, b, c, b"]"[0]]))
                assert_safe(bytes([b'"'[0], a, b, c, b'"'[0]]) + b"\n")


GRAMMAR_ERRORS = [
    b'{"a":1]', b"[1}", b'{"a"}', b'{"a":}', b"{:1}", b'{"a" 1}', b"[1 2]", b"{,}", b"[,1]",
    b'{"a":1,}', b"[1,]", b'{"a":1 "b":2}', b"]", b"}", b"[]]", b"{}}", b"[{]}", b'{"a":[}]',
    b'"a":1', b"1,2", b"[1x]", b"truex", b"01", b"[1.5.5]", b"[-]", b"[1e5e5]", b"[.5]", b"[5.]",
    b"[+1]", b"[0x10]", b"[tru]", b"[nul]", b"{1:2}", b"{true:1}", b'["a" "b"]', b'["a"1]',
    b'{"a"::1}', b"[[]", b'{"a":1}}', b"[] []", b"[]x", b'""""',
]  # fmt: skip


@pytest.mark.parametrize("line", GRAMMAR_ERRORS)
def test_grammar_errors_are_never_accepted(line: bytes) -> None:
    assert not accepted(line)
    assert not accepted(line + b"\n")
    for inside in (b"[" + line + b"]\n", b'{"k":' + line + b"}\n", b"[[" + line + b"],{}]\n"):
        assert_safe(inside)


def test_nesting_is_accepted_to_1000_levels_and_left_to_the_rule_beyond() -> None:
    assert accepted(b"[" * 1000 + b"]" * 1000)
    assert accepted(b'{"a":' * 1000 + b"1" + b"}" * 1000)
    assert not accepted(b"[" * 1001 + b"]" * 1001)
    assert not accepted(b"[" * 100_000)  # unclosed and deep: no stack overflow


def test_numbers_near_the_rule_s_edges() -> None:
    assert accepted(b"[999999999999999999,-999999999999999999]")  # 18 digits
    assert not accepted(b"[9999999999999999999]")  # 19: the rule counts the big ones
    assert accepted(b"[1e300,1e-300,-1.5E+300,0e300,0.0,12e299,0.0001e-296]")
    for edge in [b"1e301", b"1e-301", b"1e1000", b"0.00001e-296", b"12e300"]:
        assert not accepted(b"[" + edge + b"]"), edge


@pytest.mark.usefixtures("each_utf8_step")
@pytest.mark.parametrize("seed", range(4))
def test_a_walk_over_many_lines_stops_where_the_line_by_line_check_does(seed: int) -> None:
    rnd = random.Random(seed)
    lines = []
    for _ in range(600):
        base = value(rnd, edgy=rnd.random() < 0.3).encode()
        lines.append(rnd.choice([base, base, base, *mutants(rnd, base, 1), b"", b" \t\r"]))
    data = b"\n".join(lines) + rnd.choice([b"\n", b""])
    verdicts = [accepted(line + b"\n") or is_blank(line) for line in lines]
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    unsure, pos = [], 0
    while (pos := first_unsure(data, pos, len(data))) < len(data):
        unsure.append(pos)
        nl = data.find(b"\n", pos)
        pos = len(data) if nl < 0 else nl + 1
    assert unsure == [s for s, ok in zip(starts, verdicts, strict=True) if not ok]
    assert any(verdicts)
    assert not all(verdicts)


def _utf8_sequences() -> list[bytes]:
    """Sequences of 1-4 bytes at every edge a UTF-8 check draws (the leads and continuations either side
    of each limit), valid ones and not, and ASCII bytes the string scan stops at."""
    edges = [0x00, 0x1F, 0x20, 0x22, 0x5C, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
             0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFF]  # fmt: skip
    seqs = [bytes([a]) for a in edges] + [bytes([a, b]) for a in edges for b in edges]
    seqs += [bytes([a, b, c]) for a in edges if a >= 0xE0 for b in edges for c in (0x41, 0x80, 0xBF, 0xC0)]
    seqs += [
        bytes([a, b, c, d])
        for a in edges
        if a >= 0xF0
        for b in edges
        for c in (0x80, 0xC0)
        for d in (0x41, 0x80, 0xBF)
    ]
    seqs += ["é中😀".encode(), "\u00e9".encode(), b"\\", b'\\"']
    return [s for s in seqs if 0x0A not in s]


def test_utf8_16_bytes_a_step_decides_as_one_sequence_a_step() -> None:
    """Each edge sequence at each of the 16 places in a block of the SSSE3 step: inside a long string,
    just before its closing quote, and where the step hands the last bytes of the range to the one-
    sequence step. Both steps give the same verdict on every line, a valid sequence is accepted, and
    nothing accepted is refused by the rule."""
    if not _valid.utf8_simd(True):
        pytest.skip("this CPU has no SSSE3")
    lines = []
    for s in _utf8_sequences():
        for j in range(16):  # the step starts at the first byte past ASCII: "é" here
            head = b'["\xc3\xa9' + b"a" * j + s
            lines += [head + b"b" * 20 + b'"]', head + b'", "' + b"z" * 20 + b'"]', head + b'"]']
    data = b"\n".join(lines) + b"\n"
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    verdicts = {}
    try:
        for on in (True, False):
            _valid.utf8_simd(on)
            verdicts[on] = [
                first_unsure(data, a, a + len(line) + 1) == a + len(line) + 1
                for a, line in zip(starts, lines, strict=True)
            ]
    finally:
        _valid.utf8_simd(True)
    differ = [line for line, x, y in zip(lines, verdicts[True], verdicts[False], strict=True) if x != y]
    assert not differ, differ[:5]
    accepted_lines = [line for line, ok in zip(lines, verdicts[True], strict=True) if ok]
    for line in accepted_lines:
        assert_safe(line + b"\n")
    for s in _utf8_sequences():  # and no valid sequence refused
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if all(c not in text for c in '"\\') and all(ord(c) >= 0x20 for c in text):
            assert b'["\xc3\xa9' + b"a" * 5 + s + b"b" * 20 + b'"]' in accepted_lines, s
    assert 5_000 < len(accepted_lines) < len(lines) // 2


def test_a_line_s_verdict_does_not_depend_on_the_bytes_after_it() -> None:
    """The 16-byte step reads past the quote that ends a string, into the next line when the string ends
    its line: those bytes must not count against it."""
    for j in range(16):
        good = b'["\xc3\xa9' + b"a" * j + b'"]'
        data = good + b"\n\xff\xfe\x80[1]\n"
        assert first_unsure(data, 0, len(data)) == len(good) + 1


def test_a_range_is_checked_alone() -> None:
    data = b'oops\n{"a": 1}\n[2]\nbad\n'
    assert first_unsure(data, 0, len(data)) == 0
    assert first_unsure(data, 5, len(data)) == 18
    assert first_unsure(data, 5, 18) == 18
    assert first_unsure(data, 5, 12) == 5  # '{"a": ' alone, cut by the range: unsure
    assert first_unsure(bytearray(data), 5, 18) == 18
    assert first_unsure(memoryview(data), 5, 18) == 18
    assert first_unsure(data, 7, 7) == 7


@pytest.mark.parametrize(("a", "b"), [(-1, 3), (3, 2), (0, 100), (2**70, 2**71)])
def test_a_range_outside_the_data_is_refused(a: int, b: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        first_unsure(b"[1]\n[2]\n", a, b)


@pytest.mark.parametrize(
    ("where", "skip_invalid"), [("inline", False), ("inline", True), ("background", False)]
)  # (lines to skip are always checked inline)
def test_a_build_is_the_same_with_the_c_check_and_with_simdjson(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, skip_invalid: bool
) -> None:
    """Blocks holding many lines the walk leaves to the rule (big integers, blank lines, and bad lines
    when they are skipped): the same chunks, counts and big integers, or the same first error, checked
    in the builder or by its background processes."""
    from shardclaim import InputError, create_sharded_dataset
    from shardclaim.dataset import background

    monkeypatch.setattr(background, "BACKGROUND_FROM", 0 if where == "background" else 1 << 62)
    started: list[int] = []
    real_start = background.BackgroundValidator.start

    def start(self: background.BackgroundValidator) -> None:
        started.append(1)
        real_start(self)

    monkeypatch.setattr(background.BackgroundValidator, "start", start)
    rnd = random.Random(7)
    lines = []
    for i in range(3000):
        kind = rnd.random()
        if kind < 0.05:
            lines.append(b'{"id": %d, "big": %d}' % (i, 10**30 + i))
        elif kind < 0.08:
            lines.append(rnd.choice([b"", b"  \t", b"\r"]))
        elif kind < 0.1 and skip_invalid:
            lines.append(rnd.choice([b"{", b"[1,]", b"\xef\xbb\xbf{}", b'{"a": NaN}', b"\x0c"]))
        else:
            lines.append(value(rnd).encode())
    if not skip_invalid:
        lines.insert(2500, b'{"oops": tru}')
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")

    def build(check: str) -> tuple[object, dict[str, bytes]]:
        if check == "simdjson":
            monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
        else:
            monkeypatch.delenv("SHARDCLAIM_SCAN", raising=False)
        out = tmp_path / check
        try:
            master = create_sharded_dataset(
                str(src), str(out), num_shards=3, chunk_size_mb=0.05, skip_invalid=skip_invalid
            )
        except InputError as e:
            return str(e).replace(str(src), "SRC"), {}
        counts = {k: master[k] for k in ("total_tasks", "big_integers", "skipped_invalid", "blank_lines")}
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("chunk_*"))}
        return counts, files

    c, python = build("c"), build("simdjson")
    assert len(started) == (2 if where == "background" else 0)
    assert c == python
    if skip_invalid:
        assert isinstance(c[0], dict)
        assert c[0]["big_integers"] > 100
        assert c[0]["skipped_invalid"] > 10
    else:
        assert isinstance(c[0], str)
        assert c[0].startswith("SRC, line 2501: not valid JSON (")
