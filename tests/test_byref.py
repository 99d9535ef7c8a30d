"""Zero-copy datasets (``--by-reference``): chunks are pinned, checksummed byte ranges of the inputs. They
give back exactly the input's records, and a source changed after the build is refused, never read."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from shardclaim import (
    ChunkCorruptError,
    InputError,
    MetadataError,
    ShardManager,
    create_sharded_dataset,
    iter_shard_records,
)
from shardclaim.dataset.cat import shard_jsonl
from shardclaim.layout import chunks_digest


def lines(n: int, *, seed: int = 0) -> list[bytes]:
    return [
        orjson.dumps({"id": i, "seed": seed, "text": 'é\\"\t' * ((i * 31 + seed) % 70)}) for i in range(n)
    ]


def awkward_input(path: Path, records: list[bytes]) -> bytes:
    """A BOM, blank lines of every kind, a record longer than a chunk, no newline at the end."""
    body = bytearray(b"\xef\xbb\xbf")
    for i, record in enumerate(records):
        body += record + b"\n"
        if i % 211 == 0:
            body += [b"\n", b"  \n", b"\t\r\n"][i % 3]
    body += orjson.dumps({"huge": "h" * 40_000}) + b"\n"
    body += b'{"last": true}'
    path.write_bytes(bytes(body))
    return bytes(body)


def records_of(body: bytes) -> list[bytes]:
    return [line for line in body.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip(b" \t\r")]


def build(tmp_path: Path, url: str, *, shards: int = 4) -> list[bytes]:
    a = awkward_input(tmp_path / "a.jsonl", lines(3000))
    b = awkward_input(tmp_path / "b.jsonl", lines(700, seed=1))
    create_sharded_dataset(
        [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], url,
        num_shards=shards, chunk_size_mb=0.03, by_reference=True,
    )  # fmt: skip
    return records_of(a) + records_of(b)


def cat_all(url: str, shards: int) -> bytes:
    out = []
    for shard in range(shards):
        result = subprocess.run(
            [sys.executable, "-m", "shardclaim", "cat", url, "--shard_id", str(shard)],
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out.append(result.stdout)
    return b"".join(out)


def test_shards_give_back_exactly_the_input_records_in_order(shared_url: str, tmp_path: Path) -> None:
    want = build(tmp_path, shared_url)
    assert cat_all(shared_url, 4) == b"".join(r + b"\n" for r in want)
    raw = [r for s in range(4) for r in iter_shard_records(shared_url, s, parse=False)]
    assert raw == want
    parsed = [r for s in range(4) for r in iter_shard_records(shared_url, s)]
    assert parsed == [orjson.loads(r) for r in want]


def test_the_build_writes_only_metadata_and_pins_each_source(tmp_path: Path) -> None:
    want = build(tmp_path, str(tmp_path / "ds"))
    written = [p for p in (tmp_path / "ds").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(p.name for p in written) == ["master_metadata.json"] + ["metadata.json"] * 4
    size = (tmp_path / "a.jsonl").stat().st_size + (tmp_path / "b.jsonl").stat().st_size
    assert sum(p.stat().st_size for p in written) < 0.05 * size  # and < 1% on a real input: see bench/
    master = orjson.loads((tmp_path / "ds" / "master_metadata.json").read_bytes())
    assert master["format_version"] == 2
    assert master["kind"] == "by_reference"
    assert master["total_tasks"] == len(want)
    assert master["blank_lines"] == len(range(0, 3000, 211)) + len(range(0, 700, 211))
    a = tmp_path / "a.jsonl"
    assert master["sources"][0] == {"url": str(a), "size": a.stat().st_size, "mtime_ns": a.stat().st_mtime_ns}
    sizes = [s["size_bytes"] for s in master["shards"]]
    assert max(sizes) - min(sizes) < 50_000  # consecutive runs of about a quarter of the bytes each


def test_a_source_changed_after_the_build_is_refused(tmp_path: Path) -> None:
    ds = str(tmp_path / "ds")
    build(tmp_path, ds)
    a = tmp_path / "a.jsonl"
    before = a.read_bytes()
    stat = a.stat()
    a.write_bytes(before + b'{"appended": 1}\n')
    with pytest.raises(ChunkCorruptError, match="the source changed after the build"):
        next(iter_shard_records(ds, 0))
    # The same size and modification time, other bytes: the ranges' CRC32C catch it, range by range.
    changed = bytearray(before)
    changed[-20] = ord("Z")
    a.write_bytes(bytes(changed))
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    where = len(before) - 20
    hit = [
        shard
        for shard in range(4)
        for c in orjson.loads((tmp_path / "ds" / f"shard_{shard:03d}" / "metadata.json").read_bytes())[
            "chunks"
        ]
        if c["source"] == 0 and c["offset"] <= where < c["offset"] + c["size_bytes"]
    ]
    assert len(hit) == 1
    assert list(iter_shard_records(ds, 0 if hit[0] else 3))  # untouched ranges still read
    with pytest.raises(ChunkCorruptError, match="CRC32C"):
        list(iter_shard_records(ds, hit[0]))
    result = subprocess.run(
        [sys.executable, "-m", "shardclaim", "cat", ds, "--shard_id", str(hit[0])],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1
    assert b"the source changed" in result.stderr


def test_a_source_on_gcs_is_pinned_by_generation(gcs_bucket: str, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("gs")
    body = b"".join(r + b"\n" for r in lines(2000))
    fs.pipe(f"{gcs_bucket}/in/data.jsonl", body)
    ds = str(tmp_path / "ds")
    master = create_sharded_dataset(f"gs://{gcs_bucket}/in/data.jsonl", ds, num_shards=2, by_reference=True)
    assert master["sources"][0]["url"] == f"gs://{gcs_bucket}/in/data.jsonl"
    assert "generation" in master["sources"][0]
    assert cat_all(ds, 2) == body
    fs.pipe(f"{gcs_bucket}/in/data.jsonl", body)  # the same bytes, rewritten: another generation
    with pytest.raises(ChunkCorruptError, match="generation"):
        list(shard_jsonl(ds, 0))


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        ("gz", {}, "a compressed input cannot be read by reference"),
        ("plain", {"skip_invalid": True}, "--skip-invalid cannot be used with --by-reference"),
        ("bad", {}, r"in.jsonl, line 3: not valid JSON"),
        ("plain", {"num_shards": 50}, "cannot fill 50 shards"),
    ],
)
def test_what_cannot_be_read_by_reference_is_refused(
    tmp_path: Path, setup: str, kwargs: dict[str, object], message: str
) -> None:
    body = b"".join(r + b"\n" for r in lines(20))
    src = tmp_path / ("in.jsonl.gz" if setup == "gz" else "in.jsonl")
    if setup == "gz":
        src.write_bytes(gzip.compress(body))
    elif setup == "bad":
        src.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": NaN}\n')
    else:
        src.write_bytes(body)
    with pytest.raises(InputError, match=message):
        create_sharded_dataset(
            str(src), str(tmp_path / "ds"), **{"num_shards": 2, "by_reference": True, **kwargs}
        )  # type: ignore[arg-type]
    assert not (tmp_path / "ds").exists()


def test_hostile_ranges_are_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    build(tmp_path, str(ds))
    meta_path = ds / "shard_001" / "metadata.json"
    good = orjson.loads(meta_path.read_bytes())
    first = good["chunks"][0]
    hostile = [
        [{**first, "offset": good["sources"][0]["size"]}],  # past the end of its source
        [{k: v for k, v in first.items() if k != "crc32c"}],
        [{**first, "source": 2}],
        [{**first, "file": "../x.jsonl"}],
    ]
    for chunks in hostile:
        meta_path.write_bytes(orjson.dumps({**good, "chunks": chunks + good["chunks"][1:]}))
        with pytest.raises(MetadataError):
            list(iter_shard_records(str(ds), 1))
    meta_path.write_bytes(
        orjson.dumps({**good, "sources": [{**good["sources"][0], "url": "/etc/passwd"}] * 2})
    )
    with pytest.raises(MetadataError, match="differ from the master's"):
        list(iter_shard_records(str(ds), 1))
    newline = {**good["sources"][0], "url": good["sources"][0]["url"] + "\n/etc/passwd"}
    meta_path.write_bytes(orjson.dumps({**good, "sources": [newline]}))
    with pytest.raises(MetadataError, match="expected an absolute path or URL"):
        list(iter_shard_records(str(ds), 1))


def test_a_source_whose_name_holds_a_newline_is_refused(tmp_path: Path) -> None:
    """SHARDCLAIM_CHUNKS names one range a line: a source name with a newline would read as two."""
    src = tmp_path / "a\nb.jsonl"
    src.write_bytes(b'{"i": 1}\n{"i": 2}\n')
    with pytest.raises(InputError, match="control character"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=1, by_reference=True)
    assert not (tmp_path / "ds").exists()


WORK = """
import json, os, pathlib, subprocess, sys
out = pathlib.Path(sys.argv[1])
ranges = os.environ["SHARDCLAIM_CHUNKS"].splitlines()
assert all("#bytes=" in r for r in ranges), ranges
cat = subprocess.run([sys.executable, "-m", "shardclaim", "cat", os.environ["SHARDCLAIM_DATASET"],
                      "--shard_id", os.environ["SHARDCLAIM_SHARD_ID"]], capture_output=True, check=True)
