"""Line validation on one core: the C walk (``shardclaim._valid``) against simdjson and orjson called once
a line from Python, side by side in one run, on lines already in memory.

    python bench/validate_speed.py [--small-mb 256] [--arc-mb 256] [--rounds 5] [--dir DIR]

Reads the first ``--small-mb`` MiB of ~470-byte records (``--profile small``) and ``--arc-mb`` MiB of
ARC-style ones (~10 KB), both generated and cached in DIR as bench/build_speed.py does. Then times, round
by round, each way of checking every line: the C walk over the whole buffer in one call (as a background
validator walks a block), the same with UTF-8 checked a sequence at a time rather than 16 bytes (the way
of a CPU without SSSE3), the C walk called once a line (as the inline path does), simdjson's
``Parser.parse`` once a line (the previous validator, today's fallback), and ``orjson.loads`` once a
line (which builds the objects). Prints medians in M lines/s and MB/s, and each one's speed against
simdjson's in the same round. One core: a build runs one validator per CPU but one (see
``shardclaim.dataset.background.validators``), so this is what each of them does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import simdjson
from build_speed import BENCH_DIR, input_file

from shardclaim._valid import first_unsure, utf8_simd


def whole(data: bytes, lines: list[bytes]) -> None:
    assert first_unsure(data, 0, len(data)) == len(data)


def whole_utf8_scalar(data: bytes, lines: list[bytes]) -> None:
    """As ``whole``, but UTF-8 checked one sequence a step (as on a CPU without SSSE3)."""
    utf8_simd(False)
    try:
        assert first_unsure(data, 0, len(data)) == len(data)
    finally:
        utf8_simd(True)


def per_line_c(data: bytes, lines: list[bytes]) -> None:
    walk = first_unsure
    for line in lines:
        if walk(line, 0, len(line)) != len(line):
            raise AssertionError(line[:80])


def per_line_simdjson(data: bytes, lines: list[bytes]) -> None:
    parse = simdjson.Parser().parse
    for line in lines:
        parse(line)


def per_line_orjson(data: bytes, lines: list[bytes]) -> None:
    loads = orjson.loads
    for line in lines:
        loads(line)


WAYS: dict[str, Callable[[bytes, list[bytes]], None]] = {
    "C walk, one call": whole,
    "same, UTF-8 a sequence a step": whole_utf8_scalar,
    "C walk, a call a line": per_line_c,
    "simdjson, a call a line": per_line_simdjson,
    "orjson.loads, a call a line": per_line_orjson,
}


def bench(src: Path, mib: int, rounds: int) -> None:
    with src.open("rb") as f:
        data = f.read(mib << 20)
    data = data[: data.rindex(b"\n") + 1]
    lines = data.splitlines(keepends=True)
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(rounds):
        for name, way in WAYS.items():
            t = time.perf_counter()
            way(data, lines)
            times[name].append(time.perf_counter() - t)
    mib = len(data) / 2**20
    print(f"\n{src.name}: first {mib:.0f} MiB, {len(lines):,} lines, median of {rounds} rounds:")
    base = times["simdjson, a call a line"]
    for name, samples in times.items():
        med = statistics.median(samples)
        ratio = statistics.median(b / t for t, b in zip(samples, base, strict=True))
        print(f"  {name:30s} {len(lines) / med / 1e6:6.2f} M lines/s {len(data) / med / 1e6:7.0f} MB/s"
              f"  {ratio:5.2f}x simdjson")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=256, help="MiB of ~470-byte records (0: none)")
    parser.add_argument("--arc-mb", type=int, default=256, help="MiB of ~10 KB records (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.small_mb:
        bench(input_file(args.dir, max(args.small_mb, 1024), "small"), args.small_mb, args.rounds)
    if args.arc_mb:
        bench(input_file(args.dir, max(args.arc_mb, 1024)), args.arc_mb, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
