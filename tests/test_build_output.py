"""The output of a build: an old dataset survives until the new one is whole (--overwrite), one build at
a time writes to an output, and a build never writes through a symbolic link out of it. Real processes
for every race; a build paused mid-way reads its input from a FIFO this test writes."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from shardclaim import DatasetExistsError, InputError, create_sharded_dataset, iter_shard_records

PYTHON = sys.executable


def shardclaim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "shardclaim", *args], capture_output=True, text=True, timeout=300, check=False
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a dataset directory and its bytes (the store's and builder's own files aside)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".shardclaim") for part in p.relative_to(directory).parts)
    }


def leftovers(root: Path) -> list[str]:
    """Staging areas and set-aside trees anywhere under ``root``."""
    return sorted(
        str(p) for p in root.rglob("*") if "shardclaim-build-" in p.name or "shardclaim-old-" in p.name
    )


def read_back(url: str) -> list[bytes]:
    """Every record of the dataset at ``url``, each chunk's size and CRC32C checked."""
    master = orjson.loads(_read(url, "master_metadata.json"))
    return [r + b"\n" for s in range(master["num_shards"]) for r in iter_shard_records(url, s, parse=False)]


def _read(url: str, key: str) -> bytes:
    from shardclaim import open_store

    return open_store(url).read(key).data


def tagged(n: int, tag: str) -> list[bytes]:
    return [orjson.dumps({"tag": tag, "i": i, "pad": "y" * (i % 300)}) + b"\n" for i in range(n)]