ids = [[r.get("seed"), r.get("id")] for r in map(json.loads, cat.stdout.splitlines())]
name = f"shard_{os.environ['SHARDCLAIM_SHARD_ID']}.attempt_{os.environ['SHARDCLAIM_ATTEMPT']}.json"
(out / name).write_text(json.dumps(ids))
"""


def test_run_serves_ranges_and_every_record_is_processed_once(shared_url: str, tmp_path: Path) -> None:
    want = build(tmp_path, shared_url)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", shared_url, "-N", "2", "--",
         sys.executable, "-c", WORK, str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = [tuple(x) for f in out.iterdir() for x in json.loads(f.read_text())]
    expected = [(r.get("seed"), r.get("id")) for r in map(orjson.loads, want)]
    assert sorted(done, key=str) == sorted(expected, key=str)


def test_scanning_in_two_processes_gives_the_same_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import ranges

    awkward_input(tmp_path / "a.jsonl", lines(20_000))
    masters = []
    for name, parallel_from in (("two", 0), ("one", 1 << 60)):
        monkeypatch.setattr(ranges, "PARALLEL_FROM", parallel_from)
        create_sharded_dataset(
            str(tmp_path / "a.jsonl"),
            str(tmp_path / name),
            num_shards=3,
            chunk_size_mb=0.2,
            by_reference=True,
        )
        masters.append([orjson.loads((tmp_path / name / f"shard_{s:03d}" / "metadata.json").read_bytes())
                        for s in range(3)])  # fmt: skip
    assert masters[0] == masters[1]
    assert sum(len(s["chunks"]) for s in masters[0]) > 6


def test_a_range_scan_carries_lines_across_reads_and_grows_for_long_ones(tmp_path: Path) -> None:
    import crc32c

    from shardclaim.dataset.ranges import scan_range

    body = (
        b"".join(r + b"\n" + (b"  \n" if i % 7 == 0 else b"") for i, r in enumerate(lines(300)))
        + b'{"end": 1}'
    )
    (tmp_path / "x.jsonl").write_bytes(body)
    start = body.index(b"\n") + 1  # a range starts at a line: after record 0, at its blank line
    want = (300, len(range(0, 300, 7)), crc32c.crc32c(body[start:]))
    for size in (8, 64, 1000, 1 << 20):  # smaller than one line: the buffer grows
        assert scan_range(str(tmp_path / "x.jsonl"), start, len(body), buf=bytearray(size)) == want


@pytest.mark.parametrize("cut", ["start", "end"])
@pytest.mark.parametrize("big", [False, True])
def test_a_range_cut_inside_a_line_is_refused_even_with_its_true_crc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str, big: bool
) -> None:
    """Hand-edited metadata whose range starts or ends inside a line, with the CRC32C of exactly those
    bytes: a reader would serve part of a record as one. Refused before any of its bytes, on the path
    of ranges held in memory and of those read twice."""
    from shardclaim.crc import crc32c
    from shardclaim.dataset import byref_read

    if big:
        monkeypatch.setattr(byref_read, "_IN_MEMORY", 16)
    ds = tmp_path / "ds"
    build(tmp_path, str(ds), shards=2)
    meta_path = ds / "shard_001" / "metadata.json"
    meta = orjson.loads(meta_path.read_bytes())
    chunk = meta["chunks"][1]
    source = Path(meta["sources"][chunk["source"]]["url"]).read_bytes()
    offset, size = chunk["offset"], chunk["size_bytes"]
    offset, size = (offset + 5, size - 5) if cut == "start" else (offset, size - 5)
    forged = {
        **chunk,
        "offset": offset,
        "size_bytes": size,
        "crc32c": f"{crc32c(source[offset : offset + size]):08x}",
    }
    meta["chunks"][1] = forged
    meta_path.write_bytes(orjson.dumps(meta))
    with pytest.raises(MetadataError, match="not those the build recorded"):  # the master says otherwise
        list(iter_shard_records(str(ds), 1, parse=False))
    claimed = ShardManager(str(ds), "w").claim_shard(1)  # shard 1 is skipped as invalid (a warning)
    assert claimed is not None
    assert claimed["shard_id"] == 0
    master_path = ds / "master_metadata.json"  # an editor of the master too: the ranges' own checks
    master = orjson.loads(master_path.read_bytes())
    master["shards"][1]["chunks_crc32c"] = chunks_digest(meta["chunks"])
    master_path.write_bytes(orjson.dumps(master))
    got: list[bytes] = []
    with pytest.raises(ChunkCorruptError, match=f"does not {cut} at a line's {cut}"):
        got.extend(iter_shard_records(str(ds), 1, parse=False, start_chunk=1))
    assert got == []
