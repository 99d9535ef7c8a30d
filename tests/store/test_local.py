"""What is particular to the local directory store: plain files on disk, hidden bookkeeping, atomic
replacement, threads of one process excluded as well as processes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from shardclaim.errors import GenerationMismatchError, StoreError
from shardclaim.store.local import LocalStore


def test_objects_are_plain_files_and_the_generation_is_their_mtime(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    info = store.write("shard_000/metadata.json", b'{"status": "available"}', metadata={"a": "b"})
    path = tmp_path / "shard_000" / "metadata.json"
    assert path.read_bytes() == b'{"status": "available"}'
    assert path.stat().st_mtime_ns == info.generation


def test_bookkeeping_files_stay_hidden_from_listings(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("d/k", b"x")
    store.now()
    names = {p.name for p in tmp_path.rglob("*")}
    assert ".shardclaim.lock" in names
    assert ".shardclaim.clock" in names
    assert [o.key for o in store.list()] == ["d/k"]


def test_a_refused_write_leaves_no_temporary_file_and_the_object_intact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    g = store.write("k", b"v1", if_generation_match=0).generation
    with pytest.raises(GenerationMismatchError):
        store.write("k", b"v2", if_generation_match=g + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shardclaim.lock", "k"]
    assert (tmp_path / "k").read_bytes() == b"v1"


def test_an_outside_touch_of_the_file_counts_as_a_change(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    g = store.write("k", b"v1").generation
    os.utime(tmp_path / "k", ns=(g + 5, g + 5))
    with pytest.raises(GenerationMismatchError):
        store.write("k", b"v2", if_generation_match=g)


def test_a_file_where_a_directory_should_be_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("a", b"x")
    with pytest.raises(StoreError, match="parent"):
        store.write("a/b", b"y")


def test_threads_of_one_process_are_excluded_too(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    store.write("counter", b"0")
    landed = [0] * 8

    def worker(i: int) -> None:
        while landed[i] < 25:
            obj = store.read("counter")
            try:
                store.write("counter", str(int(obj.data) + 1).encode(), if_generation_match=obj.generation)
            except GenerationMismatchError:
                continue
            landed[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.read("counter").data) == sum(landed) == 200


def test_a_corrupt_metadata_attribute_reads_as_no_metadata(tmp_path: Path) -> None:
    # Metadata is a cache of the document: one garbled attribute must not make the object, or a
    # listing of every object, unreadable.
    store = LocalStore(tmp_path)
    store.write("k", b"x", metadata={"a": "b"})
    store.write("other", b"y", metadata={"a": "c"})
    os.setxattr(tmp_path / "k", "user.shardclaim", b"{not json")
    assert store.read("k").metadata == {}
    assert {o.key: dict(o.metadata) for o in store.list()} == {"k": {}, "other": {"a": "c"}}


def test_a_file_edited_in_place_behind_the_store_loses_its_metadata(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("k", b'{"status": "available"}', metadata={"status": "available"})
    assert store.read("k").metadata == {"status": "available"}
    with (tmp_path / "k").open("w") as f:  # the inode and its attribute survive; the bytes change
        f.write('{"status": "completed"}')
    assert store.read("k").metadata == {}  # stale: whoever reads must read the document
    assert [dict(o.metadata) for o in store.list()] == [{}]
    store.write("k", b"z", metadata={"status": "completed"})
    assert store.read("k").metadata == {"status": "completed"}


@pytest.mark.parametrize("year", [2100, 1970])
def test_a_filesystem_clock_far_from_this_machines_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, year: int
) -> None:
    """On NFS the store's clock is the server's (a touched file's change time): one years off would expire
    every live lease (2100) or none (1970). Bounded as GCS's and S3's are: an error naming both clocks."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    store = LocalStore(tmp_path)
    store.now()  # the clock file exists
    real_stat = os.stat
    wrong = int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1e9)

    def server_stat(path: object, *args: object, **kwargs: object) -> object:
        if str(path).endswith(".shardclaim.clock"):  # what a server with a wrong clock stamps
            return SimpleNamespace(st_ctime_ns=wrong)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", server_stat)
    with pytest.raises(StoreError, match=rf"store.s clock \(Date: {year}-01-01.*from this machine.s"):
        store.now()
    monkeypatch.undo()
    assert abs((store.now() - datetime.now(UTC)).total_seconds()) < 60  # the real clock: believed