@pytest.fixture(params=["swap", "move"])
def publish_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a local build switches to the new dataset: one atomic exchange of directories (where the
    filesystem has it), or renames inside the output (NFS, mount points)."""
    if request.param == "move":
        from shardclaim.dataset import output_local

        monkeypatch.setattr(output_local, "_exchange_works", lambda *a: False)
    return str(request.param)


def existing_dataset(tmp_path: Path, num_shards: int = 4) -> tuple[Path, list[bytes]]:
    lines = tagged(400, "old")
    src = tmp_path / "old.jsonl"
    src.write_bytes(b"".join(lines))
    out = tmp_path / "ds"
    create_sharded_dataset(str(src), str(out), num_shards=num_shards, chunk_size_mb=0.01)
    return out, lines


# -- item 7: the old dataset survives until the new one is whole -----------------------------------


def failing_input(tmp_path: Path, failure: str) -> tuple[str, dict[str, Any]]:
    if failure == "missing input":
        return str(tmp_path / "misspelled.jsonl"), {}
    if failure == "too many shards":
        (tmp_path / "few.jsonl").write_bytes(b"".join(tagged(3, "new")))
        return str(tmp_path / "few.jsonl"), {"num_shards": 8}
    lines = tagged(3000, "new")
    if failure == "malformed line":
        lines[2500] = b'{"broken": \n'
        (tmp_path / "new.jsonl").write_bytes(b"".join(lines))
        return str(tmp_path / "new.jsonl"), {}
    blob = gzip.compress(b"".join(lines))
    (tmp_path / "new.jsonl.gz").write_bytes(blob[: len(blob) - 20])
    return str(tmp_path / "new.jsonl.gz"), {"validate": False}


def test_where_the_filesystem_can_swap_directories_the_new_dataset_is_swapped_in_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardclaim.dataset import output_local

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not output_local._exchange_works(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip(f"{tmp_path} cannot exchange directories")
    out, _ = existing_dataset(tmp_path)
    swaps: list[tuple[str, str]] = []
    real = output_local._exchange

    def spy(a: str, b: str) -> None:
        swaps.append((a, b))
        real(a, b)

    monkeypatch.setattr(output_local, "_exchange", spy)
    (tmp_path / "new.jsonl").write_bytes(b"".join(tagged(50, "new")))
    create_sharded_dataset(str(tmp_path / "new.jsonl"), str(out), num_shards=2, overwrite=True)
    staged = [a for a, b in swaps if b == str(out)]
    assert len(staged) == 1
    assert Path(staged[0]).name.startswith(".ds.shardclaim-build-")  # a sibling of the output
    assert Path(staged[0]).parent == tmp_path


@pytest.mark.parametrize("failure", ["missing input", "malformed line", "truncated input", "too many shards"])
def test_a_failed_overwrite_leaves_the_old_dataset_as_it_was(
    tmp_path: Path, publish_mode: str, failure: str
) -> None:
    out, _ = existing_dataset(tmp_path)
    before = snapshot(out)
    src, kwargs = failing_input(tmp_path, failure)
    with pytest.raises(InputError):
        create_sharded_dataset(
            src, str(out), **{"num_shards": 2, "chunk_size_mb": 0.01, **kwargs}, overwrite=True
        )
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_resharding_a_dataset_from_its_own_chunks_on_the_command_line(tmp_path: Path) -> None:
    """The reported case: ``--input_file 'ds/shard_*/chunk_*.jsonl' --output_dir ds --overwrite``."""
    out, lines = existing_dataset(tmp_path, num_shards=4)
    pattern = str(out / "shard_*" / "chunk_*.jsonl")
    result = shardclaim(
        "create", "--input_file", pattern, "--output_dir", str(out), "--overwrite", "--num_shards", "3"
    )
    assert result.returncode == 0, result.stderr
    assert Counter(read_back(str(out))) == Counter(lines)
    assert sorted(p.name for p in out.glob("shard_*")) == ["shard_000", "shard_001", "shard_002"]
    assert leftovers(tmp_path) == []


def test_resharding_a_dataset_from_its_own_chunks_keeps_every_record(
    tmp_path: Path, publish_mode: str
) -> None:
    out, lines = existing_dataset(tmp_path, num_shards=4)
    (out / "_finalize.json").write_text("{}")  # a run over the old dataset finished: not the new one's
    create_sharded_dataset(str(out / "shard_*" / "chunk_*.jsonl"), str(out), num_shards=3, overwrite=True)
    assert not (out / "_finalize.json").exists()
    master = orjson.loads((out / "master_metadata.json").read_bytes())
    assert master["num_shards"] == 3
    assert Counter(read_back(str(out))) == Counter(lines)
    assert sorted(p.name for p in out.glob("shard_*")) == ["shard_000", "shard_001", "shard_002"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("publish_mode", "fail_at"), [("swap", 0), ("move", 1), ("move", 3), ("move", 6)])
def test_a_switch_that_fails_half_way_puts_the_old_dataset_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publish_mode: str, fail_at: int
) -> None:
    """What fails is the exchange itself (swap), or a rename of the switch (move): the first (the old
    master's), one of the old shards', one of the new shards'."""
    from shardclaim.dataset import output_local

    if publish_mode == "move":
        monkeypatch.setattr(output_local, "_exchange_works", lambda *a: False)

    out, lines = existing_dataset(tmp_path)
    before = snapshot(out)
    renames: list[str] = []
    real_rename = os.rename

    def failing_rename(a: Any, b: Any, *args: Any, **kwargs: Any) -> None:
        switching = ".shardclaim-old-" in str(b) or ".shardclaim-build-" in str(a)
        if switching and ".shardclaim-tmp" not in str(a):  # not the store's own renames
            renames.append(str(a))
            if len(renames) == fail_at:
                raise OSError(5, "Input/output error")
        real_rename(a, b, *args, **kwargs)

    def failing_exchange(a: str, b: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "rename", failing_rename)
    if publish_mode == "swap":  # the exchange works when tried, and fails when it counts
        monkeypatch.setattr(output_local, "_exchange_works", lambda *a: True)
        monkeypatch.setattr(output_local, "_exchange", failing_exchange)
    (tmp_path / "new.jsonl").write_bytes(b"".join(tagged(500, "new")))
    with pytest.raises(OSError, match="Input/output error"):
        create_sharded_dataset(str(tmp_path / "new.jsonl"), str(out), num_shards=3, overwrite=True)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert Counter(read_back(str(out))) == Counter(lines)
    assert leftovers(tmp_path) == []
    if publish_mode == "move":
        assert len(renames) == fail_at


@contextmanager
def paused_build(tmp_path: Path, out: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], IO[bytes]]]:
    """A build (a real process) whose input is a FIFO: once this has opened the FIFO, the build has
    opened its input, so it holds the output and has set up its staging area; it then waits for more
    input until the caller writes it or closes the FIFO."""
    fifo = tmp_path / f"input-{uuid.uuid4().hex[:8]}.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [PYTHON, "-m", "shardclaim", "create", "--input_file", str(fifo), "--output_dir", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    opened: list[IO[bytes]] = []
    opener = threading.Thread(target=lambda: opened.append(fifo.open("wb")), daemon=True)
    opener.start()
    while not opened:  # wait for the build to open its input; fail if it exited instead
        opener.join(0.05)
        if proc.poll() is not None and not opened:
            with fifo.open("rb"):  # unblock the opener
                pass
            pytest.fail(f"the build exited before reading its input: {proc.communicate()}")
    try:
        yield proc, opened[0]
    finally:
        if not opened[0].closed:
            opened[0].close()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate(timeout=300)  # waits, and closes the pipes


