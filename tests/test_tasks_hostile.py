"""Hostile pass on file tasks (``create --files``), grid tasks (``--grid``), zero-copy datasets
(``--by-reference``), metadata format 2 and ``shardclaim cat``: every task exactly once through real
``shardclaim run`` workers, exactly the input's records back, changed sources and hand-edited metadata
refused with a clear message, never read."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import (
    ChunkCorruptError,
    InputError,
    MetadataError,
    ShardManager,
    create_file_tasks,
    create_grid_tasks,
    create_sharded_dataset,
    iter_shard_records,
)
from shardclaim.dataset.cat import shard_jsonl

TIMEOUT = 120


def sc(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """``python -m shardclaim ARGS`` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def clear_error(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """The process failed with ``code`` and a message on stderr, not a traceback; the message."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode == code, err
    assert "Traceback" not in err, err
    assert err.strip(), "no message"
    return err


def meta(ds: Path, shard: int) -> dict[str, Any]:
    return orjson.loads((ds / f"shard_{shard:03d}" / "metadata.json").read_bytes())


def write_meta(ds: Path, shard: int, doc: dict[str, Any]) -> None:
    (ds / f"shard_{shard:03d}" / "metadata.json").write_bytes(orjson.dumps(doc))


def master(ds: Path) -> dict[str, Any]:
    return orjson.loads((ds / "master_metadata.json").read_bytes())


def read_shards(ds: str, shards: int | list[int], into: list[bytes]) -> None:
    """Every raw record of the shards (``range(shards)`` or a list), appended to ``into`` as it comes."""
    for s in range(shards) if isinstance(shards, int) else shards:
        into.extend(iter_shard_records(ds, s, parse=False))


# -- file tasks: exactly once through real workers ----------------------------------------------------

ODD_NAMES = [
    "plain.bin",
    "with space.bin",
    "  leading and trailing  .bin",
    "quote'single.bin",
    'quote"double.bin',
    "back\\slash.bin",
    "star*.bin",
    "question?.bin",
    "[bracket].bin",
    "-dash-first.bin",
    "$(echo pwned).bin",
    "é ü 中文 🙂.bin",
    "%2e%2e.bin",
    "#hash#bytes=0-1.bin",
    "semi;colon&amp.bin",
    "zero-a.bin",
    "zero-b.bin",
]

RECORD_TASKS = """
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
tasks = json.loads(os.environ["SHARDCLAIM_CHUNKS_JSON"])
assert os.environ["SHARDCLAIM_CHUNKS"].split("\\n") == tasks
done = [[t, open(t, "rb").read().decode("utf-8", "replace")] for t in tasks]
name = f"shard_{os.environ['SHARDCLAIM_SHARD_ID']}.attempt_{os.environ['SHARDCLAIM_ATTEMPT']}.json"
(out / name).write_text(json.dumps(done))
"""


def run_recording(ds: str, out: Path, workers: int = 3) -> list[list[str]]:
    """``shardclaim run DS -N workers``: every task every attempt's command saw, with its content."""
    out.mkdir()
    result = sc("run", ds, "-N", str(workers), "--", sys.executable, "-c", RECORD_TASKS, str(out))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [task for f in sorted(out.iterdir()) for task in json.loads(f.read_text())]


def test_files_with_hostile_names_through_run_are_each_processed_once(tmp_path: Path) -> None:
    """Names with spaces, quotes, glob characters, shell syntax, non-ASCII and zero-byte files; the same
    files matched by several overlapping patterns with the same fixed part; a dangling symlink and a directory
    that match the glob are not tasks. Three real workers: every file processed exactly once."""
    src = tmp_path / "in"
    (src / "sub dir").mkdir(parents=True)
    want = {}
    for i, name in enumerate(ODD_NAMES):
        path = src / ("sub dir" if i % 3 == 0 else "") / name
        body = "" if name.startswith("zero") else f"content {i} of {name}" * (i + 1)
        path.write_text(body)
        want[str(path)] = body
    (src / "dangling.bin").symlink_to(src / "nowhere")
    (src / "dir.bin").mkdir()
    patterns = [
        str(src / "**" / "*.bin"),
        str(src / "*.bin"),
        str(src / "**" / "*"),
        str(src / "*" / "*.bin"),
    ]
    ds = str(tmp_path / "ds")
    built = create_file_tasks(patterns, ds, 6)
    assert built["total_tasks"] == len(want)
    done = run_recording(ds, tmp_path / "out")
    assert Counter(path for path, _ in done) == Counter(list(want))  # each exactly once
    assert dict(done) == want  # and the command opened the file itself
    for shard in range(6):  # cat and iter_shard_records name the same files
        cat = sc("cat", ds, "--shard_id", str(shard))
        assert cat.returncode == 0, cat.stderr
        assert [orjson.loads(x) for x in cat.stdout.splitlines()] == list(iter_shard_records(ds, shard))


def test_a_file_matched_by_two_patterns_with_different_fixed_parts_is_one_task(tmp_path: Path) -> None:
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.bin").write_bytes(b"x")
    (tmp_path / "in" / "a" / "y.bin").write_bytes(b"y")
    ds = str(tmp_path / "ds")
    create_file_tasks([str(tmp_path / "in" / "*" / "x.bin"), str(tmp_path / "in" / "a" / "*.bin")], ds, 1)
    tasks = list(iter_shard_records(ds, 0))
    assert sorted(os.path.realpath(t) for t in tasks) == [
        str(tmp_path / "in" / "a" / "x.bin"),
        str(tmp_path / "in" / "a" / "y.bin"),
    ]


def test_a_symlink_loop_under_double_star_does_not_multiply_tasks(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "d").mkdir(parents=True)
    (src / "top.bin").write_bytes(b"t")
    (src / "d" / "inner.bin").write_bytes(b"i")
    (src / "d" / "loop").symlink_to(src)  # d/loop/d/loop/... -> the same two files
    ds = str(tmp_path / "ds")
    try:
        create_file_tasks(str(src / "**" / "*.bin"), ds, 1)
    except InputError:
        return  # refusing the loop is fine too
    tasks = list(iter_shard_records(ds, 0))
    assert len(tasks) == 2, f"{len(tasks)} tasks for 2 files"


def test_rebuilding_over_a_glob_that_covers_the_output_dir_makes_no_task_of_the_dataset(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text(str(i))
    first = sc("create", "--files", "in/**", "--output_dir", "in/ds", "--num_shards", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = sc(
        "create",
        "--files",
        "in/**",
        "--output_dir",
        "in/ds",
        "--num_shards",
        "2",
        "--overwrite",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    tasks = [t for s in range(2) for t in iter_shard_records(str(src / "ds"), s)]
    assert sorted(tasks) == [str(src / f"f{i}.txt") for i in range(3)]


def test_a_non_utf8_file_name_is_a_task_or_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "ok.bin").write_bytes(b"1")
    with open(os.path.join(os.fsencode(src), b"\xff\xfe.bin"), "wb") as f:
        f.write(b"2")
    result = sc(
        "create", "--files", str(src / "*.bin"), "--output_dir", str(tmp_path / "ds"), "--num_shards", "1"
    )
    if result.returncode == 0:
        assert len(list(iter_shard_records(str(tmp_path / "ds"), 0))) == 2
    else:
        clear_error(result)


def test_a_file_name_with_a_newline_is_refused_clearly_and_nothing_is_published(tmp_path: Path) -> None:
    """SHARDCLAIM_CHUNKS is one path a line, so such a name cannot be a task: the build says so (naming
    the file) and publishes nothing, rather than a dataset whose shard no reader accepts."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "ok.bin").write_bytes(b"1")
    (src / "two\nlines.bin").write_bytes(b"2")
    result = sc(
        "create", "--files", str(src / "*.bin"), "--output_dir", str(tmp_path / "ds"), "--num_shards", "1"
    )
    assert "two\\nlines.bin" in clear_error(result)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


def test_a_file_removed_between_glob_and_build_is_not_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import tasks

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(b"x" * i)
    real_glob = tasks.glob.glob

    def racing_glob(*args: Any, **kwargs: Any) -> list[str]:
        found = real_glob(*args, **kwargs)
        os.remove(src / "f2.bin")  # gone after the listing, before it is looked at
        (src / "f9.bin").write_bytes(b"late")  # appeared after the listing
        return found

    monkeypatch.setattr(tasks.glob, "glob", racing_glob)
    ds = str(tmp_path / "ds")
    create_file_tasks(str(src / "*.bin"), ds, 1)
    assert list(iter_shard_records(ds, 0)) == [str(src / f"f{i}.bin") for i in (0, 1, 3)]


@pytest.mark.parametrize("kind", ["files", "by_reference"])
def test_claiming_refuses_a_shard_whose_sources_differ_from_the_masters(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.jsonl").write_bytes(b"".join(b'{"i": %d}\n' % j for j in range(50)))
    ds = tmp_path / "ds"
    if kind == "files":
        create_file_tasks(str(src / "*.jsonl"), str(ds), 2)
    else:
        create_sharded_dataset(str(src / "f0.jsonl"), str(ds), num_shards=2, by_reference=True)
    doc = meta(ds, 0)
    doc["sources"] = [{**doc["sources"][0], "url": "/etc"}]
    if kind == "files":
        doc["chunks"][0]["file"] = "passwd"
    write_meta(ds, 0, doc)
    with pytest.raises(MetadataError):
        list(iter_shard_records(str(ds), 0))  # the reader refuses it ...
    try:
        claimed = ShardManager(str(ds), "w").claim_shard(0)
    except MetadataError:
        claimed = None
    named = [] if claimed is None else claimed["chunks"]
    assert not [c for c in named if c.startswith("/etc")], named  # ... the claim must too


# -- grids ----------------------------------------------------------------------------------------------


def test_a_grid_with_odd_keys_and_values_is_the_exact_product(tmp_path: Path) -> None:
    grid = {
        "": [0, 1],
        'k"ey\n\t\\': ["a", "b"],
        "é中🙂": [{"nested": {"deep": [1, 2]}}, [], [[]], None, True, -0.5, "x\u2028y"],
        "big": [2**63 - 1, -(2**63)],
        "$(rm -rf /)": ["; echo"],
    }
    path = tmp_path / "grid.json"
    path.write_bytes(orjson.dumps(grid))
    ds = str(tmp_path / "ds")
    built = create_grid_tasks(str(path), ds, 5, chunk_size_mb=0.0005)
    keys = list(grid)
    want = [dict(zip(keys, vs, strict=True)) for vs in itertools.product(*grid.values())]
    assert built["total_tasks"] == len(want) == 56
    got = [p for s in range(5) for p in iter_shard_records(ds, s)]
    assert [list(p) for p in got] == [keys] * len(want)  # the object's key order, every point
    assert Counter(map(orjson.dumps, got)) == Counter(map(orjson.dumps, want))  # each point once
    cat = b"".join(b"".join(shard_jsonl(ds, s)) for s in range(5))
    assert [orjson.loads(x) for x in cat.splitlines()] == got
    one = str(tmp_path / "one")
    create_grid_tasks(str(path), one, 1)
    assert list(iter_shard_records(one, 0)) == want  # the last list varying fastest


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": [1, 2],\n "b": [3,\n 4,]}', r"grid.json, line 3: not valid JSON"),
        (b'{"a": [1]}\n{"b": [2]}', r"grid.json, line \d: not valid JSON"),
        (b"", r"grid.json, line 1: not valid JSON"),
        (b'{"a": "abc"}', r"grid.json: 'a' must be a non-empty list"),
        (b'{"a": {"b": [1]}}', r"grid.json: 'a' must be a non-empty list"),
        (b'{"a": null}', r"grid.json: 'a' must be a non-empty list"),
        (b'{"a": [1], "b": []}', r"grid.json: 'b' must be a non-empty list"),
        (b"{}", r"grid.json: a grid is a JSON object of lists"),
        (b'"lr"', r"grid.json: a grid is a JSON object of lists"),
        (b"null", r"grid.json: a grid is a JSON object of lists"),
        (b'{"a": [NaN]}', r"grid.json, line 1: not valid JSON"),
    ],
)
def test_a_bad_grid_is_a_clear_error_naming_the_file_and_line(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    (tmp_path / "grid.json").write_bytes(raw)
    with pytest.raises(InputError, match=message):
        create_grid_tasks(str(tmp_path / "grid.json"), str(tmp_path / "ds"), 1)
    result = sc("create", "--grid", "grid.json", "--output_dir", "ds", "--num_shards", "1", cwd=tmp_path)
    assert "grid.json" in clear_error(result)
    assert not (tmp_path / "ds" / "master_metadata.json").exists()


def test_a_missing_or_unreadable_grid_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    for name in ("missing.json", "dir.json"):
        result = sc("create", "--grid", name, "--output_dir", "ds", "--num_shards", "1", cwd=tmp_path)
        assert name in clear_error(result)
    (tmp_path / "g.json").write_text('{"a": [1, 2, 3]}')
    result = sc("create", "--grid", "g.json", "--output_dir", "ds", "--num_shards", "4", cwd=tmp_path)
    assert "3 grid points cannot fill 4 shards" in clear_error(result)


def test_a_grid_with_duplicate_keys_is_refused(tmp_path: Path) -> None:
    (tmp_path / "grid.json").write_text('{"lr": [1, 2],\n "fold": [0, 1],\n "lr": [3]}')
    with pytest.raises(InputError, match=r"grid\.json"):
        create_grid_tasks(str(tmp_path / "grid.json"), str(tmp_path / "ds"), 1)


def test_a_grid_integer_beyond_64_bits_stays_exact_or_is_refused(tmp_path: Path) -> None:
    (tmp_path / "grid.json").write_text('{"seed": [18446744073709551617, 1]}')
    ds = str(tmp_path / "ds")
    try:
        create_grid_tasks(str(tmp_path / "grid.json"), ds, 1)
    except InputError:
        return
    assert [p["seed"] for p in iter_shard_records(ds, 0)] == [18446744073709551617, 1]


def test_an_absurdly_large_grid_is_a_clear_error_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import tasks

    lines = tasks.GridInput._lines
    written = []

    def counted(self: Any) -> Any:
        for n, line in enumerate(lines(self)):
            if n == 10_000:  # the build is generating the points: stop it here
                written.append(n)
                raise RuntimeError("the build started writing the points of an absurd grid")
            yield line

    monkeypatch.setattr(tasks.GridInput, "_lines", counted)
    (tmp_path / "grid.json").write_text(json.dumps({f"p{i}": list(range(10)) for i in range(20)}))
    with pytest.raises(InputError, match=r"grid\.json"):
        create_grid_tasks(str(tmp_path / "grid.json"), str(tmp_path / "ds"), 4)
    assert not written


def test_a_grid_with_a_bad_byte_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "grid.json").write_bytes(b'{"a": [1,\n 2,\n "\xff"]}')
    with pytest.raises(InputError, match=r"grid.json, line 3"):
        create_grid_tasks(str(tmp_path / "grid.json"), str(tmp_path / "ds"), 1)


# -- by reference: exactly the input's records ------------------------------------------------------------


def expected_records(body: bytes) -> list[bytes]:
    """The records of one input as any build reads them: the BOM left out, lines split at LF (a CRLF
    record keeps its CR, as a copied build keeps it), blank and whitespace-only lines skipped."""
    return [line for line in body.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip(b" \t\r")]


def awkward_inputs(root: Path) -> tuple[list[str], list[bytes]]:
    """Many inputs: CRLF and LF, BOMs, blank and whitespace-only lines, no final newline, records longer
    than a chunk, 0-byte, BOM-only and blank-only files; the inputs and their records, in order."""
    root.mkdir()
    paths, records = [], []
    for k in range(14):
        nl = b"\r\n" if k % 2 else b"\n"
        body = bytearray(b"\xef\xbb\xbf" if k % 3 == 0 else b"")
        for j in range([0, 1, 7, 40][k % 4]):
            text = "x" * (30_000 if (j + k) % 9 == 0 else (j * 37) % 300)
            body += orjson.dumps({"k": k, "j": j, "t": text, "u": 'é\u2028\\"'}) + nl
            if j % 4 == 0:
                body += [b"\n", b"   \n", b"\r\n", b"\t \r\n"][(j // 4) % 4]
        if k % 5 == 1:
            body = body.rstrip(b"\r\n")  # no final newline
        if k == 6:
            body = bytearray(b"\xef\xbb\xbf")  # a BOM and nothing else
        if k == 8:
            body = bytearray(b"\n  \n\t\r\n")  # blank lines only
        path = root / f"in{k:02d}.jsonl"
        path.write_bytes(bytes(body))
        paths.append(str(path))
        records += expected_records(bytes(body))
    assert any(r.endswith(b"\r") for r in records)
    assert sum(len(r) > 30_000 for r in records) > 3
    return paths, records


@pytest.mark.parametrize("num_shards", [1, 3, 8])
def test_by_reference_gives_back_exactly_the_records_of_awkward_inputs(
    tmp_path: Path, num_shards: int
) -> None:
    paths, records = awkward_inputs(tmp_path / "in")
    ds = str(tmp_path / "ds")
    built = create_sharded_dataset(paths, ds, num_shards=num_shards, chunk_size_mb=0.01, by_reference=True)
    assert built["total_tasks"] == len(records)
    raw = [r for s in range(num_shards) for r in iter_shard_records(ds, s, parse=False)]
    assert raw == records
    parsed = [r for s in range(num_shards) for r in iter_shard_records(ds, s)]
    assert parsed == [orjson.loads(r) for r in records]
    assert b"".join(b"".join(shard_jsonl(ds, s)) for s in range(num_shards)) == b"".join(
        r + b"\n" for r in records
    )
    for s in range(num_shards):
        entry = master(Path(ds))["shards"][s]
        assert sum(1 for _ in iter_shard_records(ds, s)) == entry["total_tasks"]


def test_a_zero_byte_or_blank_only_input_alone_is_a_clear_error(tmp_path: Path) -> None:
    for body in (b"", b"\xef\xbb\xbf", b"\n \r\n\t\n"):
        (tmp_path / "in.jsonl").write_bytes(body)
        with pytest.raises(InputError, match="no records"):
            create_sharded_dataset(
                str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=1, by_reference=True
            )
        assert not (tmp_path / "ds").exists()


BODY = b"".join(orjson.dumps({"i": i, "pad": "p" * (i % 13)}) + b"\n" for i in range(1500))
OTHER = b"".join(orjson.dumps({"o": i}) + b"\n" for i in range(500))


def same_size_other_bytes(path: Path) -> bytes:
    """BODY with two records of equal length swapped: same size, same lines, other order."""
    a, b = orjson.dumps({"i": 700, "pad": "p" * 11}), orjson.dumps({"i": 701, "pad": "p" * 12})
    a2, b2 = orjson.dumps({"i": 713, "pad": "p" * 11}), orjson.dumps({"i": 714, "pad": "p" * 12})
    assert len(a) == len(a2)
    assert a in BODY
    assert a2 in BODY
    return (
        BODY.replace(a, b"\0")
        .replace(a2, a)
        .replace(b"\0", a2)
        .replace(b, b"\1")
        .replace(b2, b)
        .replace(b"\1", b2)
    )


def _append(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b'{"i": -1}\n')


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size - 200)


def _rewrite_keep_mtime(p: Path) -> None:
    st = p.stat()
    p.write_bytes(same_size_other_bytes(p))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rename_over_keep_mtime(p: Path) -> None:
    st = p.stat()
    tmp = p.with_name("new.tmp")
    tmp.write_bytes(same_size_other_bytes(p))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, p)


def _symlink_over_keep_mtime(p: Path) -> None:
    st = p.stat()
    target = p.with_name("elsewhere.jsonl")
    target.write_bytes(same_size_other_bytes(p))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    p.unlink()
    p.symlink_to(target)


def _delete(p: Path) -> None:
    p.unlink()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_append, "the source changed after the build"),
        (_truncate, "the source changed after the build"),
        (_rewrite_keep_mtime, "CRC32C .* the source changed"),
        (_rename_over_keep_mtime, "CRC32C .* the source changed"),
        (_symlink_over_keep_mtime, "CRC32C .* the source changed"),
        (_delete, "the source read by reference is gone"),
    ],
)
def test_a_source_changed_after_the_build_never_yields_a_wrong_record(
    tmp_path: Path, change: Callable[[Path], None], message: str
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(BODY)
    b.write_bytes(OTHER)
    ds = str(tmp_path / "ds")
    create_sharded_dataset([str(a), str(b)], ds, num_shards=4, chunk_size_mb=0.004, by_reference=True)
    before = [list(iter_shard_records(ds, s, parse=False)) for s in range(4)]
    cat_before = [b"".join(shard_jsonl(ds, s)) for s in range(4)]
    change(a)
    refused = 0
    for s in range(4):
        got: list[bytes] = []
        error = None
        try:
            read_shards(ds, [s], got)
        except ChunkCorruptError as e:
            error = str(e)
        if error is None:
            assert got == before[s]
        else:
            refused += 1
            assert str(a) in error
            assert re.search(message, error), error
            assert got == before[s][: len(got)]  # what came out before the refusal is the shard's own
        result = sc("cat", ds, "--shard_id", str(s))
        if result.returncode == 0:
            assert result.stdout == cat_before[s]
        else:
            assert str(a) in clear_error(result)
            assert cat_before[s].startswith(result.stdout)  # whole ranges only, all of them good
    assert refused >= 1


def test_sources_that_are_symlinks_and_datasets_moved_or_read_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    real = tmp_path / "work" / "real.jsonl"
    real.write_bytes(BODY)
    (tmp_path / "work" / "link.jsonl").symlink_to("real.jsonl")  # a relative symlink
    built = sc(
        "create", "--input_file", "link.jsonl", "--output_dir", "ds", "--num_shards", "3", "--by-reference",
        cwd=tmp_path / "work",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ds = tmp_path / "work" / "ds"
    assert master(ds)["sources"][0]["url"] == str(tmp_path / "work" / "link.jsonl")  # absolute
    moved = tmp_path / "moved" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(ds), str(moved))
    want = BODY
    got = b"".join(sc("cat", "deeper", "--shard_id", str(s), cwd=tmp_path / "moved").stdout for s in range(3))
    assert got == want
    got = b"".join(b"".join(shard_jsonl(str(moved), s)) for s in range(3))
    assert got == want
    # the link now points at a file of the same size and modification time but other bytes
    st = real.stat()
    (tmp_path / "work" / "twin.jsonl").write_bytes(same_size_other_bytes(real))
    os.utime(tmp_path / "work" / "twin.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns))
    (tmp_path / "work" / "link.jsonl").unlink()
    (tmp_path / "work" / "link.jsonl").symlink_to("twin.jsonl")
    with pytest.raises(ChunkCorruptError, match="CRC32C"):
        read_shards(str(moved), 3, [])


# -- hostile metadata (format 2) -----------------------------------------------------------------------------


def files_dataset(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(6):
        (src / ("sub" if i % 2 else "") / f"f{i}.bin").write_bytes(b"f" * (i + 1))
    ds = tmp_path / "ds"
    create_file_tasks(str(src / "**" / "*.bin"), str(ds), 2)
    return ds


def ranges_dataset(tmp_path: Path) -> Path:
    (tmp_path / "a.jsonl").write_bytes(BODY)
    ds = tmp_path / "ds"
    create_sharded_dataset(
        str(tmp_path / "a.jsonl"), str(ds), num_shards=2, chunk_size_mb=0.004, by_reference=True
    )
    return ds


def _chunk(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["chunks"][0].update(fields)

    return edit


def _sources(url: Any = None, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["sources"] = [{**doc["sources"][0], **({"url": url} if url is not None else {}), **fields}]

    return edit


def _field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc[name] = value

    return edit


FILE_EDITS = {
    "dotdot": _chunk(file="sub/../../../etc/passwd"),
    "dot": _chunk(file="./f0.bin"),
    "empty segment": _chunk(file="sub//f1.bin"),
    "absolute": _chunk(file="/etc/passwd"),
    "file url": _chunk(file="file:///etc/passwd"),
    "control": _chunk(file="f0.bin\n/etc/passwd"),
    "escape": _chunk(file="\x1b]0;x\x07f0.bin"),
    "long": _chunk(file="a/" * 3000 + "x"),
    "list": _chunk(file=["f0.bin"]),
    "source -1": _chunk(source=-1),
    "source str": _chunk(source="0"),
    "source bool": _chunk(source=False),
    "no source": lambda d: d["chunks"][0].pop("source"),
}
RANGE_EDITS = {
    "negative offset": _chunk(offset=-1),
    "float offset": _chunk(offset=0.0),
    "str length": _chunk(size_bytes="100"),
    "past the end": _chunk(offset=len(BODY) - 10, size_bytes=11),
    "absurd": _chunk(offset=2**53, size_bytes=2**53),
    "beyond 2**53": _chunk(size_bytes=2**63),
    "no crc": lambda d: d["chunks"][0].pop("crc32c"),
    "bad crc": _chunk(crc32c="ZZZZZZZZ"),
    "upper crc": _chunk(crc32c="ABCDEF01"),
    "crc int": _chunk(crc32c=12345678),
    "source 1": _chunk(source=1),
    "file name": _chunk(file="../chunk_0000.jsonl"),
    "bool count": _chunk(num_tasks=True),
}
BOTH_EDITS = {  # written to the master and every shard alike, so the sources still match
    "relative url": _sources("a.jsonl"),
    "dotdot url": _sources("/tmp/../etc/passwd"),
    "nul url": _sources("/etc/passwd\x00.jsonl"),
    "query url": _sources("gs://bucket/a.jsonl?X-Goog-Signature=1"),
    "fragment url": _sources("gs://bucket/a.jsonl#frag"),
    "no scheme url": _sources("bucket/a.jsonl"),
    "url list": _sources(["/etc/passwd"]),
    "source not object": _field("sources", ["/etc/passwd"]),
    "sources empty": _field("sources", []),
    "sources object": _field("sources", {"url": "/etc/passwd"}),
    "unknown kind": _field("kind", "exec"),
    "kind null": _field("kind", None),
}
RANGE_SOURCE_EDITS = {
    "size str": _sources(size="100"),
    "size negative": _sources(size=-1),
    "mtime negative": _sources(mtime_ns=-5),
    "mtime float": _sources(mtime_ns=1.5),
    "generation list": _sources(generation=[1]),
}
MASTER_EDITS = {
    "version 3": _field("format_version", 3),
    "version str": _field("format_version", "2"),
    "version bool": _field("format_version", True),
    "version 1 with kind": _field("format_version", 1),
    "version 2.5": _field("format_version", 2.5),
    "no kind": lambda d: d.pop("kind"),
}


def _cases() -> list[Any]:
    cases = []
    for kind, table in (("files", FILE_EDITS), ("by_reference", RANGE_EDITS)):
        cases += [
            pytest.param(kind, "shard", edit, id=f"{kind}-shard-{name}") for name, edit in table.items()
        ]
    for kind in ("files", "by_reference"):
        cases += [pytest.param(kind, "both", e, id=f"{kind}-both-{n}") for n, e in BOTH_EDITS.items()]
        cases += [pytest.param(kind, "master", e, id=f"{kind}-master-{n}") for n, e in MASTER_EDITS.items()]
    cases += [
        pytest.param("by_reference", "both", e, id=f"ranges-both-{n}") for n, e in RANGE_SOURCE_EDITS.items()
    ]
    return cases


@pytest.mark.parametrize(("kind", "where", "edit"), _cases())
def test_hand_edited_metadata_is_refused_never_read(
    tmp_path: Path, kind: str, where: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    ds = files_dataset(tmp_path) if kind == "files" else ranges_dataset(tmp_path)
    if where in ("master", "both"):
        doc = master(ds)
        edit(doc)
        (ds / "master_metadata.json").write_bytes(orjson.dumps(doc))
    if where in ("shard", "both"):
        for s in range(2):
            doc = meta(ds, s)
            edit(doc)
            write_meta(ds, s, doc)
    with pytest.raises(MetadataError):
        list(iter_shard_records(str(ds), 0))
    with pytest.raises(MetadataError):
        list(shard_jsonl(str(ds), 0))
    try:
        claimed = ShardManager(str(ds), "w").claim_shard(0)
    except MetadataError:
        claimed = None
    assert claimed is None or not claimed["chunks"]


def test_hand_edited_metadata_is_one_line_on_stderr_from_cat(tmp_path: Path) -> None:
    ds = ranges_dataset(tmp_path)
    doc = meta(ds, 1)
    doc["chunks"][0]["offset"] = -3
    write_meta(ds, 1, doc)
    result = sc("cat", str(ds), "--shard_id", "1")
    err = clear_error(result)
    assert result.stdout == b""
    assert err.count("\n") == 1
    assert "shard_001/metadata.json" in err
    assert "offset" in err
    doc = master(ds)
    doc["format_version"] = 99
    (ds / "master_metadata.json").write_bytes(orjson.dumps(doc))
    result = sc("cat", str(ds), "--shard_id", "0")
    assert "format_version 99" in clear_error(result)
    assert result.stdout == b""


def test_overlapping_ranges_in_a_shard_are_refused(tmp_path: Path) -> None:
    ds = ranges_dataset(tmp_path)
    doc = meta(ds, 0)
    first = doc["chunks"][0]
    chunks = [first, {**first, "chunk_id": 1}] + [
        {**c, "chunk_id": i + 2} for i, c in enumerate(doc["chunks"][1:])
    ]
    write_meta(
        ds,
        0,
        {
            **doc,
            "chunks": chunks,
            "num_chunks": len(chunks),
            "total_tasks": doc["total_tasks"] + first["num_tasks"],
        },
    )
    with pytest.raises(MetadataError):
        list(iter_shard_records(str(ds), 0))


def test_a_range_whose_records_do_not_match_its_count_is_refused(tmp_path: Path) -> None:
    ds = ranges_dataset(tmp_path)
    doc = meta(ds, 0)
    doc["chunks"][0].update(size_bytes=0, crc32c="00000000")  # num_tasks left as it was
    write_meta(ds, 0, doc)
    with pytest.raises((MetadataError, ChunkCorruptError)):
        list(iter_shard_records(str(ds), 0))


# -- cat -----------------------------------------------------------------------------------------------------


def test_cat_stops_before_any_byte_of_a_corrupt_range(tmp_path: Path) -> None:
    ds = ranges_dataset(tmp_path)
    doc = meta(ds, 0)
    assert len(doc["chunks"]) >= 3
    good = b"".join(shard_jsonl(str(ds), 0))
    bad = doc["chunks"][1]
    body = bytearray(BODY)
    at = bad["offset"] + bad["size_bytes"] // 2
    body[at] = ord("7") if body[at] != ord("7") else ord("8")
    st = (tmp_path / "a.jsonl").stat()
    (tmp_path / "a.jsonl").write_bytes(bytes(body))
    os.utime(tmp_path / "a.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns))
    result = sc("cat", str(ds), "--shard_id", "0")
    err = clear_error(result)
    first = bad["offset"]
    assert f"#bytes={first}-{first + bad['size_bytes'] - 1}" in err
    n_first = doc["chunks"][0]["num_tasks"]
    assert result.stdout == b"".join(good.splitlines(keepends=True)[:n_first])  # range 0 whole, nothing of 1
    later = sc("cat", str(ds), "--shard_id", "0", "--from-chunk", "2")  # past the bad range: still served
    assert later.returncode == 0
    assert later.stdout == b"".join(good.splitlines(keepends=True)[n_first + bad["num_tasks"] :])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--shard_id", "0", "--from-chunk", "-1"], 2, "--from-chunk"),
        (["--shard_id", "0", "--from-chunk", "abc"], 2, "--from-chunk"),
        (["--shard_id", "0", "--from-chunk", "1.5"], 2, "--from-chunk"),
        (["--shard_id", "0", "--from-chunk", "99999999999999999999999999"], 1, "past them"),
        (["--shard_id", "2"], 1, "shard_id must be in 0..1"),
        (["--shard_id", "-1"], 2, "--shard_id"),
        (["--shard_id", "99999999999999999999999999"], 1, "shard_id must be in 0..1"),
        (["--shard_id", "zero"], 2, "--shard_id"),
    ],
)
def test_cat_arguments_out_of_range_are_clear_errors(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    ds = ranges_dataset(tmp_path)
    result = sc("cat", str(ds), *args)
    assert message in clear_error(result, code)
    assert result.stdout == b""


def test_cat_from_chunk_at_and_past_the_end(tmp_path: Path) -> None:
    ds = ranges_dataset(tmp_path)
    n = len(meta(ds, 0)["chunks"])
    at_end = sc("cat", str(ds), "--shard_id", "0", "--from-chunk", str(n))
    assert at_end.returncode == 0
    assert at_end.stdout == b""
    past = sc("cat", str(ds), "--shard_id", "0", "--from-chunk", str(n + 1))
    assert "past them" in clear_error(past)
    with pytest.raises(ValueError, match="past them"):
        list(shard_jsonl(str(ds), 0, start_chunk=n + 1))
    with pytest.raises(ValueError, match="past them"):
        list(shard_jsonl(str(ds), 0, start_chunk=-1))


@pytest.mark.parametrize("kind", ["by_reference", "files"])
def test_cat_into_a_closed_pipe_is_quiet(tmp_path: Path, kind: str) -> None:
    if kind == "files":
        src = tmp_path / "in"
        src.mkdir()
        for i in range(40_000 // 100):
            (src / (f"{i:05d}-" + "n" * 150 + ".bin")).write_bytes(b"")
        ds = tmp_path / "ds"
        create_file_tasks(str(src / "*.bin"), str(ds), 1)
    else:
        (tmp_path / "a.jsonl").write_bytes(BODY * 40)  # ~2.5 MB, far more than a pipe holds
        ds = tmp_path / "ds"
        create_sharded_dataset(str(tmp_path / "a.jsonl"), str(ds), num_shards=1, by_reference=True)
    producer = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "cat", str(ds), "--shard_id", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdout is not None
    assert producer.stderr is not None
    head = producer.stdout.read(100)
    producer.stdout.close()
    errors = producer.stderr.read()
    code = producer.wait(timeout=TIMEOUT)
    producer.stderr.close()
    assert len(head) == 100
    assert errors == b""
    assert code in (0, 141, -13)


# -- claim.records() in real worker processes, every kind ---------------------------------------------------

CLAIM_WORKER = """
import json, pathlib, sys
from shardclaim import ShardManager
ds, out, steal = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "steal"
with ShardManager(ds, lease_seconds=30, heartbeat_seconds=2) as manager:
    for claim in manager.claims(steal=steal):
        with claim:
            got = list(claim.records(parse=False))
        if claim.outcome == "completed":  # only what was committed counts
            got = [g if isinstance(g, str) else g.decode() for g in got]
            (out / f"{claim.name}.{manager.worker_id}.json").write_text(json.dumps(got))
"""


@pytest.mark.parametrize("steal", ["steal", "plain"])
def test_claim_records_in_three_worker_processes_serve_every_kind_exactly_once(
    tmp_path: Path, steal: str
) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"a": list(range(12)), "b 'q'": ["x", "y", "z"]}))
    src = tmp_path / "files"
    src.mkdir()
    for i in range(30):
        (src / f"task {i:02d} 'x'.bin").write_bytes(b"." * i)
    paths, records = awkward_inputs(tmp_path / "ranges")
    kinds = {
        "grid": lambda ds: create_grid_tasks(str(grid), ds, 4, chunk_size_mb=0.0002),
        "files": lambda ds: create_file_tasks(str(src / "*.bin"), ds, 4),
        "ranges": lambda ds: create_sharded_dataset(
            paths, ds, num_shards=4, chunk_size_mb=0.01, by_reference=True
        ),
    }
    want = {
        "grid": [orjson.dumps({"a": a, "b 'q'": b}).decode() for a in range(12) for b in "xyz"],
        "files": [str(src / f"task {i:02d} 'x'.bin") for i in range(30)],
        "ranges": [r.decode() for r in records],
    }
    for kind, build in kinds.items():
        ds, out = str(tmp_path / f"ds-{kind}"), tmp_path / f"out-{kind}"
        build(ds)
        out.mkdir()
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIM_WORKER, ds, str(out), steal], stderr=subprocess.PIPE
            )
            for _ in range(3)
        ]
        for w in workers:
            _, err = w.communicate(timeout=TIMEOUT)
            assert w.returncode == 0, err.decode(errors="replace")
        done = [r for f in out.iterdir() for r in json.loads(f.read_text())]
        assert Counter(done) == Counter(want[kind]), kind
        assert all(s["status"] == "completed" for s in ShardManager(ds, "check").get_shard_status())


@pytest.mark.parametrize("kind", ["by_reference", "files"])
def test_a_rebuild_whose_sources_are_inside_the_dataset_it_replaces_is_refused(
    tmp_path: Path, kind: str
) -> None:
    (tmp_path / "a.jsonl").write_bytes(BODY)
    ds = str(tmp_path / "ds")
    create_sharded_dataset(str(tmp_path / "a.jsonl"), ds, num_shards=2)
    inside = str(tmp_path / "ds" / "shard_*" / "chunk_*.jsonl")
    try:
        if kind == "files":
            create_file_tasks(inside, ds, 2, overwrite=True)
        else:
            create_sharded_dataset(
                str(tmp_path / "ds" / "shard_000" / "chunk_0000.jsonl"),
                ds,
                num_shards=2,
                by_reference=True,
                overwrite=True,
            )
    except InputError:
        return
    for shard in range(2):
        for task in iter_shard_records(ds, shard):  # every source the dataset names is still there
            if kind == "files":
                assert os.path.exists(task), task


@pytest.mark.s3
def test_a_source_on_s3_is_pinned_by_etag(s3_bucket: str, tmp_path: Path) -> None:
    from shardclaim.dataset.localfs import filesystem

    url = f"s3://{s3_bucket}/in/data.jsonl"
    fs, path = filesystem(url)
    fs.pipe(path, BODY)
    ds = str(tmp_path / "ds")
    built = create_sharded_dataset(url, ds, num_shards=2, by_reference=True)
    assert built["sources"][0]["url"] == url
    assert "etag" in built["sources"][0]
    assert b"".join(b"".join(shard_jsonl(ds, s)) for s in range(2)) == BODY
    fs.pipe(path, same_size_other_bytes(tmp_path))  # same size, other bytes: another ETag
    with pytest.raises(ChunkCorruptError, match="etag"):
        list(iter_shard_records(ds, 0))
    result = sc("cat", ds, "--shard_id", "1")
    assert "etag" in clear_error(result)
    assert result.stdout == b""


def test_a_large_range_rewritten_between_its_check_and_its_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import byref_read

    ds = ranges_dataset(tmp_path)
    before = [r for s in range(2) for r in iter_shard_records(str(ds), s, parse=False)]
    monkeypatch.setattr(byref_read, "_IN_MEMORY", 1024)  # every range takes the path of a > 64 MiB one
    source = tmp_path / "a.jsonl"
    blocks = byref_read._blocks
    where = BODY.index(orjson.dumps({"i": 700, "pad": "p" * 11}))  # the bytes the rewrite swaps
    calls = []

    def rewritten_after_the_check(fs: Any, path: str, offset: int, length: int) -> Any:
        if offset <= where < offset + length:
            calls.append(offset)
        if len(calls) == 2:  # the check has read that range; now the read that is yielded
            st = source.stat()
            source.write_bytes(same_size_other_bytes(source))
            os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
        return blocks(fs, path, offset, length)

    monkeypatch.setattr(byref_read, "_blocks", rewritten_after_the_check)
    got: list[bytes] = []
    with pytest.raises(ChunkCorruptError):
        read_shards(str(ds), 2, got)
    assert len(calls) >= 2
    assert got == before[: len(got)]


@pytest.mark.gcs
def test_objects_with_odd_names_on_gcs_are_tasks_named_by_a_url_that_opens_them(
    gcs_bucket: str, tmp_path: Path
) -> None:
    from shardclaim.dataset.localfs import filesystem

    fs, _ = filesystem(f"gs://{gcs_bucket}/x")
    names = [
        "plain.bin",
        "with space.bin",
        "hash#frag.bin",
        "q?mark.bin",
        "br[a]ck.bin",
        "é中.bin",
        "pct%20x.bin",
    ]
    names += ["sub/deep.bin", "zero.bin"]
    want = {}
    for i, name in enumerate(names):
        body = b"" if name == "zero.bin" else f"body {i}".encode()
        fs.pipe(f"{gcs_bucket}/in/{name}", body)
        want[f"gs://{gcs_bucket}/in/{name}"] = body
    ds = str(tmp_path / "ds")
    create_file_tasks([f"gs://{gcs_bucket}/in/**", f"gs://{gcs_bucket}/in/*.bin"], ds, 3)
    got = [t for s in range(3) for t in iter_shard_records(ds, s)]
    assert Counter(got) == Counter(list(want))
    for url in got:
        with fs.open(url, "rb") as f:
            assert f.read() == want[url]


@pytest.mark.parametrize("kind", ["ranges", "files"])
def test_iter_shard_records_refuses_a_start_chunk_out_of_range_like_cat(tmp_path: Path, kind: str) -> None:
    ds = str(ranges_dataset(tmp_path) if kind == "ranges" else files_dataset(tmp_path))
    n = len(meta(Path(ds), 0)["chunks"])
    for start in (-1, n + 1):
        with pytest.raises(ValueError, match="past them"):
            list(shard_jsonl(ds, 0, start_chunk=start))
        with pytest.raises(ValueError, match="chunk"):
            list(iter_shard_records(ds, 0, start_chunk=start))
