"""Builder speed and memory against GNU ``split -C 100M``, measured side by side in one run.

    python bench/build_speed.py [--size-mb 2048] [--rounds 5] [--rss-sizes 1024,4096] [--dir DIR]

Generates the input with ../shared/bench/gen_jsonl.py (cached in DIR, default /var/tmp/shardclaim-bench),
warms the page cache, then alternates, round by round: ``split -C 100M``, ``dd oflag=direct`` (the disk's
own speed for one sequential copy), ``shardclaim create --no-validate`` and ``shardclaim create`` (every
line validated), 8 shards of 100 MiB chunks. Each timing includes a final ``sync`` of the output.
Prints medians, and the median over rounds of each round's ratio to that round's ``split`` (robust to
the disk's speed drifting between rounds); then the peak RSS of ``shardclaim create`` at each of
--rss-sizes (MiB of input), which should not grow with the input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT.parent / "shared" / "bench" / "gen_jsonl.py"


def input_file(directory: Path, size_mb: int) -> Path:
    path = directory / f"tasks_{size_mb}m.jsonl"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        subprocess.run(
            [sys.executable, str(GEN), "--out", str(path), "--size-mb", str(size_mb), "--seed", "1234"],
            check=True,
        )
    with path.open("rb") as f:  # warm the page cache, as the baselines in DESIGN.md were taken
        while f.read(64 << 20):
            pass
    return path


def run(cmd: list[str], out: Path) -> tuple[float, int]:
    """Wall seconds (including sync) and peak RSS in KiB of one command writing to ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(2)  # let the filesystem finish discarding the previous output (ext4 -o discard here)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    os.sync()
    elapsed = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {status}")
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, usage.ru_maxrss


def commands(src: Path, out: Path) -> dict[str, list[str]]:
    create = [
        sys.executable,
        "-m",
        "shardclaim",
        "create",
        "--input_file",
        str(src),
        "--output_dir",
        str(out),
    ]
    return {
        "split -C 100M": ["sh", "-c", f'mkdir -p "{out}" && exec split -C 100M "{src}" "{out}/x"'],
        # The disk alone: one sequential copy with direct I/O, the floor for anything writing 2 GiB.
        "dd oflag=direct": [
            "sh",
            "-c",
            f'mkdir -p "{out}" && exec dd if="{src}" of="{out}/x" bs=2M oflag=direct status=none',
        ],
        "create --no-validate": [*create, "--no-validate"],
        "create (validated)": create,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rss-sizes", default="1024,4096")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/shardclaim-bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    out = args.dir / "out"

    src = input_file(args.dir, args.size_mb)
    times: dict[str, list[float]] = {name: [] for name in commands(src, out)}
    for r in range(args.rounds):
        for name, cmd in commands(src, out).items():
            elapsed, _ = run(cmd, out)
            times[name].append(elapsed)
            print(f"round {r + 1}: {name:22s} {elapsed:6.2f} s", flush=True)
    size = src.stat().st_size / 2**20
    print(f"\n{size:.0f} MiB input, 8 shards, 100 MiB chunks, median of {args.rounds} rounds:")
    for name, samples in times.items():
        med = statistics.median(samples)
        # Each round's ratio to the split run just before it: the disk's mood drifts between rounds.
        ratio = statistics.median(t / s for t, s in zip(samples, times["split -C 100M"], strict=True))
        print(f"  {name:22s} {med:6.2f} s  {size / med:7.0f} MiB/s  {ratio:5.2f}x split")
    print("\npeak RSS of `shardclaim create` (validated):")
    for mb in (int(x) for x in args.rss_sizes.split(",") if x):
        src = input_file(args.dir, mb)
        _, rss = run(commands(src, out)["create (validated)"], out)
        print(f"  {mb:6d} MiB input: {rss / 1024:6.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