def test_a_killed_overwrite_leaves_the_old_dataset_and_the_next_build_cleans_up(tmp_path: Path) -> None:
    out, lines = existing_dataset(tmp_path)
    before = snapshot(out)
    with paused_build(tmp_path, out, "--overwrite", "--num_shards", "2", "--chunk_size_mb", "0.01") as (
        proc,
        w,
    ):
        w.write(b"".join(tagged(3000, "new")))  # chunks reach the staging area; the input goes on
        w.flush()
        assert leftovers(tmp_path)  # the build writes into its staging area...
        assert snapshot(out) == before  # ...and not into the dataset
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert snapshot(out) == before
    assert Counter(read_back(str(out))) == Counter(lines)
    (tmp_path / "again.jsonl").write_bytes(b"".join(tagged(50, "again")))
    master = create_sharded_dataset(str(tmp_path / "again.jsonl"), str(out), num_shards=2, overwrite=True)
    assert master["total_tasks"] == 50
    assert leftovers(tmp_path) == []


# -- item 8: one build at a time ------------------------------------------------------------------


def test_a_second_build_into_an_output_being_built_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    link = tmp_path / "link-to-ds"
    first = tagged(2000, "first")
    with paused_build(tmp_path, out, "--num_shards", "3", "--chunk_size_mb", "0.02") as (proc, w):
        w.write(b"".join(first[:1000]))
        w.flush()
        (tmp_path / "second.jsonl").write_bytes(b"".join(tagged(100, "second")))
        link.symlink_to(out)
        for target, flags in ((out, []), (out, ["--overwrite"]), (link, ["--overwrite"])):
            second = shardclaim(
                "create", "--input_file", str(tmp_path / "second.jsonl"), "--output_dir", str(target), *flags
            )
            assert second.returncode == 1
            assert "another build is writing to" in second.stderr
            assert "Traceback" not in second.stderr
        w.write(b"".join(first[1000:]))
        w.close()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert Counter(read_back(str(out))) == Counter(first)
    assert leftovers(tmp_path) == []


Outcome = tuple[int, str, list[bytes]]  # exit status, stderr, the build's input


