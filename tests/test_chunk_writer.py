"""The chunk writer's I/O paths: direct I/O with page-aligned writes, the buffered fallback, and tiny
staging buffers that make every record straddle buffers, pages and chunk boundaries."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim import create_sharded_dataset, iter_shard_records
from shardclaim.dataset import chunks
from shardclaim.dataset.localfs import DIRECT_IO_FILESYSTEMS, filesystem_type

MiB = 1 << 20
PAGE = 4096


def mixed_records(n: int, seed: int) -> list[bytes]:
    """Records from a few bytes to several pages, so that writes rarely end on a page boundary."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 30, 700, 4000, 4095, 4096, 9000, 20000]) for _ in range(n)]
    return [orjson.dumps({"i": i, "pad": "x" * s}) + b"\n" for i, s in enumerate(sizes)]


def takes_direct_io(directory: Path) -> bool:
    """The builder would use direct I/O here: a disk filesystem that accepts O_DIRECT."""
    if not getattr(os, "O_DIRECT", 0) or filesystem_type(str(directory)) not in DIRECT_IO_FILESYSTEMS:
        return False
    try:
        fd = os.open(directory / ".probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    (directory / ".probe").unlink()
    return True


def check_dataset(out: Path, lines: list[bytes], num_shards: int) -> None:
    """Byte-exact, sizes as recorded, and every chunk passes the reader's size and CRC32C check."""
    got = []
    for shard in range(num_shards):
        meta = orjson.loads((out / f"shard_{shard:03d}" / "metadata.json").read_bytes())
        for chunk in meta["chunks"]:
            path = out / f"shard_{shard:03d}" / chunk["file"]
            assert path.stat().st_size == chunk["size_bytes"]
        got += [r + b"\n" for r in iter_shard_records(str(out), shard, parse=False)]
    assert Counter(got) == Counter(lines)


def build_recording_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes]) -> list[int]:
    """Build two shards from ``lines``; the open flags of every chunk file the writer created."""
    flags: list[int] = []
    real_open = os.open

    def spy(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".jsonl") and flag & os.O_WRONLY:
            flags.append(flag)
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    create_sharded_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=2, chunk_size_mb=0.2)
    monkeypatch.undo()
    check_dataset(tmp_path / "ds", lines, 2)
    return flags


@pytest.fixture
def tiny_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pages per shard buffer, a few in flight: every path of add() and the carry run often."""
    monkeypatch.setattr(chunks, "_STAGING", 2 * PAGE * 3)
    monkeypatch.setattr(chunks, "_MAX_BUFFER", 2 * PAGE)
    monkeypatch.setattr(chunks, "_IN_FLIGHT", 2 * PAGE * 4)


@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_tiny_buffers_write_every_byte_once_in_either_mode(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tiny_buffers: None,
    mode: str,
) -> None:
    if mode == "direct" and not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    if mode == "buffered":
        monkeypatch.setattr(chunks, "_DIRECT", 0)
    lines = mixed_records(600, seed=3)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level(logging.INFO, logger="shardclaim.dataset"):
        master = create_sharded_dataset(
            str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=3, chunk_size_mb=0.05
        )
    assert "through the page cache" not in caplog.text  # no misaligned write fell back
    assert sum(s["num_chunks"] for s in master["shards"]) > 10
    check_dataset(tmp_path / "ds", lines, 3)


def test_chunk_files_are_written_with_direct_io_where_the_filesystem_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    flags = build_recording_opens(tmp_path, monkeypatch, mixed_records(300, seed=5))
    assert flags
    assert all(f & os.O_DIRECT for f in flags)


def test_a_filesystem_refusing_direct_io_at_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    refused = []
    real_open = os.open

    def no_direct(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if flag & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", str(path))  # what tmpfs answers
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    lines = mixed_records(300, seed=7)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    create_sharded_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=2, chunk_size_mb=0.1)
    monkeypatch.undo()
    # Asked once per writer thread at most; every later chunk goes straight to buffered.
    assert 1 <= len(refused) <= chunks._WRITERS
    check_dataset(tmp_path / "ds", lines, 2)


def test_network_and_memory_filesystems_are_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS a direct write is a synchronous round trip; the builder does not ask for it there."""
    monkeypatch.setattr(chunks, "filesystem_type", lambda path: "nfs4")
    flags = build_recording_opens(tmp_path, monkeypatch, mixed_records(200, seed=13))
    assert flags
    assert not any(f & getattr(os, "O_DIRECT", 0) for f in flags)


