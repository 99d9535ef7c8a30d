#!/usr/bin/env python3
"""Fan-out → fan-in in plain Python: split a JSONL file into shards, process them with several worker
processes, and merge the per-shard results exactly once.

    python examples/split_process_merge.py [WORKDIR]

Each worker writes its shard's result whole to RESULTS/shard_NNN.jsonl (a re-run after a crash replaces
it), and whichever worker finds every shard settled first merges them, under shardclaim's fan-in guard.
Point DATASET at gs://bucket/path and run this on many machines for the same result.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any

from shardclaim import ShardManager, create_sharded_dataset
from shardclaim.fanin import finalize_once


def worker(dataset: str, results: str) -> None:
    with ShardManager(dataset) as manager:
        for claim in manager.claims():
            with claim:
                out = Path(results) / f"shard_{claim.shard_id:03d}.jsonl"
                tmp = out.with_suffix(".tmp")
                with tmp.open("w") as f:
                    for record in claim.records():
                        f.write(json.dumps({"id": record["id"], "length": len(record["text"])}) + "\n")
                tmp.replace(out)  # the shard's result appears whole or not at all

        def merge(summary: dict[str, Any]) -> None:
            parts = sorted(Path(results).glob("shard_*.jsonl"))
            rows = [json.loads(line) for part in parts for line in part.open()]
            rows.sort(key=lambda r: r["id"])
            (Path(results) / "merged.json").write_text(json.dumps({"state": summary["state"], "rows": rows}))

        finalize_once(manager, merge)


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    source = work / "input.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": "x" * (i % 97)}) + "\n" for i in range(1000)))
    dataset, results = str(work / "dataset"), work / "results"
    results.mkdir(exist_ok=True)
    create_sharded_dataset(str(source), dataset, num_shards=8, chunk_size_mb=0.01, overwrite=True)

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(dataset, str(results))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()

    merged = json.loads((results / "merged.json").read_text())
    print(f"{merged['state']}: merged {len(merged['rows'])} rows from 8 shards into {results}/merged.json")
    return 0 if merged["state"] == "succeeded" and len(merged["rows"]) == 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