def race(
    tmp_path: Path, out: str, round_: int, racers: int, *flags: str, mode: str = "swap"
) -> list[Outcome]:
    """``racers`` builds of distinct inputs into ``out``, started together (each signals it has
    imported everything, then all are released at once): (exit status, stderr, its input) each."""
    inputs = []
    for k in range(racers):
        lines = tagged(4000, f"round{round_}-racer{k}")
        path = tmp_path / f"r{round_}-{k}.jsonl"
        path.write_bytes(b"".join(lines))
        inputs.append((path, lines))
    code = (
        "import sys\n"
        "import shardclaim.cli, shardclaim.dataset.build, shardclaim.dataset.validate\n"
        "if sys.argv[-1].startswith('gs://'):\n"
        "    import gcsfs, shardclaim.store.gcs\n"
        f"if {mode == 'move'}:  # as on NFS: no exchange of directories\n"
        "    import shardclaim.dataset.output_local as o; o._exchange_works = lambda *a: False\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "sys.exit(shardclaim.cli.main(sys.argv[1:]))\n"
    )
    procs = []
    for path, _ in inputs:
        argv = [PYTHON, "-c", code, "create", "--input_file", str(path), "--num_shards", "3",
                "--chunk_size_mb", "0.05", *flags, "--output_dir", out]  # fmt: skip
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs.append(subprocess.Popen(argv, text=True, **pipes))
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p, (_, lines) in zip(procs, inputs, strict=True):
            _, err = p.communicate(timeout=300)
            results.append((p.returncode, err, lines))
        return results
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.communicate()


def check_race(results: list[Outcome], out: str, *, overwrite: bool) -> None:
    winners = [lines for status, _, lines in results if status == 0]
    for status, err, _ in results:
        assert status in (0, 1), err
        if status == 1:
            assert "another build is writing to" in err or "already holds a dataset" in err, err
            assert "Traceback" not in err
    if not overwrite:
        assert len(winners) == 1
    assert winners
    published = Counter(read_back(out))
    assert any(published == Counter(lines) for lines in winners)  # one build's records, whole


