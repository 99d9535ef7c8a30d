"""Where a raw build's time goes: the disk's write speed, the builder's fixed cost, and the rest.

    python bench/write_floor.py [--small-mb 1024] [--rounds 6] [--dir DIR]

On the small-record input of ``build_speed.py`` (about 470-byte records), alternating round by round, each
timing including a final ``sync``:

- ``split -C 100M``: the baseline of the issue's target;
- ``direct writes alone``: the builder's own write pattern with nothing else to do: the input's bytes in
  8 files, 2 MiB ``O_DIRECT`` writes from 16 rotating buffers of the builder's staging memory
  (``staging_arena``), 4 writer threads (as ``shardclaim.dataset.chunks``), the buffers filled once
  before the clock starts; no reading of the input, no line work, no copy. No build that writes the
  input through direct I/O can be faster than this;
- ``create, tiny input``: ``shardclaim create --no-validate`` of a 100-line input: the fixed cost of a build
  (interpreter start, imports, the output's staging and lock, publishing, exit);
- ``create --no-validate``: the build itself.

Prints medians and each one's median ratio to ``split`` in the same round.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from build_speed import _ENV, BENCH_DIR, input_file, run

from shardclaim.dataset.localfs import staging_arena

_BUFFER = 2 << 20
_BUFFERS = 16
_WRITERS = 4
_FILES = 8


def direct_writes(src: Path, out: Path) -> float:
    """Seconds (including sync) to write ``src``'s size as the builder does, with nothing else to do."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    size = src.stat().st_size
    arena = staging_arena(_BUFFER * _BUFFERS)  # the builder's own memory: private, in huge pages
    with src.open("rb") as f:  # real bytes in the buffers (content does not matter here: measured)
        f.readinto(arena)  # type: ignore[attr-defined]
    buffers = [memoryview(arena)[i * _BUFFER : (i + 1) * _BUFFER] for i in range(_BUFFERS)]
    fds = [os.open(out / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644) for i in range(_FILES)]
    jobs: queue.Queue[tuple[int, memoryview, int]] = queue.Queue()
    per_file = -(-size // _FILES // _BUFFER) * _BUFFER
    k = 0
    for offset in range(0, per_file, _BUFFER):
        for fd in fds:
            jobs.put((fd, buffers[k % _BUFFERS], offset))
            k += 1
    os.sync()
    time.sleep(2)  # as build_speed.run: let the filesystem finish discarding the previous output

    def writer() -> None:
        while True:
            try:
                fd, buffer, offset = jobs.get_nowait()
            except queue.Empty:
                return
            os.pwrite(fd, buffer, offset)

    t = time.perf_counter()
    threads = [threading.Thread(target=writer) for _ in range(_WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for fd in fds:
        os.fdatasync(fd)
        os.close(fd)
    os.sync()
    elapsed = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = input_file(args.dir, args.small_mb, "small")
    tiny = args.dir / "tiny_100.jsonl"
    with src.open("rb") as f:
        tiny.write_bytes(b"".join(f.readline() for _ in range(100)))
    out = args.dir / "out"
    create = [sys.executable, "-m", "shardclaim", "create", "--output_dir", str(out), "--no-validate"]
    subprocess.run([*create, "--input_file", str(tiny), "--overwrite"], check=True, env=_ENV,
                   stdout=subprocess.DEVNULL)  # fmt: skip  # (writes the bytecode cache)
    names = ["split -C 100M", "direct writes alone", "create, tiny input", "create --no-validate"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            if name == "direct writes alone":
                elapsed = direct_writes(src, out)
            elif name == "split -C 100M":
                cmd = ["sh", "-c", f'mkdir -p "{out}" && exec split -C 100M "{src}" "{out}/x"']
                elapsed, _ = run(cmd, out)
            else:
                elapsed, _ = run([*create, "--input_file", str(tiny if "tiny" in name else src)], out)
            times[name].append(elapsed)
            print(f"round {r + 1}: {name:22s} {elapsed:6.2f} s", flush=True)
    print(f"\n{src.name}, median of {args.rounds} rounds (ratio: median over rounds of time / split's):")
    for name, samples in times.items():
        ratio = statistics.median(t / s for t, s in zip(samples, times["split -C 100M"], strict=True))
        print(f"  {name:22s} {statistics.median(samples):6.2f} s  {ratio:5.2f}x split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
