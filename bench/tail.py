"""The tail of a job with a straggler: the documented worker loop without and with stealing.

    python bench/tail.py [--workers 4] [--shards 8] [--chunks 12] [--records 10] [--ms 10] [--slow 8]

A local directory dataset of SHARDS shards x CHUNKS chunks x RECORDS records. WORKERS processes run
``for claim in manager.claims(steal=...): with claim: for record in claim.records(): work()``, where
work takes MS milliseconds, SLOW times that on worker 0. The baseline is the ideal makespan: total work
/ total speed. Prints, for each mode, when the last record was processed and when the last worker exited,
as multiples of the ideal, and checks that every record was processed exactly once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardclaim import ShardManager, create_sharded_dataset


def worker(ds: str, name: str, seconds: float, steal: bool, files: tuple[str, str]) -> None:
    go, out = files
    while not Path(go).exists():
        time.sleep(0.001)
    done: list[str] = []
    with ShardManager(ds, name, lease_seconds=20, heartbeat_seconds=5) as m:
        for claim in m.claims(steal=steal):
            ids: list[str] = []
            with claim:
                for record in claim.records():
                    time.sleep(seconds)
                    ids.append(f"{record['id']} {time.time()}")
            if claim.outcome == "completed":
                done += ids
    Path(out).write_text("\n".join(done) + "\n" + f"exit {time.time()}\n")


def run(args: argparse.Namespace, steal: bool) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        total = args.shards * args.chunks * args.records
        src = work / "in.jsonl"  # records of one size, so that a chunk holds exactly --records of them
        src.write_text("".join(f'{{"id": {i}, "pad": "{"x" * (8 - len(str(i)))}"}}\n' for i in range(total)))
        size = len('{"id": 0, "pad": "xxxxxxx"}\n')
        ds = str(work / "ds")
        create_sharded_dataset(str(src), ds, num_shards=args.shards, strategy="contiguous",
                               chunk_size_mb=args.records * size / (1 << 20))  # fmt: skip
        m = ShardManager(ds, "bench")
        chunks = {m.read_shard(i)["num_chunks"] for i in range(args.shards)}
        ctx = mp.get_context("spawn")
        go = work / "go"
        procs = []
        for i in range(args.workers):
            seconds = args.ms / 1000 * (args.slow if i == 0 else 1)
            out = str(work / f"w{i}.out")
            procs.append(ctx.Process(target=worker, args=(ds, f"w{i}", seconds, steal, (str(go), out))))
        for p in procs:
            p.start()
        time.sleep(2.0)  # let every process import and wait at the start line
        start = time.time()
        go.write_text("go")
        for p in procs:
            p.join()
        ids, last, exits = [], 0.0, 0.0
        for i in range(args.workers):
            for line in (work / f"w{i}.out").read_text().split("\n"):
                if line.startswith("exit "):
                    exits = max(exits, float(line.split()[1]))
                elif line:
                    rid, when = line.split()
                    ids.append(int(rid))
                    last = max(last, float(when))
        assert sorted(ids) == list(range(total)), "a record was lost or processed twice"
        assert chunks == {args.chunks}, f"chunks per shard: {chunks}"
        return last - start, exits - start, len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--records", type=int, default=10, help="per chunk")
    parser.add_argument("--ms", type=float, default=10.0, help="work per record on a fast worker")
    parser.add_argument("--slow", type=float, default=8.0, help="how much slower worker 0 is")
    args = parser.parse_args()
    total = args.shards * args.chunks * args.records
    speed = (args.workers - 1) / (args.ms / 1000) + 1 / (args.ms / 1000 * args.slow)
    ideal = total / speed
    print(
        f"{total} records, {args.workers} workers (one {args.slow:g}x slower): ideal makespan {ideal:.2f} s"
    )
    for steal in (False, True):
        last, exits, n = run(args, steal)
        mode = "claims(steal=True) " if steal else "claims()           "
        print(f"{mode} last record at {last:6.2f} s = {last / ideal:4.2f}x ideal; last worker exit "
              f"{exits:6.2f} s = {exits / ideal:4.2f}x; {n} records, each once")  # fmt: skip


if __name__ == "__main__":
    main()