@pytest.mark.parametrize("mode", ["swap", "move"])
@pytest.mark.parametrize("round_", range(3))
def test_racing_builds_into_one_directory_one_wins_and_the_dataset_is_whole(
    tmp_path: Path, round_: int, mode: str
) -> None:
    out = str(tmp_path / "ds")
    check_race(race(tmp_path, out, round_, 3, mode=mode), out, overwrite=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", ["swap", "move"])
@pytest.mark.parametrize("round_", range(2))
def test_racing_overwrites_leave_one_whole_dataset(tmp_path: Path, round_: int, mode: str) -> None:
    out, _ = existing_dataset(tmp_path)
    check_race(race(tmp_path, str(out), round_, 3, "--overwrite", mode=mode), str(out), overwrite=True)
    assert leftovers(tmp_path) == []


# -- item 9: never through a symbolic link --------------------------------------------------------


@pytest.mark.parametrize("what", ["shard directory", "master", "chunk", "shard metadata", "other entry"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_symbolic_link_in_the_output_is_refused_and_what_it_points_to_is_untouched(
    tmp_path: Path, what: str, overwrite: bool
) -> None:
    out, _ = existing_dataset(tmp_path, num_shards=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    entry = {
        "shard directory": out / "shard_000",
        "master": out / "master_metadata.json",
        "chunk": out / "shard_001" / "chunk_0000.jsonl",
        "shard metadata": out / "shard_001" / "metadata.json",
        "other entry": out / "notes",
    }[what]
    if entry.is_dir():
        for p in entry.iterdir():
            p.unlink()
        entry.rmdir()
    elif entry.exists():
        entry.unlink()
    entry.symlink_to(elsewhere if what in ("shard directory", "other entry") else elsewhere / "precious.txt")
    before = snapshot(elsewhere)
    src = tmp_path / "new.jsonl"
    src.write_bytes(b"".join(tagged(200, "new")))
    with pytest.raises(DatasetExistsError, match=rf"{entry.name} is a symbolic link"):
        create_sharded_dataset(str(src), str(out), num_shards=2, overwrite=overwrite)
    assert snapshot(elsewhere) == before
    assert entry.is_symlink()
    assert leftovers(tmp_path) == []


def test_a_shard_directory_linked_elsewhere_in_an_empty_output_gets_nothing_written(tmp_path: Path) -> None:
    """The reported case: ``shard_000`` a link to another directory, no dataset yet."""
    out = tmp_path / "ds"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "shard_000").symlink_to(elsewhere)
    (tmp_path / "in.jsonl").write_bytes(b"".join(tagged(100, "x")))
    result = shardclaim("create", "--input_file", str(tmp_path / "in.jsonl"), "--output_dir", str(out))
    assert result.returncode == 1
    assert "shard_000 is a symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode", ["swap", "move"])
def test_a_symbolic_link_to_the_output_directory_itself_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "move":
        from shardclaim.dataset import output_local

        monkeypatch.setattr(output_local, "_exchange_works", lambda *a: False)
    real = tmp_path / "disk" / "datasets" / "ds"
    real.parent.mkdir(parents=True)
    link = tmp_path / "ds-link"
    link.symlink_to(real, target_is_directory=True)
    first, second = tagged(100, "first"), tagged(120, "second")
    (tmp_path / "first.jsonl").write_bytes(b"".join(first))
    (tmp_path / "second.jsonl").write_bytes(b"".join(second))
    create_sharded_dataset(str(tmp_path / "first.jsonl"), str(link), num_shards=2)
    assert Counter(read_back(str(real))) == Counter(first)
    create_sharded_dataset(str(tmp_path / "second.jsonl"), str(link), num_shards=3, overwrite=True)
    assert link.is_symlink()
    assert Counter(read_back(str(link))) == Counter(second)
    assert Counter(read_back(str(real))) == Counter(second)
    assert leftovers(tmp_path) == []


# -- object stores: the same promises on the GCS test server --------------------------------------


def gcs_snapshot(url: str) -> dict[str, bytes]:
    from shardclaim.dataset.localfs import filesystem

    fs, base = filesystem(url)
    fs.invalidate_cache()
    return {p[len(base) + 1 :]: fs.cat(p) for p in fs.find(base)}


def seed_layout(keys: list[str], num_shards: int) -> bool:
    shards = {f"shard_{i:03d}" for i in range(num_shards)}
    return "master_metadata.json" in keys and all(
        k == "master_metadata.json" or (k.split("/")[0] in shards and k.count("/") == 1) for k in keys
    )


def gcs_dataset(tmp_path: Path, url: str, num_shards: int = 3) -> list[bytes]:
    lines = tagged(300, "old")
    (tmp_path / "old.jsonl").write_bytes(b"".join(lines))
    create_sharded_dataset(str(tmp_path / "old.jsonl"), url, num_shards=num_shards, chunk_size_mb=0.01)
    return lines


@pytest.fixture(params=[pytest.param("gcs", marks=pytest.mark.gcs), pytest.param("s3", marks=pytest.mark.s3)])
def bucket_ds(request: pytest.FixtureRequest) -> str:
    """A dataset URL in a bucket of a test server: GCS (its test server), and S3 (moto; there the build
    marker is a create-if-absent on an ETag store)."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/ds"
    return f"gs://{request.getfixturevalue('gcs_bucket')}/ds"


@pytest.mark.parametrize("failure", ["missing input", "malformed line"])
def test_in_a_bucket_a_failed_overwrite_leaves_the_old_dataset_as_it_was(
    tmp_path: Path, bucket_ds: str, failure: str
) -> None:
    url = bucket_ds
    gcs_dataset(tmp_path, url)
    before = gcs_snapshot(url)
    src, kwargs = failing_input(tmp_path, failure)
    with pytest.raises(InputError):
        create_sharded_dataset(src, url, num_shards=2, overwrite=True, **kwargs)
    assert gcs_snapshot(url) == before


def test_in_a_bucket_resharding_a_dataset_from_its_own_chunks_keeps_every_record(
    tmp_path: Path, bucket_ds: str
) -> None:
    url = bucket_ds
    lines = gcs_dataset(tmp_path, url, num_shards=4)
    master = create_sharded_dataset(f"{url}/shard_*/chunk_*.jsonl", url, num_shards=2, overwrite=True)
    assert master["total_tasks"] == len(lines)
    assert Counter(read_back(url)) == Counter(lines)
    assert seed_layout(list(gcs_snapshot(url)), 2)  # no staging objects, no marker, no old shards


@pytest.mark.parametrize("overwrite", [False, True])
def test_in_a_bucket_racing_builds_one_wins_and_the_dataset_is_whole(
    tmp_path: Path, bucket_ds: str, overwrite: bool
) -> None:
    url = bucket_ds
    if overwrite:
        gcs_dataset(tmp_path, url)
    flags = ["--overwrite"] if overwrite else []
    check_race(race(tmp_path, url, 0, 3, *flags), url, overwrite=overwrite)
    assert seed_layout(list(gcs_snapshot(url)), 3)


@pytest.mark.gcs
def test_on_gcs_a_live_marker_refuses_a_build_and_a_stale_one_is_taken_over(
    tmp_path: Path, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from shardclaim import open_store
    from shardclaim.dataset import BuildInProgressError, lock

    url = f"gs://{gcs_bucket}/ds"
    old = gcs_dataset(tmp_path, url)
    marker = {"state": "building", "pid": 4242, "host": "elsewhere", "started": "2026-11-01T00:00:00+00:00"}
    open_store(url).write("_build.json", orjson.dumps(marker), if_generation_match=0)  # a live build's
    before = gcs_snapshot(url)
    (tmp_path / "new.jsonl").write_bytes(b"".join(new := tagged(120, "new")))
    with pytest.raises(BuildInProgressError, match="pid 4242 on elsewhere"):
        create_sharded_dataset(str(tmp_path / "new.jsonl"), url, num_shards=2, overwrite=True)
    assert gcs_snapshot(url) == before
    assert Counter(read_back(url)) == Counter(old)
    # Not renewed for longer than STALE_AFTER on the store's clock: its build died; take it over.
    monkeypatch.setattr(lock, "STALE_AFTER", timedelta(seconds=-1))
    create_sharded_dataset(str(tmp_path / "new.jsonl"), url, num_shards=2, overwrite=True)
    assert Counter(read_back(url)) == Counter(new)
    assert seed_layout(list(gcs_snapshot(url)), 2)


@pytest.mark.gcs
def test_on_gcs_a_build_whose_marker_was_taken_over_publishes_nothing(
    tmp_path: Path, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build paused past STALE_AFTER loses its marker to another build: when it comes back it
    must not publish over that build's output."""
    from shardclaim import open_store
    from shardclaim.dataset import BuildInProgressError, build

    url = f"gs://{gcs_bucket}/ds"
    old = gcs_dataset(tmp_path, url)
    real = build._distribute

    def then_taken_over(*args: Any, **kwargs: Any) -> Any:
        stats = real(*args, **kwargs)
        store = open_store(url)
        current = store.read("_build.json")
        taker = {"state": "building", "pid": 7, "host": "taker", "started": "2026-11-01T00:00:00+00:00"}
        store.write("_build.json", orjson.dumps(taker), if_generation_match=current.generation)
        return stats

    monkeypatch.setattr(build, "_distribute", then_taken_over)
    (tmp_path / "new.jsonl").write_bytes(b"".join(tagged(120, "new")))
    with pytest.raises(BuildInProgressError, match="taken over"):
        create_sharded_dataset(str(tmp_path / "new.jsonl"), url, num_shards=2, overwrite=True)
    assert Counter(read_back(url)) == Counter(old)
    snapshot_keys = list(gcs_snapshot(url))
    assert "_build.json" in snapshot_keys  # the taker's, left alone
    assert not [k for k in snapshot_keys if k.startswith(".shardclaim")]
