"""The dataset builder and reader: byte-exact, balanced, bounded chunks, atomic publish, verified reads."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import itertools
import logging
import lzma
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from shardclaim import (
    ChunkCorruptError,
    DatasetExistsError,
    InputError,
    create_sharded_dataset,
    iter_shard_records,
)

MiB = 1 << 20


def records(n: int, *, size: int = 200, seed: int = 0) -> list[bytes]:
    """n JSON lines of varied length (about ``size`` bytes on average) with unicode and escapes."""
    out = []
    for i in range(n):
        pad = 'é"\\\tx' * (((i * 7919 + seed) % (size // 3)) // 4)
        out.append(orjson.dumps({"id": i, "text": pad, "grid": [[i % 10] * 3]}) + b"\n")
    return out


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def dataset_lines(out: Path) -> list[bytes]:
    return [
        line
        for chunk in sorted(out.glob("shard_*/chunk_*.jsonl"))
        for line in chunk.read_bytes().splitlines(True)
    ]


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def test_output_lines_are_exactly_the_non_blank_input_lines(tmp_path: Path) -> None:
    lines = records(500)
    body = b"".join(lines[:100]) + b"\n  \n\r\n" + b"".join(lines[100:]) + b"\n"
    src = tmp_path / "in.jsonl"
    src.write_bytes(body[:-2])  # the last record loses its newline
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=7, chunk_size_mb=0.01)
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(lines)
    assert master["total_tasks"] == 500
    assert master["blank_lines"] == 3


def test_metadata_matches_the_chunk_files_and_chunks_respect_the_limit(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(400, size=600))
    limit_mb = 0.02
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=4, chunk_size_mb=limit_mb)
    assert load(tmp_path / "ds" / "master_metadata.json") == master
    assert master["format_version"] == 1
    total = 0
    for entry in master["shards"]:
        meta = load(tmp_path / "ds" / entry["directory"] / "metadata.json")
        assert meta["status"] == "available"
        assert (meta["assigned_to"], meta["started_at"], meta["completed_at"]) == (None, None, None)
        assert meta["num_chunks"] == len(meta["chunks"]) == entry["num_chunks"] > 1
        for chunk in meta["chunks"]:
            data = (tmp_path / "ds" / entry["directory"] / chunk["file"]).read_bytes()
            assert len(data) == chunk["size_bytes"] <= limit_mb * MiB
            assert data.count(b"\n") == chunk["num_tasks"]
            assert abs(chunk["size_mb"] - len(data) / MiB) < 1e-5
        assert sum(c["num_tasks"] for c in meta["chunks"]) == meta["total_tasks"] == entry["total_tasks"]
        total += meta["total_tasks"]
    assert total == master["total_tasks"] == 400


def test_a_record_larger_than_a_chunk_gets_a_chunk_of_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    big = orjson.dumps({"blob": "z" * 30_000}) + b"\n"
    lines = [*records(20), big, *records(20, seed=1)]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="shardclaim.dataset"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=1, chunk_size_mb=0.01)
    assert "larger than the" in caplog.text
    chunks = sorted((tmp_path / "ds" / "shard_000").glob("chunk_*.jsonl"))
    assert [c.read_bytes() for c in chunks].count(big) == 1
    assert all(c.stat().st_size <= 0.01 * MiB for c in chunks if c.read_bytes() != big)


def test_round_robin_balances_count_and_bytes_even_on_size_sorted_input(tmp_path: Path) -> None:
    lines = sorted(records(2000, size=900), key=len)
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    chunk_mb = 0.05
    master = create_sharded_dataset(
        str(src), str(tmp_path / "ds"), num_shards=8, chunk_size_mb=chunk_mb, strategy="round_robin"
    )
    counts = [s["total_tasks"] for s in master["shards"]]
    sizes = [s["size_bytes"] for s in master["shards"]]
    assert max(counts) - min(counts) <= 1
    assert max(sizes) - sum(sizes) / len(sizes) <= chunk_mb * MiB


def test_blocks_deals_runs_of_equal_bytes_even_on_size_sorted_input(tmp_path: Path) -> None:
    """The default: runs of about block / 4N bytes in rotation, so bytes balance within about a run
    (records then differ: the runs of short lines hold more of them)."""
    lines = sorted(records(12_000, size=900), key=len)
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=8, chunk_size_mb=0.05)
    assert master["strategy"] == "blocks"
    run = src.stat().st_size / 32  # one 8 MiB block at most: 4 runs per shard
    sizes = [s["size_bytes"] for s in master["shards"]]
    assert max(sizes) - min(sizes) <= run + 2 * max(map(len, lines))
    counts = [s["total_tasks"] for s in master["shards"]]
    assert max(counts) - min(counts) > 1  # runs, not lines: the test would not notice line dealing
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(lines)
    for entry in master["shards"]:  # every chunk holds whole lines, counted right, under the limit
        meta = load(tmp_path / "ds" / entry["directory"] / "metadata.json")
        for chunk in meta["chunks"]:
            data = (tmp_path / "ds" / entry["directory"] / chunk["file"]).read_bytes()
            assert data.count(b"\n") == chunk["num_tasks"]
            assert data.endswith(b"\n")
            assert len(data) <= 0.05 * MiB


def test_blocks_is_round_robin_on_a_small_input(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(300))
    for strategy in ("blocks", "round_robin"):
        create_sharded_dataset(str(src), str(tmp_path / strategy), num_shards=8, strategy=strategy)  # type: ignore[arg-type]
    assert dataset_lines(tmp_path / "blocks") == dataset_lines(tmp_path / "round_robin")


@pytest.mark.parametrize(
    "validate", [False, True]
)  # blank lines found by the scans, or by the validating walk
@pytest.mark.parametrize("size", [600, 12_000])  # lines counted byte by byte, or walked line to line
def test_blocks_leaves_out_blank_lines_inside_runs(tmp_path: Path, size: int, validate: bool) -> None:
    lines = records(6000, size=size)
    body = bytearray()
    for i, line in enumerate(lines):
        body += line
        if i % 997 == 0:
            body += [b"\n", b"  \n", b"\t\r\n", b"\n\n"][i % 4]
    src = tmp_path / "in.jsonl"
    src.write_bytes(bytes(body))
    master = create_sharded_dataset(
        str(src), str(tmp_path / "ds"), num_shards=4, chunk_size_mb=0.1, validate=validate
    )
    assert master["strategy"] == "blocks"
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(lines)
    assert master["blank_lines"] == sum(2 if i % 4 == 3 else 1 for i in range(0, 6000, 997))
    assert master["total_tasks"] == 6000


def test_contiguous_shards_are_consecutive_runs_of_the_input(tmp_path: Path) -> None:
    lines = records(1001)
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    master = create_sharded_dataset(
        str(src), str(tmp_path / "ds"), num_shards=4, chunk_size_mb=0.02, strategy="contiguous"
    )
    counts = [s["total_tasks"] for s in master["shards"]]
    assert max(counts) - min(counts) <= 1
    assert dataset_lines(tmp_path / "ds") == lines  # shard by shard, chunk by chunk: the input order


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", gzip.compress), (".zst", zstandard.compress), (".bz2", bz2.compress), (".xz", lzma.compress)],
)
@pytest.mark.parametrize("where", ["path", "url"])
def test_compressed_input_is_read_by_suffix(tmp_path: Path, suffix: str, compress: Any, where: str) -> None:
    """Local paths are read without fsspec, URLs through it: both decompress by suffix."""
    lines = records(300)
    src = tmp_path / f"in.jsonl{suffix}"
    src.write_bytes(compress(b"".join(lines)))
    name = str(src) if where == "path" else f"file://{src}"
    master = create_sharded_dataset(name, str(tmp_path / "ds"), num_shards=3, chunk_size_mb=0.01)
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(lines)
    assert master["inputs"] == [name]


def test_several_inputs_by_glob_or_list_are_one_stream_in_order(tmp_path: Path) -> None:
    a, b = records(50), records(70, seed=3)
    write_jsonl(tmp_path / "part-0.jsonl", a)
    (tmp_path / "part-1.jsonl.gz").write_bytes(gzip.compress(b"".join(b)))
    out1 = tmp_path / "ds1"
    create_sharded_dataset(str(tmp_path / "part-*"), str(out1), num_shards=1, strategy="contiguous")
    assert dataset_lines(out1) == a + b
    out2 = tmp_path / "ds2"
    create_sharded_dataset(
        [str(tmp_path / "part-1.jsonl.gz"), str(tmp_path / "part-0.jsonl")], str(out2), num_shards=1
    )
    assert dataset_lines(out2) == b + a


@pytest.fixture(params=["main-thread", "background"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Validation in the main thread (small inputs) or in two background processes (large local
    inputs): the same answers either way. The background case checks that it really ran."""
    from shardclaim.dataset import background

    in_background = request.param == "background"
    monkeypatch.setattr(background, "BACKGROUND_FROM", 0 if in_background else 1 << 62)
    started = []
    real_init = background.BackgroundValidator.__init__

    def spy(self: Any, files: list[Any]) -> None:
        started.append(files)
        real_init(self, files)

    monkeypatch.setattr(background.BackgroundValidator, "__init__", spy)
    yield request.param
    assert bool(started) == in_background


