"""Tasks that are not JSONL records: files (``create --files``) and grid points (``create --grid``), built,
read back, and run through ``shardclaim run`` with every task processed exactly once."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from shardclaim import InputError, MetadataError, create_file_tasks, create_grid_tasks, iter_shard_records
from shardclaim.dataset.tasks import balance


def make_files(root: Path, count: int, *, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = root / f"part-{i % 3}" / f"file-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i % 256]) * rng.choice([10, 100, 1000, 5000, 40_000]))
        paths.append(path)
    return paths


def shard_files(ds: str, num_shards: int) -> list[list[str]]:
    return [list(iter_shard_records(ds, s)) for s in range(num_shards)]


def test_every_matching_file_is_one_task_and_shards_balance_by_bytes(tmp_path: Path) -> None:
    paths = make_files(tmp_path / "in", 40)
    (tmp_path / "in" / "part-0" / "skip.txt").write_text("not matched")
    ds = str(tmp_path / "ds")
    master = create_file_tasks(str(tmp_path / "in" / "**" / "*.bin"), ds, 6)
    assert master["format_version"] == 2
    assert master["kind"] == "files"
    assert master["total_tasks"] == 40
    shards = shard_files(ds, 6)
    assert Counter(p for s in shards for p in s) == Counter(str(p) for p in paths)
    assert all(s == sorted(s) for s in shards)  # name order inside a shard
    sizes = [sum(os.path.getsize(p) for p in s) for s in shards]
    largest = max(p.stat().st_size for p in paths)
    assert max(sizes) <= sum(sizes) / len(sizes) + largest
    assert [s["size_bytes"] for s in master["shards"]] == sizes
    for shard_id, entry in enumerate(master["shards"]):  # each file is a chunk: checkpoints count files
        assert entry["num_chunks"] == entry["total_tasks"] == len(shards[shard_id])


def test_largest_first_balance_keeps_every_shard_within_the_largest_item_of_the_mean() -> None:
    rng = random.Random(7)
    for _ in range(200):
        sizes = [int(rng.paretovariate(1.2) * 1000) for _ in range(rng.randint(8, 60))]
        n = rng.randint(1, 8)
        shards = balance(sizes, n)
        assert sorted(i for s in shards for i in s) == list(range(len(sizes)))
        loads = [sum(sizes[i] for i in s) for s in shards]
        assert max(loads) <= sum(sizes) / n + max(sizes)


def test_resuming_and_chunk_ranges_count_files(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 9)
    ds = str(tmp_path / "ds")
    create_file_tasks(str(tmp_path / "in" / "*" / "*.bin"), ds, 1)
    every = list(iter_shard_records(ds, 0))
    assert list(iter_shard_records(ds, 0, start_chunk=3, stop_chunk=5)) == every[3:5]


def test_files_on_an_object_store_are_tasks_named_by_url(gcs_bucket: str, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("gs")
    for i in range(7):
        fs.pipe(f"{gcs_bucket}/inputs/sub/x{i}.bin", b"z" * (i + 1) * 100)
    fs.pipe(f"{gcs_bucket}/inputs/other.txt", b"no")
    ds = f"gs://{gcs_bucket}/ds"
    master = create_file_tasks(f"gs://{gcs_bucket}/inputs/*/*.bin", ds, 3)
    assert master["sources"] == [{"url": f"gs://{gcs_bucket}/inputs"}]
    got = [u for s in shard_files(ds, 3) for u in s]
    assert sorted(got) == [f"gs://{gcs_bucket}/inputs/sub/x{i}.bin" for i in range(7)]


def test_bad_file_patterns_are_clear_errors_and_publish_nothing(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 3)
    ds = tmp_path / "ds"
    with pytest.raises(InputError, match="no file matches"):
        create_file_tasks(str(tmp_path / "in" / "*.nothing"), str(ds), 2)
    with pytest.raises(InputError, match="3 files cannot fill 4 shards"):
        create_file_tasks(str(tmp_path / "in" / "*" / "*.bin"), str(ds), 4)
    with pytest.raises(InputError, match="cannot keep credentials"):
        create_file_tasks("gs://b/x/*.bin?X-Goog-Signature=abcdef", str(ds), 1)
    assert not ds.exists()


def test_a_shard_naming_a_file_outside_its_sources_is_refused(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 4)
    ds = tmp_path / "ds"
    create_file_tasks(str(tmp_path / "in" / "*" / "*.bin"), str(ds), 2)
    meta_path = ds / "shard_000" / "metadata.json"
    good = orjson.loads(meta_path.read_bytes())
    hostile = [
        ("chunks", [{**good["chunks"][0], "file": "../../etc/passwd"}, *good["chunks"][1:]]),
        ("chunks", [{**good["chunks"][0], "file": "/etc/passwd"}, *good["chunks"][1:]]),
        ("chunks", [{**good["chunks"][0], "source": 5}, *good["chunks"][1:]]),
        ("sources", [{"url": "/etc"}]),  # sound on its own, but not the master's
        ("sources", [{"url": "relative/dir"}]),
    ]
    for field, value in hostile:
        meta_path.write_bytes(orjson.dumps({**good, field: value}))
        with pytest.raises(MetadataError):
            list(iter_shard_records(str(ds), 0))
    meta_path.write_bytes(orjson.dumps(good))
    assert len(list(iter_shard_records(str(ds), 0))) == good["total_tasks"]


WORK = """
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
tasks = os.environ["SHARDCLAIM_CHUNKS"].splitlines()
assert json.loads(os.environ["SHARDCLAIM_CHUNKS_JSON"]) == tasks
if sys.argv[2] == "files":  # each chunk is a task file
    done = [[t, len(open(t, "rb").read())] for t in tasks]