def test_the_filesystem_type_is_that_of_the_innermost_mount() -> None:
    mounts = (
        "/dev/vda / ext4 rw,relatime 0 0\n"
        "server:/export /mnt/data nfs4 rw 0 0\n"
        "tmpfs /mnt/data/scratch tmpfs rw 0 0\n"
        "/dev/vdb /mnt/my\\040disk xfs rw 0 0\n"
    )
    assert filesystem_type("/home/me/ds", mounts) == "ext4"
    assert filesystem_type("/mnt/data/ds", mounts) == "nfs4"
    assert filesystem_type("/mnt/data/scratch/ds", mounts) == "tmpfs"
    assert filesystem_type("/mnt/datax/ds", mounts) == "ext4"  # a prefix of the name is not a mount
    assert filesystem_type("/mnt/my disk/ds", mounts) == "xfs"


def test_direct_writes_refused_after_open_fall_back_mid_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_buffers: None
) -> None:
    """Some devices accept O_DIRECT at open and refuse the alignment at write: nothing is lost."""
    if not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    real_pwrite = os.pwrite
    calls = {"direct": 0, "refused": 0}

    def picky(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            calls["direct"] += 1
            if calls["direct"] > 3:  # the first few went through, then the device changes its mind
                calls["refused"] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", picky)
    lines = mixed_records(400, seed=11)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    create_sharded_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=2, chunk_size_mb=0.05)
    monkeypatch.undo()
    # Each file already open direct (one per shard) is refused once by each writer caught writing to it
    # then; later files are opened buffered.
    assert 1 <= calls["refused"] <= 2 * chunks._WRITERS
    check_dataset(tmp_path / "ds", lines, 2)


def test_staging_memory_is_fixed_and_shared_out_among_the_shards(tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    sizes = {}
    for shards in (1, 8, 1000):
        writer = chunks.ChunkWriter(LocalFileSystem(), str(tmp_path), shards, 100 * MiB)
        sizes[shards] = len(writer._arena)
        writer.abort()
    # The same arena for 1 and 8 shards; 1000 shards get page-sized buffers, not 1000 x 2 MiB.
    assert sizes[1] <= sizes[8] <= 32 * MiB
    assert sizes[1000] <= 1000 * PAGE + 32 * MiB


def _mapping_of(address: int) -> tuple[str, dict[str, str]]:
    """The /proc/self/smaps header line and fields of the mapping holding ``address``."""
    header, fields, found = "", {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and ":" not in first:  # a mapping's header: start-end perms offset dev inode path
            if found:
                break
            start, end = (int(x, 16) for x in first.split("-"))
            found = start <= address < end
            header, fields = line, {}
        elif found and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    assert found, hex(address)
    return header, fields


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc only")
def test_staging_memory_is_private_and_asks_for_huge_pages(tmp_path: Path) -> None:
    """Direct writes from 4 KiB pages of a shared (tmpfs) map reach a virtio disk as 512 segments per
    2 MiB and were the whole build's bottleneck: the arena must be private anonymous memory, advised
    into huge pages wherever the kernel has them (VmFlags "hg")."""
    import ctypes

    from fsspec.implementations.local import LocalFileSystem

    writer = chunks.ChunkWriter(LocalFileSystem(), str(tmp_path), 8, 100 * MiB)
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(writer._arena))
        header, fields = _mapping_of(address)
        assert header.split()[1] == "rw-p", header  # private, not shared
        assert len(header.split()) == 5, header  # anonymous: no file, not /dev/zero (deleted)
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if thp.exists() and "[never]" not in thp.read_text():
            assert "hg" in fields["VmFlags"].split(), fields["VmFlags"]
    finally:
        writer.abort()


def test_a_full_disk_fails_the_build_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in a writer thread reaches the caller as the error; nothing is published or left behind."""
    real_pwrite = os.pwrite
    calls = []

    def filling_up(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(chunks, "_STAGING", 2 * PAGE * 3)
    monkeypatch.setattr(chunks, "_MAX_BUFFER", 2 * PAGE)
    monkeypatch.setattr(os, "pwrite", filling_up)
    (tmp_path / "in.jsonl").write_bytes(b"".join(mixed_records(500, seed=17)))
    with pytest.raises(OSError, match="No space left"):
        create_sharded_dataset(str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=3)
    monkeypatch.undo()
    assert len(calls) > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no staging area


def test_an_upload_refused_at_close_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote chunk files (fsspec) can fail only when closed, in a writer thread: the build raises it."""
    from fsspec.implementations.memory import MemoryFile

    from shardclaim import open_store

    def refused(self: Any) -> None:
        raise OSError("upload refused")

    monkeypatch.setattr(MemoryFile, "close", refused)
    (tmp_path / "in.jsonl").write_bytes(b"".join(mixed_records(50, seed=19)))
    with pytest.raises(OSError, match="upload refused"):
        create_sharded_dataset(str(tmp_path / "in.jsonl"), "memory://shardclaim-close-fails", num_shards=2)
    monkeypatch.undo()
    assert [o.key for o in open_store("memory://shardclaim-close-fails").list()] == []


@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_beyond_the_descriptor_budget_each_write_opens_its_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_buffers: None, mode: str
) -> None:
    """More shards than descriptors to spare: no chunk file stays open between writes, and every byte
    still lands once, with direct I/O or without."""
    if mode == "direct" and not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    if mode == "buffered":
        monkeypatch.setattr(chunks, "_DIRECT", 0)
    monkeypatch.setattr(chunks, "descriptors_to_spare", lambda: 2)
    open_now: set[int] = set()
    most = [0]
    real_open, real_close = os.open, os.close

    def counting_open(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flag, *args, **kwargs)
        if str(path).endswith(".jsonl"):
            open_now.add(fd)
            most[0] = max(most[0], len(open_now))
        return fd

    def counting_close(fd: int) -> None:
        open_now.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "close", counting_close)
    lines = mixed_records(1200, seed=23)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    master = create_sharded_dataset(
        str(tmp_path / "in.jsonl"), str(tmp_path / "ds"), num_shards=12, chunk_size_mb=0.05
    )
    monkeypatch.undo()
    assert sum(s["num_chunks"] for s in master["shards"]) > 24
    assert 1 <= most[0] <= chunks._WRITERS + 1  # the writers' and the main thread's, not 12 shards'
    check_dataset(tmp_path / "ds", lines, 12)