def test_a_malformed_line_names_file_and_line_and_publishes_nothing(tmp_path: Path, validator: str) -> None:
    lines = records(30)
    lines[17] = b'{"id": 17, "broken": \n'
    src = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError, match=r"bad\.jsonl, line 18: not valid JSON"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()
    assert list((tmp_path / "ds").glob("shard_*")) == []


def test_skip_invalid_skips_and_counts(tmp_path: Path) -> None:
    lines = records(30)
    lines[3] = b"not json\n"
    lines[9] = b"[1, 2\n"
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2, skip_invalid=True)
    assert (master["total_tasks"], master["skipped_invalid"]) == (28, 2)
    assert b"not json\n" not in dataset_lines(tmp_path / "ds")


def test_no_validate_trusts_the_input(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [b"not json\n", *records(5)])
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2, validate=False)
    assert master["total_tasks"] == 6
    assert master["validated"] is False


def test_an_existing_dataset_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(40))
    out = tmp_path / "ds"
    create_sharded_dataset(str(src), str(out), num_shards=2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    with pytest.raises(DatasetExistsError, match="already holds a dataset"):
        create_sharded_dataset(str(src), str(out), num_shards=4)
    assert {p: p.read_bytes() for p in before} == before
    master = create_sharded_dataset(str(src), str(out), num_shards=4, overwrite=True)
    assert master["num_shards"] == 4
    assert not (out / "shard_000" / "chunk_0001.jsonl").exists() or master["shards"][0]["num_chunks"] > 1


def test_a_directory_with_foreign_files_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(10))
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatasetExistsError, match="not part of a shardclaim dataset"):
        create_sharded_dataset(str(src), str(out), num_shards=2, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_killed_build_never_looks_complete_and_a_rebuild_cleans_it(tmp_path: Path) -> None:
    from tests.test_build_output import leftovers, paused_build

    lines = records(24_000, size=1200)  # more than one 8 MiB block: the builder reads whole blocks
    out = tmp_path / "ds"
    with paused_build(tmp_path, out, "--num_shards", "4", "--chunk_size_mb", "0.05") as (proc, w):
        w.write(b"".join(lines))  # the first block read and dealt before the write returns
        w.flush()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [p for staging in leftovers(tmp_path) for p in Path(staging).glob("shard_*/chunk_*.jsonl")]
    assert not (out / "master_metadata.json").exists()
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    master = create_sharded_dataset(str(src), str(out), num_shards=2, chunk_size_mb=0.5)
    assert master["total_tasks"] == 24_000
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "master_metadata.json", "shard_000", "shard_001",
    ]  # fmt: skip
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_shards": 0}, "num_shards must be a positive integer"),
        ({"num_shards": -3}, "num_shards must be a positive integer"),
        ({"chunk_size_mb": 0}, "chunk_size_mb must be a positive number"),
        ({"chunk_size_mb": -1.5}, "chunk_size_mb must be a positive number"),
        ({"strategy": "random"}, "strategy must be"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(5))
    with pytest.raises(ValueError, match=message):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()


