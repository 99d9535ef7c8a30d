"""A complete worker for `shardclaim run DS -N 4 -- python examples/process.py OUT`: one output file per
shard, written whole and renamed into place (a re-run replaces it), resuming after finished chunks."""

import json
import os
import sys
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
shard = os.environ["SHARDCLAIM_SHARD_ID"]
chunks = os.environ["SHARDCLAIM_CHUNKS"].splitlines()  # local paths or gs:// URLs (use fsspec for URLs)
first = int(os.environ.get("SHARDCLAIM_RESUME_CHUNK", "0"))  # chunks before it were done by an earlier run
partial = out / f"shard_{shard}.partial.jsonl"
with partial.open("a" if first else "w") as result:
    for i, chunk in enumerate(chunks[first:], start=first):
        with open(chunk) as f:
            for line in f:
                record = json.loads(line)
                result.write(json.dumps({"id": record["id"], "length": len(line)}) + "\n")
        result.flush()
        os.fsync(result.fileno())
        Path(os.environ["SHARDCLAIM_CHECKPOINT_FILE"]).write_text(str(i + 1))  # chunks 0..i are done
partial.rename(out / f"shard_{shard}.jsonl")  # whole, under its final name
