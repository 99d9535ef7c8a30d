"""Builder speed and memory against GNU ``split -C 100M``, measured side by side in one run.

    python bench/build_speed.py [--size-mb 2048] [--small-mb 1024] [--rounds 5] [--rss-sizes 1024,4096]
                                [--dir DIR]

Generates the inputs with ../shared/bench/gen_jsonl.py (cached in DIR, default /var/tmp/shardclaim-bench):
``--size-mb`` of ARC-style records (10 KB on average) and ``--small-mb`` of small ones (``--profile small``,
about 470 bytes: the per-line cost; 0 skips it). It warms the page cache, then alternates, round by round,
on each input: ``split -C 100M``, ``dd oflag=direct`` (one sequential copy through direct I/O, from a
buffer in 4 KiB pages, which this VM's disk takes as three requests per 2 MiB write: not the disk's
limit, see ``write_floor.py``), ``shardclaim create --no-validate`` and ``shardclaim create`` (every
line validated), 8 shards of 100 MiB chunks, and ``shardclaim create --no-validate --by-reference`` (no
chunk written; the bytes it writes are shown as a share of the input). Each timing includes a final
``sync`` of the output. Prints medians, and the median over rounds of each round's ratio to that round's
``split`` on the same input (robust to the machine's speed drifting between rounds), with lines/s for
the small records; then the peak RSS of ``shardclaim create`` at each of --rss-sizes (MiB of input),
which should not grow with the input.
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
#: Where every benchmark keeps its generated inputs (``--dir``'s default), so that they share them.
BENCH_DIR = Path("/var/tmp/shardclaim-bench")


def input_file(directory: Path, size_mb: int, profile: str = "arc") -> Path:
    path = directory / (f"tasks_{size_mb}m.jsonl" if profile == "arc" else f"{profile}_{size_mb}m.jsonl")
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        subprocess.run(
            [sys.executable, str(GEN), "--out", str(path), "--size-mb", str(size_mb), "--seed", "1234",
             "--profile", profile],
            check=True,
        )  # fmt: skip
    with path.open("rb") as f:  # warm the page cache, as the baselines in DESIGN.md were taken
        while f.read(64 << 20):
            pass
    return path


# Bytecode is cached, as on a user's machine (an environment that turns the cache off would charge every
# run ~0.1 s for compiling the package's modules again; the first round writes the cache).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def written(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0


def run(cmd: list[str], out: Path, sizes: dict[str, int] | None = None) -> tuple[float, int]:
    """Wall seconds (including sync) and peak RSS in KiB of one command writing to ``out`` (its bytes
    written go into ``sizes["written"]``)."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(2)  # let the filesystem finish discarding the previous output (ext4 -o discard here)
    t = time.perf_counter()
    # The peak RSS that wait4 reports counts this process's own peak too: the child starts as a vfork
    # of it, and Linux carries that high-water mark across exec. So this process keeps its own small
    # (counting lines 64 MiB at a time once made every later reading 141.7 MiB, not the 77.6 MiB a
    # build takes).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    os.sync()
    elapsed = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {status}")
    if sizes is not None:
        sizes["written"] = written(out)
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, usage.ru_maxrss


def commands(src: Path, out: Path, *, disk: bool = True) -> dict[str, list[str]]:
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
        # The disk alone: one sequential copy with direct I/O, the floor for anything writing the input.
        **(
            {
                "dd oflag=direct": [
                    "sh", "-c",
                    f'mkdir -p "{out}" && exec dd if="{src}" of="{out}/x" bs=2M oflag=direct status=none',
                ]
            }
            if disk
            else {}
        ),
        "create --no-validate": [*create, "--no-validate"],
        "create (validated)": create,
        "create --by-reference": [*create, "--no-validate", "--by-reference"],
    }  # fmt: skip


def bench(src: Path, out: Path, rounds: int, *, disk: bool) -> None:
    times: dict[str, list[float]] = {name: [] for name in commands(src, out, disk=disk)}
    sizes: dict[str, int] = {}
    for r in range(rounds):
        for name, cmd in commands(src, out, disk=disk).items():
            elapsed, _ = run(cmd, out, sizes if "by-reference" in name else None)
            times[name].append(elapsed)
            print(f"round {r + 1}: {name:22s} {elapsed:6.2f} s", flush=True)
    byref_written = sizes.get("written", 0)
    size = src.stat().st_size / 2**20
    with src.open("rb") as f:  # small reads: see run() on peak RSS
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(4 << 20), b""))
    print(f"\n{src.name}: {size:.0f} MiB, {lines:,} lines, 8 shards, 100 MiB chunks, "
          f"median of {rounds} rounds:")  # fmt: skip
    for name, samples in times.items():
        med = statistics.median(samples)
        # Each round's ratio to the split run just before it: the disk's mood drifts between rounds.
        ratio = statistics.median(t / s for t, s in zip(samples, times["split -C 100M"], strict=True))
        print(f"  {name:22s} {med:6.2f} s  {size / med:7.0f} MiB/s  {lines / med / 1e6:5.2f} M lines/s"
              f"  {ratio:5.2f}x split")  # fmt: skip
    share = byref_written / src.stat().st_size
    print(f"  --by-reference wrote {byref_written:,} bytes: {share:.4%} of the input")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--small-mb", type=int, default=1024, help="MiB of ~470-byte records (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rss-sizes", default="1024,4096")
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    out = args.dir / "out"

    if args.size_mb:
        bench(input_file(args.dir, args.size_mb), out, args.rounds, disk=True)
    if args.small_mb:
        bench(input_file(args.dir, args.small_mb, "small"), out, args.rounds, disk=True)
    print("\npeak RSS of `shardclaim create` (validated):")
    for mb in (int(x) for x in args.rss_sizes.split(",") if x):
        src = input_file(args.dir, mb)
        _, rss = run(commands(src, out)["create (validated)"], out)
        print(f"  {mb:6d} MiB input: {rss / 1024:6.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