def test_empty_input_and_too_many_shards_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    with pytest.raises(InputError, match="no records"):
        create_sharded_dataset(str(empty), str(tmp_path / "ds"))
    few = write_jsonl(tmp_path / "few.jsonl", records(3))
    with pytest.raises(InputError, match="3 records cannot fill 8 shards"):
        create_sharded_dataset(str(few), str(tmp_path / "ds"), num_shards=8)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()
    with pytest.raises(InputError, match="not found"):
        create_sharded_dataset(str(tmp_path / "missing.jsonl"), str(tmp_path / "ds"))
    with pytest.raises(InputError, match="no input file matches"):
        create_sharded_dataset(str(tmp_path / "nothing-*.jsonl"), str(tmp_path / "ds"))


def test_reading_a_shard_back_yields_its_records_in_chunk_order(tmp_path: Path) -> None:
    lines = records(100)
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=3, chunk_size_mb=0.001)
    got = [r["id"] for s in range(3) for r in iter_shard_records(str(tmp_path / "ds"), s)]
    assert sorted(got) == list(range(100))
    raw = list(iter_shard_records(str(tmp_path / "ds"), 1, parse=False))
    assert raw[0] == lines[1].rstrip(b"\n")
    with pytest.raises(ValueError, match=r"shard_id must be in 0\.\.2"):
        next(iter_shard_records(str(tmp_path / "ds"), 3))
    # A range of chunks: consecutive ranges give back the shard's records, once each, in order.
    meta = orjson.loads((tmp_path / "ds" / "shard_001" / "metadata.json").read_bytes())
    assert meta["num_chunks"] >= 3
    whole = list(iter_shard_records(str(tmp_path / "ds"), 1, parse=False))
    parts = [
        list(iter_shard_records(str(tmp_path / "ds"), 1, parse=False, start_chunk=c, stop_chunk=c + 1))
        for c in range(meta["num_chunks"])
    ]
    assert [len(p) for p in parts] == [c["num_tasks"] for c in meta["chunks"]]
    assert [r for p in parts for r in p] == whole


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_chunk_is_detected_before_any_record_is_yielded(tmp_path: Path, damage: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(50))
    create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=1, chunk_size_mb=1)
    chunk = tmp_path / "ds" / "shard_000" / "chunk_0000.jsonl"
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[100] ^= 0x01
    else:
        del data[-10:]
    chunk.write_bytes(bytes(data))
    it = iter_shard_records(str(tmp_path / "ds"), 0, parse=False)
    with pytest.raises(ChunkCorruptError, match="CRC32C" if damage == "flip" else "bytes, metadata records"):
        next(it)


