"""Compressed input: ``shardclaim create --no-validate`` on ``.gz`` and ``.zst`` against ``gzip -dc`` and
``zstd -dc`` (to /dev/null) on the same files, side by side in one run.

    python bench/compressed_speed.py [--size-mb 1024] [--profile arc|small] [--rounds 5] [--dir DIR]

Generates the JSONL with ../shared/bench/gen_jsonl.py and compresses it once with ``gzip -6`` and
``zstd -3`` (cached in DIR, default /var/tmp/shardclaim-bench); warms the page cache; then alternates,
round by round: ``gzip -dc``, the ``.gz`` build, ``zstd -dc``, the ``.zst`` build decoded by
python-zstandard in a child process (the default for a large local file), in the builder's process
(``SHARDCLAIM_ZSTD=python``) and by a ``zstd`` process (``SHARDCLAIM_ZSTD=process``) (8 shards, 100 MiB
chunks, each build timed to a final ``sync``). Prints medians and the median over rounds of each build's
ratio to its decompressor's time in the same round: the targets are a ``.gz`` build in at most 0.5x the
time of ``gzip -dc`` and a ``.zst`` build at 80 % of ``zstd -dc``'s speed (at most 1.25x its time).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from build_speed import BENCH_DIR, input_file, run


def compressed(src: Path, suffix: str, tool: list[str]) -> Path:
    path = src.with_name(src.name + suffix)
    if not path.exists():
        print(f"compressing {path} ...", flush=True)
        with path.with_suffix(".part").open("wb") as out:
            subprocess.run([*tool, str(src)], stdout=out, check=True)
        path.with_suffix(".part").rename(path)
    with path.open("rb") as f:  # warm the page cache
        while f.read(64 << 20):
            pass
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--profile", choices=["arc", "small"], default="arc")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    out = args.dir / "out"
    src = input_file(args.dir, args.size_mb, args.profile)
    gz = compressed(src, ".gz", ["gzip", "-6", "-c"])
    zst = compressed(src, ".zst", ["zstd", "-3", "-q", "-c"])
    create = [
        sys.executable,
        "-m",
        "shardclaim",
        "create",
        "--no-validate",
        "--output_dir",
        str(out),
        "--input_file",
    ]
    steps = {
        "gzip -dc": ["sh", "-c", f'mkdir -p "{out}" && exec gzip -dc "{gz}" > /dev/null'],
        "create .gz": [*create, str(gz)],
        "zstd -dc": ["sh", "-c", f'mkdir -p "{out}" && exec zstd -dc -q "{zst}" > /dev/null'],
        "create .zst": ["env", "SHARDCLAIM_ZSTD=auto", *create, str(zst)],
        ".zst (in process)": ["env", "SHARDCLAIM_ZSTD=python", *create, str(zst)],
        ".zst (zstd proc)": ["env", "SHARDCLAIM_ZSTD=process", *create, str(zst)],
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, cmd in steps.items():
            elapsed, _ = run(cmd, out)
            times[name].append(elapsed)
            print(f"round {r + 1}: {name:17s} {elapsed:6.2f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    size = src.stat().st_size / 2**20
    print(f"\n{size:.0f} MiB of JSONL ({args.profile}), .gz {gz.stat().st_size / 2**20:.0f} MiB, "
          f".zst {zst.stat().st_size / 2**20:.0f} MiB; median of {args.rounds} rounds:")  # fmt: skip
    for name, base in (
        ("gzip -dc", None),
        ("create .gz", "gzip -dc"),
        ("zstd -dc", None),
        ("create .zst", "zstd -dc"),
        (".zst (in process)", "zstd -dc"),
        (".zst (zstd proc)", "zstd -dc"),
    ):
        med = statistics.median(times[name])
        line = f"  {name:17s} {med:6.2f} s  {size / med:7.0f} MiB/s"
        if base is not None:
            ratio = statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))
            line += f"  {ratio:5.2f}x the time of {base}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
