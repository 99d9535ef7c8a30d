"""``shardclaim cat``: a shard's records as JSONL on stdout, verified before a byte of a chunk is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from shardclaim import create_file_tasks, create_sharded_dataset, iter_shard_records


def cat(ds: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", "cat", ds, *args], capture_output=True, timeout=300, check=False
    )


def build(tmp_path: Path, url: str, n: int = 3000) -> list[bytes]:
    lines = [orjson.dumps({"id": i, "text": 'é\\"x' * (i % 90)}) + b"\n" for i in range(n)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines))
    create_sharded_dataset(str(src), url, num_shards=3, chunk_size_mb=0.02)
    return lines


def test_cat_writes_every_chunk_of_the_shard_as_stored(shared_url: str, tmp_path: Path) -> None:
    lines = build(tmp_path, shared_url)
    outputs = []
    for shard in range(3):
        result = cat(shared_url, "--shard_id", str(shard))
        assert result.returncode == 0, result.stderr
        records = [orjson.dumps(r) + b"\n" for r in iter_shard_records(shared_url, shard)]
        assert result.stdout == b"".join(records)
        outputs.append(result.stdout)
    assert sorted(b"".join(outputs).splitlines(keepends=True)) == sorted(lines)


def test_from_chunk_starts_where_a_checkpoint_says(tmp_path: Path) -> None:
    ds = str(tmp_path / "ds")
    build(tmp_path, ds)
    meta = orjson.loads((tmp_path / "ds" / "shard_001" / "metadata.json").read_bytes())
    assert meta["num_chunks"] > 2
    chunks = [(tmp_path / "ds" / "shard_001" / c["file"]).read_bytes() for c in meta["chunks"]]
    result = cat(ds, "--shard_id", "1", "--from-chunk", "2")
    assert result.stdout == b"".join(chunks[2:])
    past = cat(ds, "--shard_id", "1", "--from-chunk", str(meta["num_chunks"] + 1))
    assert past.returncode == 1
    assert b"is past them" in past.stderr


def test_a_corrupt_chunk_stops_the_output_before_any_of_its_bytes(tmp_path: Path) -> None:
    ds = str(tmp_path / "ds")
    build(tmp_path, ds)
    shard = tmp_path / "ds" / "shard_000"
    meta = orjson.loads((shard / "metadata.json").read_bytes())
    chunks = [(shard / c["file"]).read_bytes() for c in meta["chunks"]]
    bad = bytearray(chunks[2])
    bad[10] ^= 0x01  # one bit: same size, another CRC32C
    (shard / meta["chunks"][2]["file"]).write_bytes(bytes(bad))
    result = cat(ds, "--shard_id", "0")
    assert result.returncode == 1
    assert b"chunk_0002.jsonl: CRC32C" in result.stderr
    assert result.stdout == chunks[0] + chunks[1]


def piped(ds: str, shard: int, consumer: list[str]) -> tuple[bytes, bytes]:
    """``shardclaim cat DS --shard_id N | CONSUMER``: the consumer's stdout and cat's stderr."""
    producer = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "cat", ds, "--shard_id", str(shard)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdout is not None
    assert producer.stderr is not None
    consumer_result = subprocess.run(
        consumer, stdin=producer.stdout, capture_output=True, timeout=300, check=True
    )
    producer.stdout.close()  # the consumer's end is the only reader: a consumer that left closes the pipe
    errors = producer.stderr.read()
    producer.wait(timeout=300)
    producer.stderr.close()
    return consumer_result.stdout, errors


def test_a_shell_command_consumes_a_shard_through_a_pipe(tmp_path: Path) -> None:
    ds = str(tmp_path / "ds")
    build(tmp_path, ds, n=900)
    count = "import sys, json; print(sum(1 for line in sys.stdin if json.loads(line)['id'] >= 0))"
    out, _ = piped(ds, 2, [sys.executable, "-c", count])
    master = orjson.loads((tmp_path / "ds" / "master_metadata.json").read_bytes())
    assert int(out) == master["shards"][2]["total_tasks"] > 0


def test_file_tasks_come_out_as_json_strings(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"f{i}.bin").write_bytes(b"x" * (i + 1))
    ds = str(tmp_path / "ds")
    create_file_tasks(str(tmp_path / "*.bin"), ds, 2)
    got = [orjson.loads(line) for s in range(2) for line in cat(ds, "--shard_id", str(s)).stdout.splitlines()]
    assert sorted(got) == [os.path.join(tmp_path, f"f{i}.bin") for i in range(4)]


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    ds = str(tmp_path / "ds")
    build(tmp_path, ds)
    out, errors = piped(ds, 0, ["head", "-c", "10"])
    assert len(out) == 10
    assert errors == b""


def rewrite_on_second_read(monkeypatch: Any, module: Any, path_end: str, rewrite: Any) -> list[str]:
    """``module.blocks`` (the reads of verified.verified_blocks), with ``rewrite()`` run just before the
    second read of the file whose path ends with ``path_end``: between its check and its serving."""
    real, reads = module.blocks, []

    def reading(fs: Any, path: str, *args: Any) -> Any:
        if path.endswith(path_end):
            reads.append(path)
            if len(reads) == 2:
                rewrite()
        return real(fs, path, *args)

    monkeypatch.setattr(module, "blocks", reading)
    return reads


def test_a_large_chunk_rewritten_after_its_check_stops_the_output(tmp_path: Path, monkeypatch: Any) -> None:
    """A chunk too large to hold in memory is checked by one read and served by a second: written to in
    between (the same size, its modification time put back), none of its changed bytes goes out."""
    import pytest

    from shardclaim.dataset import cat as cat_module
    from shardclaim.dataset import verified
    from shardclaim.errors import ChunkCorruptError

    ds = str(tmp_path / "ds")
    build(tmp_path, ds)
    shard = tmp_path / "ds" / "shard_000"
    meta = orjson.loads((shard / "metadata.json").read_bytes())
    target = shard / meta["chunks"][1]["file"]
    monkeypatch.setattr(cat_module, "_IN_MEMORY", 16)  # every chunk takes the two-read path
    monkeypatch.setattr(verified, "BLOCK", 4096)  # blocks before the changed one go out, checked

    def rewrite() -> None:
        st = target.stat()
        data = target.read_bytes()
        at = data.index(b'"id":', len(data) // 2)  # in a later block
        target.write_bytes(data[:at] + b'"ID":' + data[at + 5 :])
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

    reads = rewrite_on_second_read(monkeypatch, cat_module, f"shard_000/{target.name}", rewrite)
    out: list[bytes] = []
    with pytest.raises(ChunkCorruptError, match="changed while it was read"):
        out.extend(cat_module.shard_jsonl(ds, 0))
    assert len(reads) == 2
    served = b"".join(out)
    assert b'"ID":' not in served
    first = (shard / meta["chunks"][0]["file"]).read_bytes()
    assert served.startswith(first)
    assert len(served) > len(first)  # the unchanged blocks before the change did go out


def test_chunks_served_by_two_reads_come_out_whole_from_every_store(
    shared_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The two-read path (chunks over 64 MiB), on a directory and both test buckets: whole when nothing
    writes; stopped when a chunk is rewritten (same size, other bytes) between its two reads."""
    import pytest

    from shardclaim.dataset import cat as cat_module
    from shardclaim.dataset import verified
    from shardclaim.dataset.localfs import filesystem
    from shardclaim.errors import ChunkCorruptError

    lines = build(tmp_path, shared_url, n=600)
    monkeypatch.setattr(cat_module, "_IN_MEMORY", 16)
    monkeypatch.setattr(verified, "BLOCK", 4096)  # many blocks a chunk, each checked against the first read
    out = b"".join(b"".join(cat_module.shard_jsonl(shared_url, s)) for s in range(3))
    assert sorted(out.splitlines(keepends=True)) == sorted(lines)
    fs, base = filesystem(shared_url)
    path = f"{base}/shard_000/chunk_0000.jsonl"

    def rewrite() -> None:
        with fs.open(path, "rb") as f:
            data = f.read()
        with fs.open(path, "wb") as f:  # the same size, other bytes
            f.write(data.replace(b'"id"', b'"ID"'))

    reads = rewrite_on_second_read(monkeypatch, cat_module, "shard_000/chunk_0000.jsonl", rewrite)
    with pytest.raises(ChunkCorruptError, match="changed while it was read"):
        b"".join(cat_module.shard_jsonl(shared_url, 0))
    assert len(reads) == 2


def test_cat_of_a_directory_that_is_no_dataset_says_so(tmp_path: Path) -> None:
    result = cat(str(tmp_path), "--shard_id", "0")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"shardclaim: {tmp_path} is not a complete shardclaim dataset: it has no master_metadata.json\n"
    )