@pytest.mark.parametrize(("shards", "block"), [(8, 8 * MiB), (200, 1280 << 10), (2048, 256 << 10)])
def test_remote_chunk_files_share_one_upload_budget(shards: int, block: int) -> None:
    """gcsfs keeps up to a block per open file, and every shard has one open: 2,048 shards of 8 MiB
    would be 16 GiB. The blocks share 256 MiB, in GCS's 256 KiB upload units."""
    from fsspec.implementations.memory import MemoryFileSystem

    opened: list[int] = []

    class Recording(MemoryFileSystem):  # type: ignore[misc]
        def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            opened.append(kwargs["block_size"])
            return super().open(path, mode)

    writer = chunks.ChunkWriter(Recording(), f"/block-{shards}", shards, 100 * MiB)
    for i in range(shards):
        writer.add(i, memoryview(b'{"i": %d}\n' % i))
    writer.finish()
    assert opened == [block] * shards


@pytest.mark.parametrize("mode", ["direct", "buffered", "reopened"])
def test_every_chunk_and_its_directory_is_made_durable_before_the_master_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_buffers: None, mode: str
) -> None:
    """A power cut after the master is published must not take back a chunk: every chunk file is
    fdatasync'ed, and every shard directory fsync'ed, before ``master_metadata.json`` exists."""
    if mode == "direct" and not takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    if mode == "buffered":
        monkeypatch.setattr(chunks, "_DIRECT", 0)
    if mode == "reopened":  # beyond the descriptor budget: each write opens its file again
        monkeypatch.setattr(chunks, "descriptors_to_spare", lambda: 0)
    out = tmp_path / "ds"
    synced: list[tuple[str, str]] = []  # (call, the last two parts of the path), before publishing
    real = {"fdatasync": os.fdatasync, "fsync": os.fsync}

    def spy(call: str) -> Any:
        def synced_now(fd: int) -> None:
            real[call](fd)
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not (out / "master_metadata.json").exists():  # (the publishing rename is synced after it)
                synced.append((call, f"{path.parent.name}/{path.name}"))

        return synced_now

    monkeypatch.setattr(os, "fdatasync", spy("fdatasync"))
    monkeypatch.setattr(os, "fsync", spy("fsync"))
    lines = mixed_records(400, seed=11)
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    master = create_sharded_dataset(str(tmp_path / "in.jsonl"), str(out), num_shards=3, chunk_size_mb=0.05)
    monkeypatch.undo()
    check_dataset(out, lines, 3)
    chunk_files = {f"{p.parent.name}/{p.name}" for p in out.glob("shard_*/chunk_*")}
    assert len(chunk_files) == sum(s["num_chunks"] for s in master["shards"]) > 6
    assert chunk_files <= {path for call, path in synced if call == "fdatasync"}
    directories = {path.split("/")[1] for call, path in synced if call == "fsync"}
    assert {f"shard_{i:03d}" for i in range(3)} <= directories