@pytest.mark.gcs
def test_a_dataset_can_be_built_on_gcs_and_read_back(tmp_path: Path, gcs_bucket: str) -> None:
    lines = records(120)
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    url = f"gs://{gcs_bucket}/datasets/one"
    master = create_sharded_dataset(str(src), url, num_shards=3, chunk_size_mb=0.005)
    assert master["total_tasks"] == 120
    got = [orjson.dumps(r) + b"\n" for s in range(3) for r in iter_shard_records(url, s)]
    assert Counter(got) == Counter(lines)
    with pytest.raises(DatasetExistsError):
        create_sharded_dataset(str(src), url, num_shards=3)


def test_the_seed_script_builds_with_fractional_chunks(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(100))
    script = Path(__file__).resolve().parent.parent / "scripts" / "create_sharded_dataset.py"
    args = ["--input_file", str(src), "--output_dir", str(tmp_path / "ds"), "--num_shards", "8",
            "--chunk_size_mb", "0.1", "--verbose"]  # fmt: skip
    ok = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "100 records -> 8 shards" in ok.stdout
    again = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert "already holds a dataset" in again.stderr


@pytest.mark.parametrize("bad_index", [0, 18, 19, 20, 21, 39])
def test_the_line_number_is_right_wherever_the_bad_line_falls(
    tmp_path: Path, bad_index: int, validator: str
) -> None:
    # 40 lines of 20 bytes: the background validators split the file at byte 400, a line boundary.
    lines = [b'{"i": %10d}  \n' % i for i in range(40)]
    assert {len(x) for x in lines} == {20}
    lines[bad_index] = b'{"i": "broken      \n'
    assert len(lines[bad_index]) == 20
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError, match=rf"in\.jsonl, line {bad_index + 1}: not valid JSON"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)