else:  # a grid's chunks are JSONL files of points (local paths or gs:// URLs)
    import fsspec
    done = []
    for chunk in tasks:
        with fsspec.open(chunk, "rb") as f:
            done += [json.loads(line) for line in f.read().splitlines()]
name = f"shard_{os.environ['SHARDCLAIM_SHARD_ID']}.attempt_{os.environ['SHARDCLAIM_ATTEMPT']}.json"
(out / name).write_text(json.dumps(done))
"""


def run_all(ds: str, out: Path, kind: str) -> list[object]:
    out.mkdir()
    command = [sys.executable, "-c", WORK, str(out), kind]
    result = subprocess.run(
        [sys.executable, "-m", "shardclaim", "run", ds, "-N", "3", "--", *command],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [task for f in sorted(out.iterdir()) for task in json.loads(f.read_text())]


def test_file_tasks_through_run_are_each_processed_once(shared_url: str, tmp_path: Path) -> None:
    paths = make_files(tmp_path / "in", 25)
    create_file_tasks(str(tmp_path / "in" / "*" / "*.bin"), shared_url, 5)
    done = run_all(shared_url, tmp_path / "out", "files")
    assert sorted(done) == sorted([str(p), p.stat().st_size] for p in paths)  # type: ignore[type-var]


def test_grid_is_the_product_in_order_one_record_per_point(tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text('{"lr": [0.1, 0.01], "fold": [0, 1, 2], "model": ["a", {"depth": 3}]}')
    ds = str(tmp_path / "ds")
    master = create_grid_tasks(str(grid), ds, 1)
    assert master["total_tasks"] == 12
    assert master["grid"] == {"file": str(grid), "parameters": ["lr", "fold", "model"], "points": 12}
    points = list(iter_shard_records(ds, 0))
    assert points[:3] == [
        {"lr": 0.1, "fold": 0, "model": "a"},
        {"lr": 0.1, "fold": 0, "model": {"depth": 3}},
        {"lr": 0.1, "fold": 1, "model": "a"},
    ]
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 12


def test_grid_points_through_run_are_each_processed_once(shared_url: str, tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"seed": list(range(10)), "fold": list(range(5))}))
    create_grid_tasks(str(grid), shared_url, 4, chunk_size_mb=0.0002)
    done = run_all(shared_url, tmp_path / "out", "grid")
    assert sorted(json.dumps(p, sort_keys=True) for p in done) == sorted(
        json.dumps({"fold": f, "seed": s}, sort_keys=True) for s in range(10) for f in range(5)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"lr": [0.1,\n 0.2,, 3]}', r"grid.json, line 2: not valid JSON"),
        ("[1, 2]", "a grid is a JSON object of lists"),
        ('{"lr": []}', "'lr' must be a non-empty list"),
        ('{"lr": 0.1}', "'lr' must be a non-empty list"),
    ],
)
def test_a_bad_grid_is_a_clear_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(text)
    with pytest.raises(InputError, match=message):
        create_grid_tasks(str(grid), str(tmp_path / "ds"), 1)
    assert not (tmp_path / "ds").exists()


def test_the_command_line_builds_files_and_grids(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 6)
    (tmp_path / "grid.json").write_text('{"a": [1, 2, 3]}')
    base = [sys.executable, "-m", "shardclaim", "create", "--num_shards", "3", "--output_dir"]
    files = subprocess.run([*base, str(tmp_path / "f"), "--files", str(tmp_path / "in/*/*.bin")],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert files.returncode == 0, files.stderr
    assert "6 files" in files.stdout
    grid = subprocess.run([*base, str(tmp_path / "g"), "--grid", str(tmp_path / "grid.json")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert grid.returncode == 0, grid.stderr
    both = subprocess.run([*base, str(tmp_path / "x"), "--grid", "g.json", "--input_file", "a.jsonl"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert both.returncode == 2
    assert "not allowed with" in both.stderr


def test_the_seed_apis_claim_names_the_task_files_themselves(tmp_path: Path) -> None:
    """claim_shard()["chunks"] (what `shardclaim claim` and the seed's script print) are the files a
    worker opens — the task files of a files dataset, not names inside the dataset."""
    from shardclaim import ShardManager

    paths = make_files(tmp_path / "in", 6)
    ds = str(tmp_path / "ds")
    create_file_tasks(str(tmp_path / "in" / "*" / "*.bin"), ds, 2)
    m = ShardManager(ds, "w")
    claimed = [m.claim_shard(s) for s in range(2)]
    assert all(c is not None for c in claimed)
    named = [p for c in claimed for p in c["chunks"]]  # type: ignore[index]
    assert sorted(named) == sorted(str(p) for p in paths)
    assert all(Path(p).is_file() for p in named)


def test_double_star_follows_no_link_to_a_directory_and_ends_on_loops(tmp_path: Path) -> None:
    """``**`` descends through real directories only, like ``find`` without ``-L``: two links back to
    ancestors end at once, a linked directory elsewhere is not searched; a link to a file is a task
    (one task with its file when both match). A fixed part or ``*`` that names a link does follow it."""
    src, out = tmp_path / "in", tmp_path / "elsewhere"
    (src / "d" / "e").mkdir(parents=True)
    out.mkdir()
    (src / "top.bin").write_bytes(b"t")
    (src / "d" / "e" / "deep.bin").write_bytes(b"dd")
    (out / "far.bin").write_bytes(b"fff")
    (src / "d" / "e" / "up").symlink_to(src)
    (src / "d" / "up").symlink_to(src / "d")
    (src / "d" / "far").symlink_to(out)
    (src / "link.bin").symlink_to(out / "far.bin")
    (src / "d" / "same.bin").symlink_to(src / "d" / "e" / "deep.bin")
    ds = str(tmp_path / "ds")
    for pattern in ("**/*.bin", "**", "**/**/*.bin"):
        create_file_tasks(str(src / pattern), ds, 1, overwrite=True)
        got = list(iter_shard_records(ds, 0))
        assert sorted(os.path.realpath(p) for p in got) == sorted(
            str(p) for p in (src / "top.bin", src / "d" / "e" / "deep.bin", out / "far.bin")
        ), pattern
    create_file_tasks(str(src / "d" / "far" / "**" / "*.bin"), ds, 1, overwrite=True)
    assert list(iter_shard_records(ds, 0)) == [str(src / "d" / "far" / "far.bin")]
    create_file_tasks(str(src / "*" / "far" / "*.bin"), ds, 1, overwrite=True)
    assert list(iter_shard_records(ds, 0)) == [str(src / "d" / "far" / "far.bin")]


def test_a_file_reached_by_several_patterns_or_paths_is_one_task(tmp_path: Path) -> None:
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.bin").write_bytes(b"x")
    (tmp_path / "in" / "b.bin").write_bytes(b"b")
    (tmp_path / "in" / "link").symlink_to(tmp_path / "in" / "a")
    os.link(tmp_path / "in" / "b.bin", tmp_path / "in" / "hard.bin")
    patterns = [
        str(tmp_path / "in" / "*" / "x.bin"),  # in/a/x.bin and in/link/x.bin
        str(tmp_path / "in" / "a" / "*.bin"),  # another fixed part
        f"{tmp_path}/in/./a/../a/x.bin",
        str(tmp_path / "in" / "*.bin"),  # b.bin and its hard link
    ]
    ds = str(tmp_path / "ds")
    master = create_file_tasks(patterns, ds, 1)
    assert master["sources"] == [{"url": str(tmp_path / "in")}]  # a fixed part with no file is no source
    assert list(iter_shard_records(ds, 0)) == [str(tmp_path / "in" / n) for n in ("a/x.bin", "b.bin")]


def test_the_output_dataset_and_its_staging_areas_are_never_tasks(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "f.txt").write_text("f")
    ds = src / "ds"
    create_file_tasks(str(src / "**"), str(ds), 1)
    stale = [src / ".ds.shardclaim-build-1" / "x.txt", ds / ".shardclaim-build-2" / "y.txt"]
    for path in stale:  # what killed builds leave
        path.parent.mkdir()
        path.write_text("stale")
    (tmp_path / "alias").symlink_to(ds)
    patterns = [str(src / p) for p in ("**", ".*/*", "ds/.*/*", "*/*/*")] + [str(tmp_path / "alias/**")]
    create_file_tasks(patterns[:1], str(ds), 1, overwrite=True)
    assert list(iter_shard_records(str(ds), 0)) == [str(src / "f.txt")]
    for pattern in patterns[1:]:
        with pytest.raises(InputError, match=r"no file matches .* outside the output dataset"):
            create_file_tasks(pattern, f"file://{ds}", 1, overwrite=True)
    assert list(iter_shard_records(str(ds), 0)) == [str(src / "f.txt")]


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.bin").write_bytes(b"1")
    with open(os.path.join(os.fsencode(tmp_path / "in"), b"\xff.bin"), "wb") as f:
        f.write(b"2")
    with pytest.raises(InputError, match=r"xff\.bin'?: a file whose name is not UTF-8 cannot be a task"):
        create_file_tasks(str(tmp_path / "in" / "*.bin"), str(tmp_path / "ds"), 1)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"lr": [1],\n "lr": [2]}', r"grid.json, line 2: the key 'lr' is given twice"),
        (b'{"lr": [1], "\\u006cr": [2]}', r"grid.json, line 1: the key 'lr' is given twice"),
        (b'{"m": [{"a": 1},\n {"a": 2,\n\n "b": {"c": [], "c": 1}}]}', r"grid.json, line 4: the key 'c'"),
        (b'{"a": [1,\n 2,\n "\xff"]}', r"grid.json, line 3: not valid JSON \(byte 0xff is not UTF-8\)"),
        (b'{"a": ["\xc3"]}\n', r"grid.json, line 1: not valid JSON \(byte 0xc3 is not UTF-8\)"),
        (b'{"a": [1e400]}', r"grid.json, line 1: not valid JSON"),
        (b'{"a": ["\\ud800"]}', r"grid.json, line 1: not valid JSON"),
        (b'{"a": [Infinity]}', r"grid.json, line 1: not valid JSON"),
        (b'{"a": [1, 2], "b": ' + orjson.dumps(list(range(1001))) + b', "c": '
         + orjson.dumps(list(range(500_000))) + b"}",
         r"grid.json: the product of the grid's 3 lists is 1,001,000,000 points, more than the "
         r"1,000,000,000 a grid may have"),
        (orjson.dumps({f"p{i}": [0, 1] for i in range(200)}), r"about 10\*\*60 points"),
    ],
)  # fmt: skip
def test_a_grid_refused_says_why_and_where(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "grid.json").write_bytes(raw)
    with pytest.raises(InputError, match=message):
        create_grid_tasks(str(tmp_path / "grid.json"), str(tmp_path / "ds"), 1)
    assert not (tmp_path / "ds").exists()


def test_a_grid_keeps_integers_beyond_64_bits_exact(tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text('{"seed": [18446744073709551616, -9223372036854775809, 7], "s": ["\\u2028", 0.1]}')
    ds = str(tmp_path / "ds")
    create_grid_tasks(str(grid), ds, 1)
    seeds = [18446744073709551616, -9223372036854775809, 7]
    assert list(iter_shard_records(ds, 0)) == [{"seed": n, "s": s} for n in seeds for s in ("\u2028", 0.1)]


def test_the_output_dataset_on_an_object_store_is_never_tasks(gcs_bucket: str) -> None:
    import fsspec

    fsspec.filesystem("gs").pipe(f"{gcs_bucket}/in/a.bin", b"a")
    ds = f"gs://{gcs_bucket}/in/ds"
    create_file_tasks(f"gs://{gcs_bucket}/in/**", ds, 1)
    for output in (ds, f"gcs://{gcs_bucket}/in/ds/"):
        create_file_tasks(f"gs://{gcs_bucket}/in/**", output, 1, overwrite=True)
        assert list(iter_shard_records(ds, 0)) == [f"gs://{gcs_bucket}/in/a.bin"]
    with pytest.raises(InputError, match="outside the output dataset"):
        create_file_tasks(f"gs://{gcs_bucket}/in/ds/**", ds, 1, overwrite=True)


def test_an_output_given_as_a_percent_encoded_file_url_is_never_a_task(tmp_path: Path) -> None:
    """The store reads ``file:///r%20x/ds`` as the directory ``/r x/ds``: the glob's exclusion reads it
    the same way, so a rebuild over a glob that covers it makes no task of the dataset's own files."""
    from urllib.parse import quote

    from shardclaim.dataset.tasks import list_files

    root = tmp_path / "r x"
    (root / "ds").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"1")
    (root / "ds" / "master_metadata.json").write_bytes(b"{}")
    sources, files = list_files([f"{root}/**"], "file://" + quote(f"{root}/ds"))
    assert [(sources[i], rel) for i, rel, _ in files] == [(str(root), "a.bin")]
