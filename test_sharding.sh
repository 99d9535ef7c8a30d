#!/usr/bin/env bash
# End-to-end check of sharding, as the seed describes: 100 test tasks, 8 shards of 0.1 MB chunks, claim,
# verify the metadata, show the tree. Exits non-zero at the first step that is wrong.
# Usage: bash test_sharding.sh [WORKDIR]   (default: a new temporary directory, removed at the end)
set -euo pipefail

PYTHON=${PYTHON:-python3}
WORK=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$WORK"' EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== 1. create 100 test tasks"
"$PYTHON" - "$WORK/tasks.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(100):
        grid = [[(i + r * c) % 10 for c in range(30)] for r in range(30)]
        pairs = [{"input": grid, "output": grid[::-1]} for _ in range(4)]
        f.write(json.dumps({"id": f"task_{i:03d}", "train": pairs, "test": pairs[:1]}) + "\n")
PY
[ "$(wc -l < "$WORK/tasks.jsonl")" -eq 100 ] || fail "expected 100 tasks"

echo "== 2. shard into 8 shards of 0.1 MB chunks"
"$PYTHON" "$HERE/scripts/create_sharded_dataset.py" --input_file "$WORK/tasks.jsonl" \
  --output_dir "$WORK/sharded_dataset" --num_shards 8 --chunk_size_mb 0.1 --verbose

echo "== 3. claim shards"
S=("$PYTHON" "$HERE/scripts/shard_manager.py" --dataset_dir "$WORK/sharded_dataset")
"${S[@]}" --action claim --worker_id machine0_host0 --shard_id 0 | tee "$WORK/claim0.txt"
grep -q "Claimed shard 0 as machine0_host0" "$WORK/claim0.txt" || fail "shard 0 was not claimed"
"${S[@]}" --action claim --worker_id machine0_host1 | tee "$WORK/claim1.txt"
grep -q "Claimed shard [1-7] as machine0_host1" "$WORK/claim1.txt" || fail "a second shard was not claimed"

echo "== 4. verify the metadata"
"$PYTHON" - "$WORK/sharded_dataset" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
master = json.loads((root / "master_metadata.json").read_text())
assert master["num_shards"] == 8 and master["total_tasks"] == 100, master
seen = 0
for entry in master["shards"]:
    meta = json.loads((root / entry["directory"] / "metadata.json").read_text())
    assert meta["shard_id"] == entry["shard_id"] and meta["total_shards"] == 8
    for chunk in meta["chunks"]:
        path = root / entry["directory"] / chunk["file"]
        assert path.stat().st_size == chunk["size_bytes"] <= 0.1 * 2**20, chunk
        assert sum(1 for _ in path.open()) == chunk["num_tasks"]
    assert meta["num_chunks"] >= 2, f"shard {meta['shard_id']} should span several 0.1 MB chunks"
    seen += meta["total_tasks"]
    if meta["status"] == "in_use":
        assert meta["assigned_to"] in ("machine0_host0", "machine0_host1"), meta
assert seen == 100, seen
statuses = [json.loads((root / e["directory"] / "metadata.json").read_text())["status"] for e in master["shards"]]
assert statuses.count("in_use") == 2 and statuses.count("available") == 6, statuses
print("metadata OK: 100 tasks in 8 shards, 2 in use")
PY
"${S[@]}" --action status | tee "$WORK/status.txt"
grep -q "Shard 0: in_use (assigned to: machine0_host0)" "$WORK/status.txt" || fail "status does not show shard 0"
"${S[@]}" --action complete --shard_id 0
"${S[@]}" --action reset --shard_id 0
# Captured, not piped into `grep -q`: grep leaves at its first match, and under pipefail the writer's
# broken pipe would fail the step.
"${S[@]}" --action status > "$WORK/status_after_reset.txt"
grep -q "Shard 0: available" "$WORK/status_after_reset.txt" || fail "reset did not free shard 0"

echo "== 5. directory structure"
if command -v tree > /dev/null; then tree "$WORK/sharded_dataset"; else find "$WORK/sharded_dataset" -not -name '.shardclaim*' | sort; fi
echo "OK: sharding works"