def test_with_several_bad_lines_the_first_in_input_order_is_reported(tmp_path: Path, validator: str) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", records(20))
    lines = records(300)
    lines[250] = b"{oops\n"
    lines[120] = b"[1,\n"
    second = tmp_path / "b.jsonl.gz"
    second.write_bytes(gzip.compress(b"".join(lines)))
    with pytest.raises(InputError, match=r"b\.jsonl\.gz, line 121: not valid JSON"):
        create_sharded_dataset([str(first), str(second)], str(tmp_path / "ds"), num_shards=2)
    bad_first = write_jsonl(tmp_path / "c.jsonl", [*records(10), b"nope\n"])
    with pytest.raises(InputError, match=r"c\.jsonl, line 11"):
        create_sharded_dataset([str(bad_first), str(second)], str(tmp_path / "ds"), num_shards=2)


def test_the_master_lists_each_input_once_even_with_a_comma_in_its_name(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "part a, part b.jsonl", records(10))
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)
    assert len(master["inputs"]) == 1
    assert master["inputs"][0].endswith("part a, part b.jsonl")


def test_a_local_build_does_not_import_fsspec(tmp_path: Path) -> None:
    """fsspec's import alone is ~70 ms, half the builder's fixed cost; local paths do without it."""
    src = write_jsonl(tmp_path / "in.jsonl", records(30))
    code = (
        "import sys\n"
        "from shardclaim.cli import main\n"
        f"assert main(['create', '--input_file', {str(src)!r}, '--output_dir', {str(tmp_path / 'ds')!r},"
        " '--num_shards', '2']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 'gcsfs', 'asyncio')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert [r["id"] for s in range(2) for r in iter_shard_records(str(tmp_path / "ds"), s)]


def test_inputs_from_an_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    lines = records(80)
    with fsspec.open("memory://shardclaim-test/in.jsonl", "wb") as f:
        f.write(b"".join(lines))
    master = create_sharded_dataset("memory://shardclaim-test/in*.jsonl", str(tmp_path / "ds"), num_shards=2)
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(lines)
    assert master["inputs"] == ["memory:///shardclaim-test/in.jsonl"]  # as fsspec names it


def test_both_ways_of_counting_lines_and_finding_blank_ones_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from shardclaim.dataset import deal

    rng = random.Random(3)
    for _ in range(200):
        kinds = [b"\n", b"  \n", b"\t\r\n", b" x\n", b'{"a": 1}\n', b"y" * rng.randint(1, 5000) + b"\n"]
        parts = [rng.choice(kinds) for _ in range(rng.randint(1, 40))]
        data = b"".join(parts)
        monkeypatch.setattr(deal, "_LONG_LINE", 1 << 30)  # always counted byte by byte
        counted = deal.lines_and_blanks(data, 0, len(data))
        monkeypatch.setattr(deal, "_LONG_LINE", 0)  # always walked line to line (without the C scan)
        monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
        walked = deal.lines_and_blanks(data, 0, len(data))
        monkeypatch.delenv("SHARDCLAIM_SCAN")
        blanks = [i for i, p in enumerate(parts) if not p.strip()]
        assert counted == walked
        assert counted[0] == len(parts)
        assert len(counted[1]) == len(blanks)


def test_a_blocks_plan_from_its_line_ends_matches_counting_each_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_block on short lines (numpy's line ends, lineends) against a plain reference: the cuts
    deal_block makes, each run's newlines by bytes.count, the blank lines by is_blank, on blocks that start
    inside a buffer (the builder's blocks begin after the line carried from the last read)."""
    import random

    from shardclaim.dataset import deal
    from shardclaim.dataset.inputs import is_blank

    rng = random.Random(7)
    kinds = [b"\n", b"  \n", b"\t\r\n", b"\x0c\n", b" x\n", b'{"a": 1}\n', b"\r\n", b"y" * 300 + b"\n"]
    for _ in range(300):
        lead = b"z" * rng.randint(0, 50)
        parts = [rng.choice(kinds) for _ in range(rng.randint(1, 400))]
        data = bytearray(lead + b"".join(parts) + b"tail-without-newline")
        start, end = len(lead), len(data) - len(b"tail-without-newline")
        shards = rng.randint(1, 6)
        share = (end - start) // (deal.RUNS_PER_SHARD * shards)
        cuts, pos = [], start
        while pos < end:
            pos = end if pos + share >= end else data.index(b"\n", pos + share - 1, end) + 1
            cuts.append(pos)
        counts = [data.count(b"\n", a, b) for a, b in zip([start, *cuts], cuts, strict=False)]
        begins = [start + sum(map(len, parts[:i])) for i in range(len(parts))]
        blanks = [(b, b + len(p)) for b, p in zip(begins, parts, strict=True) if is_blank(p)]
        monkeypatch.setattr(deal, "_LONG_LINE", 1 << 30)  # every line short: numpy's line ends
        assert deal.plan_block(data, start, end, shards) == (blanks, counts)
        monkeypatch.setattr(deal, "_LONG_LINE", 0)  # every line long: walked run by run (without C)
        monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
        assert deal.plan_block(data, start, end, shards) == (blanks, counts)
        monkeypatch.delenv("SHARDCLAIM_SCAN")


def test_with_two_buffers_a_block_is_intact_until_the_one_after_the_next_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builder deals block k while block k+1's plan is made (deal.planned): block k must not be
    read over meanwhile, across input files (also empty ones, and reads that find only the end of a
    file), and the blocks must still be the inputs' lines, each exactly once."""
    import random

    from shardclaim.dataset import inputs

    monkeypatch.setattr(inputs, "_BLOCK", 64)
    rng = random.Random(11)
    for trial in range(40):
        paths, expected = [], b""
        for i in range(rng.randint(1, 5)):
            lines = b"".join(b"x" * rng.randint(0, 150) + b"\n" for _ in range(rng.randint(0, 6)))
            (path := tmp_path / f"{trial}_{i}.jsonl").write_bytes(lines)
            paths.append(str(path))
            expected += lines
        seen, previous = b"", None
        for _, _, data, start, end in inputs.blocks_of(inputs.open_inputs(paths), None, buffers=2):
            if previous is not None:  # the block before this one, as it was when it was yielded
                assert bytes(previous[0][previous[1] : previous[2]]) == previous[3]
            previous = (data, start, end, bytes(data[start:end]))
            seen += bytes(data[start:end])
        assert seen == expected


@pytest.mark.parametrize("check", ["c", "simdjson"])
def test_a_validators_byte_ranges_find_what_one_pass_over_the_file_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: str
) -> None:
    """The background validators cut a file into byte ranges and read each: whatever the cuts
    and the block size, together they report the first bad line (offset, line number, reason) and the
    big integers exactly as one inline pass does - with blank lines, BOMs, CRLF, a missing last
    newline, and cuts inside lines (also inside a BOM opening the file), at line starts and at the ends.
    With the C walk, a block of 2 to 64 bytes grows for every longer line."""
    import random

    from shardclaim.dataset import records, validate
    from shardclaim.dataset.inputs import lines_of, open_inputs

    if check == "c":
        if records.c_walk() is None:
            pytest.skip("shardclaim._valid is not built")
    else:
        monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
    rng = random.Random(5)
    good = [
        b'{"a": 1}',
        b"[1, 2]",
        b'"x"',
        b"  ",
        b"",
        b"\r",
        b'{"n": 123456789012345678901234}',
        b'  {"s": 2}',
    ]
    bad = [b"{", b"\xef\xbb\xbf{}", b"\x0c", b"nan", b"1 2", b"[1,]"]
    for trial in range(150):
        lines = [rng.choice(good) for _ in range(rng.randint(1, 30))]
        for _ in range(rng.randint(0, 2)):
            lines.insert(rng.randint(0, len(lines)), rng.choice(bad))
        ends = [rng.choice([b"\n", b"\r\n"]) for _ in lines]
        data = b"".join(x + e for x, e in zip(lines, ends, strict=True))
        if rng.random() < 0.3:
            data = data.rstrip(b"\r\n")
        if rng.random() < 0.2:
            data = b"\xef\xbb\xbf" + data  # an encoding marker opening the file: not part of a line
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(data)
        want_bad, want_big = validate.check_lines(
            (name, lineno, bytes(line)) for name, lineno, line in lines_of(open_inputs(str(path)), None)
        )
        monkeypatch.setattr(validate, "_READ", rng.randint(2, 64))
        cuts = sorted({0, len(data), *(rng.randint(0, len(data)) for _ in range(rng.randint(0, 4)))})
        shares = [validate.check_range(str(path), str(path), a, b) for a, b in itertools.pairwise(cuts)]
        found = [r[0] for r in shares if r[0] is not None]
        assert (min(found)[1] if found else None) == (want_bad[1] if want_bad else None), (trial, data, cuts)
        if not found:
            assert sum(r[1] for r in shares) == want_big


def test_validators_are_forked_only_while_this_process_has_no_other_thread() -> None:
    """A forked child inherits every lock as it was: held by another thread, it would stay held."""
    import threading

    from shardclaim.dataset import background

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert background._context().get_start_method() == "spawn"
    finally:
        stop.set()
        other.join()
    if sys.platform == "linux" and threading.active_count() == 1:
        assert background._context().get_start_method() == "fork"


def test_validators_take_every_cpu_but_the_builders_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardclaim.dataset import background

    for cpus, expected in [(2, 2), (3, 2), (4, 3), (8, 7), (64, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert background.validators() == expected


_STUCK_VALIDATOR_BUILD = """
import os, sys, threading
from shardclaim.dataset import background, validate
background.BACKGROUND_FROM = 0  # validate in background processes, even this small input

def stuck(path, name, start, end):  # a validator that reports itself, then never finishes
    os.write(int(sys.argv[3]), f"{os.getpid()}\\n".encode())
    threading.Event().wait()

validate.check_range = stuck
from shardclaim.dataset.build import create_sharded_dataset
create_sharded_dataset(sys.argv[1], sys.argv[2], num_shards=2)
"""


def test_validators_die_with_a_killed_builder_and_leave_its_output_buildable(tmp_path: Path) -> None:
    """SIGKILL the builder while its validators run: they must not live on (a forked one would hold the
    build lock, so every later build of that output failed as "in progress", and the builder's stdout
    and stderr). A real builder process, real validator processes."""
    import select

    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(records(50)))
    read_end, write_end = os.pipe()
    pids: list[int] = []
    builder = subprocess.Popen(
        [sys.executable, "-c", _STUCK_VALIDATOR_BUILD, str(src), str(tmp_path / "ds"), str(write_end)],
        pass_fds=(write_end,),
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb", buffering=0) as reports:
            while len(pids) < 2:
                ready, _, _ = select.select([reports], [], [], 120)
                assert ready, "the validators never started"
                pids += [int(x) for x in reports.read(4096).split()]
            watches = [os.pidfd_open(pid) for pid in pids]
            builder.kill()
            builder.wait(timeout=60)
            try:
                for watch in watches:  # readable once that process has exited
                    assert select.select([watch], [], [], 60)[0], "a validator outlived its builder"
            finally:
                for watch in watches:
                    os.close(watch)
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
        for pid in pids:  # (should they have survived: not left behind by a failing run)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    master = create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2, overwrite=True)
    assert master["total_tasks"] == 50


@pytest.mark.parametrize("change", ["append", "rewrite in place"])
def test_an_input_written_to_during_a_background_validation_fails_the_build(
    tmp_path: Path, change: str
) -> None:
    """The validators read the input again by its path: if it changed meanwhile they did not check what
    the builder copied, so the build must fail (nothing is published) rather than publish unchecked
    lines as validated."""
    from shardclaim.dataset import background
    from shardclaim.dataset.inputs import open_inputs

    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(records(200)))
    past = src.stat().st_mtime_ns - 10**9  # a write now gets a later time, whatever the clock's grain
    os.utime(src, ns=(past, past))
    validator = background.BackgroundValidator(open_inputs(str(src)))
    validator.start()
    try:
        if change == "append":
            with src.open("ab") as f:
                f.write(b"{not json\n")
        else:
            with src.open("r+b") as f:  # the same bytes written again (whatever the validators read,
                f.write(b"{")  # it is valid): only the file's time says it changed
        with pytest.raises(InputError, match="changed while it was read"):
            validator.result()
    finally:
        validator.close()


def test_a_start_chunk_past_the_stop_chunk_is_an_error_not_an_empty_shard(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(records(200)))
    create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=1, chunk_size_mb=0.002)
    with pytest.raises(ValueError, match="past stop_chunk"):
        list(iter_shard_records(str(tmp_path / "ds"), 0, start_chunk=2, stop_chunk=1))
    assert list(iter_shard_records(str(tmp_path / "ds"), 0, start_chunk=1, stop_chunk=1)) == []
