"""The line walk of a block, in C (``shardclaim._scan``) and by numpy (the fallback), against a plain
Python reference: the same counts, cuts and blank lines, the same refusals, and the C walk leaves the
GIL."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from shardclaim.dataset import lineends

Blanks = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Scan:
    count_and_blanks: Callable[..., tuple[int, Blanks]]
    plan_runs: Callable[..., tuple[Blanks, list[int]]]


def _c_scan() -> Scan:
    from shardclaim import _scan

    return Scan(_scan.count_and_blanks, _scan.plan_runs)


not_built = pytest.mark.skipif(
    not lineends.BUILT, reason="shardclaim._scan is not built (installed without a C compiler?)"
)


@pytest.fixture(params=[pytest.param("c", marks=not_built), "numpy"])
def scan(request: pytest.FixtureRequest) -> Scan:
    if request.param == "c":
        return _c_scan()
    return Scan(lineends.numpy_count_and_blanks, lineends.numpy_plan_runs)


def reference_count(data: bytes, a: int, b: int) -> tuple[int, Blanks]:
    count, blanks, pos = 0, [], a
    while (nl := data.find(b"\n", pos, b)) >= 0:
        if not data[pos : nl + 1].strip(b" \t\r\n"):
            blanks.append((pos, nl + 1))
        count, pos = count + 1, nl + 1
    return count, blanks


def reference_plan(data: bytes, start: int, end: int, share: int) -> tuple[Blanks, list[int]]:
    counts, pos = [], start
    while pos < end:
        cut = end if pos + share >= end else data.index(b"\n", pos + share - 1, end) + 1
        counts.append(data.count(b"\n", pos, cut))
        pos = cut
    return reference_count(data, start, end)[1], counts


KINDS = [
    b"\n",
    b"  \n",
    b"\t\r\n",
    b"\r\n",
    b" \t \r \n",
    b"\r\r\n",
    b"\x0c\n",  # a form feed is not JSON whitespace: an invalid line, not a blank one
    b" \x0c \n",
    b' {"a": 1}\n',
    b'\t\t{"b": [2]}\r\n',
    b'{"a": 1}\n',
    b"y" * 300 + b"\n",
]


def random_block(rng: random.Random) -> tuple[bytes, list[int]]:
    """Lines of every kind after a lead without a line end, often with a tail without one; and the
    offsets where the lines begin (the last: where they end)."""
    lead = b"z" * rng.randint(0, 40)
    parts = [rng.choice(KINDS) for _ in range(rng.randint(0, 300))]
    tail = rng.choice([b"", b"tail-without-newline", b"  ", b"\r"])
    bounds = [len(lead)]
    for p in parts:
        bounds.append(bounds[-1] + len(p))
    return lead + b"".join(parts) + tail, bounds


def shapes(data: bytes) -> list[bytes | bytearray | memoryview]:
    return [data, bytearray(data), memoryview(data)]


def test_count_and_blanks_matches_the_reference_on_random_blocks(scan: Scan) -> None:
    rng = random.Random(11)
    for i in range(400):
        data, _ = random_block(rng)
        a = rng.randint(0, len(data))
        b = rng.randint(a, len(data))
        expected = reference_count(data, a, b)
        assert scan.count_and_blanks(shapes(data)[i % 3], a, b) == expected
        assert scan.count_and_blanks(data, 0, len(data)) == reference_count(data, 0, len(data))


def test_plan_runs_matches_the_reference_on_random_blocks(scan: Scan) -> None:
    rng = random.Random(12)
    for i in range(400):
        data, bounds = random_block(rng)
        start = rng.choice(bounds)
        end = rng.choice([b for b in bounds if b >= start])
        share = rng.choice([1, 2, 7, 64, 500, rng.randint(1, 2 * len(data) + 1), 1 << 62, 1 << 70])
        expected = reference_plan(data, start, end, share)
        assert scan.plan_runs(shapes(data)[i % 3], start, end, share) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", (0, [])),
        (b"\n", (1, [(0, 1)])),
        (b"  ", (0, [])),  # no line end: no line, so no blank one
        (b'{"a": 1}\n \t\r\n', (2, [(9, 13)])),
        (b"\x0c\n\n", (2, [(2, 3)])),
        (b' {"a": 1}\n', (1, [])),
        (b"\r\n\r\n", (2, [(0, 2), (2, 4)])),
        (b"\n\n  ", (2, [(0, 1), (1, 2)])),
    ],
)
def test_count_and_blanks_on_small_cases(scan: Scan, data: bytes, expected: tuple[int, Blanks]) -> None:
    for shape in shapes(data):
        assert scan.count_and_blanks(shape, 0, len(data)) == expected


def test_a_range_inside_the_buffer_is_read_alone(scan: Scan) -> None:
    data = b"  \nab\n\n x\n \n"
    assert scan.count_and_blanks(data, 3, 10) == (3, [(6, 7)])
    assert scan.count_and_blanks(data, 4, 6) == (1, [])  # from mid-line: "b\n"
    assert scan.count_and_blanks(data, 2, 2) == (0, [])
    assert scan.plan_runs(data, 3, 10, 3) == ([(6, 7)], [1, 2])
    assert scan.plan_runs(data, 7, 7, 5) == ([], [])
    assert scan.plan_runs(data, 0, 12, 1 << 62) == ([(0, 3), (6, 7), (10, 12)], [5])


@pytest.mark.parametrize(("a", "b"), [(-1, 3), (0, 13), (5, 4), (13, 13), (0, 1 << 70), (-(1 << 70), 0)])
def test_a_range_outside_the_buffer_is_refused(scan: Scan, a: int, b: int) -> None:
    data = bytearray(b"one\ntwo\nthr\n")
    with pytest.raises(ValueError, match="len"):
        scan.count_and_blanks(data, a, b)
    with pytest.raises(ValueError, match="len"):
        scan.plan_runs(data, a, b, 4)


@pytest.mark.parametrize("share", [0, -1, -(1 << 40)])
def test_plan_runs_refuses_a_share_that_is_not_positive(scan: Scan, share: int) -> None:
    with pytest.raises(ValueError, match="share"):
        scan.plan_runs(b"a\nb\n", 0, 4, share)


def test_plan_runs_refuses_a_range_of_partial_lines(scan: Scan) -> None:
    """The cutting would not finish there (numpy's loop never did)."""
    for data in (b"a\nb", b"ab", b" "):
        with pytest.raises(ValueError, match="whole lines"):
            scan.plan_runs(data, 0, len(data), 1)


def test_something_other_than_a_buffer_is_a_type_error(scan: Scan) -> None:
    with pytest.raises(TypeError):
        scan.count_and_blanks("a\n", 0, 2)


def test_the_c_scan_serves_calls_unless_the_environment_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDCLAIM_SCAN", raising=False)
    assert lineends.implementation() == ("c" if lineends.BUILT else "numpy")
    monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
    assert lineends.implementation() == "numpy"
    assert lineends.count_and_blanks(b"\nx\n", 0, 3) == (2, [(0, 1)])
    assert lineends.plan_runs(b"\nx\n", 0, 3, 1) == ([(0, 1)], [1, 1])


@not_built
def test_with_the_c_scan_a_build_never_loads_numpy() -> None:
    code = (
        "import sys\n"
        "from shardclaim.dataset import deal\n"
        "data = b'{}\\n' * 100000\n"
        "deal.plan_block(data, 0, len(data), 2)\n"
        "deal.lines_and_blanks(data, 0, len(data))\n"
        "print('numpy' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SHARDCLAIM_SCAN"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


@not_built
def test_the_c_scan_leaves_the_gil_while_it_walks() -> None:
    """The scan holds the buffer exported (a bytearray then refuses to grow) only inside the C call,
    and the GIL is free then only if the walk left it: the main thread, running Python while a second
    thread scans over and over, sees the export. Without the GIL released it never could, and the
    test fails when the scans (a fixed number) are done; no clock is read."""
    c = _c_scan()
    data = bytearray(b'{"text": "' + b"x" * 460 + b'"}\n') * 40000  # about 19 MB, 40,000 lines
    n = len(data)
    seen = threading.Event()
    results: list[tuple[int, Blanks]] = []

    def scan_until_seen() -> None:
        for _ in range(2000):
            results.append(c.count_and_blanks(data, 0, n))
            if seen.is_set():
                return

    thread = threading.Thread(target=scan_until_seen)
    thread.start()
    while thread.is_alive() and not seen.is_set():
        try:
            data.append(0x20)  # past n: the scans never read it
        except BufferError:
            seen.set()
            continue
        while True:
            try:
                del data[-1]
                break
            except BufferError:  # exported between the two: seen too; this waits for the scan's end
                seen.set()
    thread.join()
    assert seen.is_set()
    assert all(r == (40000, []) for r in results)
