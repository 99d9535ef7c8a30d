"""``.zst`` inputs decoded by a ``zstd`` process or by python-zstandard: the same bytes out, the same
files refused with the same errors, and no process or file descriptor left behind however the reading
ends. Every promise is checked on the three decoders (``SHARDCLAIM_ZSTD=process`` with a ``zstd``
executable on PATH, ``child`` (python-zstandard in a child process) and ``python`` (in this process))."""

from __future__ import annotations

import gc
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from shardclaim import InputError, create_sharded_dataset
from shardclaim.dataset import zstd
from shardclaim.dataset.localfs import LocalInput
from shardclaim.dataset.zstd import ENV, ZstdProcessReader, ZstdReader
from shardclaim.dataset.zstd_child import ZstdChildReader
from shardclaim.errors import CompressedStreamError
from tests.test_build_inputs import zstd_block_ends
from tests.test_dataset import dataset_lines, records

TRUNCATED = "the zstd data ends before its end-of-stream marker: the file is truncated"
NO_FRAME = "no zstd frame in the file"
HAS_ZSTD = shutil.which("zstd") is not None


READERS = {"process": ZstdProcessReader, "child": ZstdChildReader, "python": ZstdReader}


@pytest.fixture(params=list(READERS))
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "process" and not HAS_ZSTD:
        pytest.skip("no zstd executable on PATH")
    monkeypatch.setenv(ENV, request.param)
    return str(request.param)


def compress(data: bytes, *, checksum: bool = True, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(data)


def skippable(payload: bytes) -> bytes:
    return (0x184D2A5E).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def body(n: int = 4000, seed: int = 0) -> bytes:
    return b"".join(records(n, size=300, seed=seed))


BIG = body(80_000)  # 11 MiB decoded: far more than the pipe and zstd's buffers hold, so it is still running


def opened(path: Path, decoder: str) -> Any:
    reader = LocalInput(str(path)).open()
    assert type(reader) is READERS[decoder], type(reader)
    return reader


def decoded(path: Path, decoder: str, size: int = 1 << 20) -> bytes:
    out = bytearray()
    buffer = bytearray(size)
    with opened(path, decoder) as reader:
        while n := reader.readinto(buffer):
            out += buffer[:n]
    return bytes(out)


def read_at_least(reader: Any, n: int) -> int:
    got = 0
    while got < n and (part := reader.read(n - got)):
        got += len(part)
    return got


def read_all(reader: Any) -> None:
    while reader.read(1 << 20):
        pass


def refusal(path: Path, decoder: str) -> CompressedStreamError:
    with pytest.raises(CompressedStreamError) as caught:
        decoded(path, decoder)
    return caught.value


def write(tmp_path: Path, blob: bytes, name: str = "in.jsonl.zst") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def zstd_children() -> list[int]:
    """This process's decoding children (``zstd``, or Python running the zstd child), running or not yet
    reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name, _, rest = text.partition(") ")
        if int(rest.split()[1]) != os.getpid():
            continue
        try:
            child = b"zstd_child" in Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            child = False
        if name.endswith("(zstd") or child:
            found.append(int(entry))
    return found


def descriptors() -> set[str]:
    """This process's open descriptors of the kinds a decoder opens (the input, pipes, Unix sockets, a
    memfd, a deleted temporary file), each as "fd -> what". Not the others: earlier tests leave lease
    heartbeats running in this process, which open and close files and TCP connections at any moment.
    Garbage is collected first (a file object collected between two readings would close its
    descriptor there)."""
    gc.collect()
    unix = set()
    with open("/proc/net/unix") as table:
        for row in list(table)[1:]:
            unix.add(row.split()[6])
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            what = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        socket_inode = what.removeprefix("socket:[").removesuffix("]") if what.startswith("socket:[") else ""
        if (
            what.startswith(("pipe:", "/memfd:"))
            or what.endswith((".zst", "(deleted)"))
            or socket_inode in unix
        ):
            found.add(f"{fd} -> {what}")
    return found


def gone(pid: int) -> bool:
    """Neither running nor a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


# -- the same bytes ----------------------------------------------------------------------------------


def exact_cases() -> Iterator[Any]:
    a, b, c = body(3000), body(2000, seed=1), body(10, seed=2)
    yield pytest.param(compress(a), a, id="one-frame")
    yield pytest.param(compress(a, checksum=False), a, id="one-frame-no-checksum")
    yield pytest.param(compress(a) + compress(b, checksum=False) + compress(c), a + b + c, id="three-frames")
    yield pytest.param(compress(b"") + compress(a), a, id="an-empty-frame-first")
    yield pytest.param(
        skippable(b"x" * 100) + compress(a) + skippable(b"") + compress(b) + skippable(b"meta"),
        a + b,
        id="skippable-frames-around",
    )
    yield pytest.param(compress(BIG, level=1), BIG, id="larger-than-a-pipe")


@pytest.mark.parametrize(("blob", "expected"), list(exact_cases()))
@pytest.mark.parametrize("size", [1 << 20, 8 << 20, 4093])
def test_the_decoded_bytes_are_exactly_the_input(
    tmp_path: Path, decoder: str, blob: bytes, expected: bytes, size: int
) -> None:
    assert decoded(write(tmp_path, blob), decoder, size) == expected


def test_a_build_from_several_frames_and_skippable_ones_holds_every_line(
    tmp_path: Path, decoder: str
) -> None:
    parts = [records(3000, seed=s) for s in range(3)]
    blob = skippable(b"head") + b"".join(compress(b"".join(p)) for p in parts) + skippable(b"tail")
    master = create_sharded_dataset(str(write(tmp_path, blob)), str(tmp_path / "ds"), num_shards=3)
    assert master["total_tasks"] == 9000
    assert Counter(dataset_lines(tmp_path / "ds")) == Counter(line for p in parts for line in p)


def test_a_file_cut_exactly_between_two_frames_is_a_valid_shorter_file(tmp_path: Path, decoder: str) -> None:
    a, b = body(2000), body(2000, seed=1)
    first = compress(a)
    assert decoded(write(tmp_path, (first + compress(b))[: len(first)]), decoder) == a


# -- the same refusals -------------------------------------------------------------------------------


def truncated_cases() -> Iterator[Any]:
    data = body()
    frame = compress(data)
    ends = zstd_block_ends(frame)
    assert len(ends) > 3
    bare = compress(data, checksum=False)
    bare_ends = zstd_block_ends(bare)
    cuts = {
        "in-the-magic": 3,
        "in-the-frame-header": 5,
        "after-the-first-block": ends[0],
        "inside-a-block": ends[1] + 10,
        "before-the-last-block": ends[-2],
        "before-the-checksum": ends[-1],
        "inside-the-checksum": ends[-1] + 2,
        "the-last-byte": len(frame) - 1,
    }
    for where, cut in cuts.items():
        yield pytest.param(frame[:cut], TRUNCATED, id=where)
    yield pytest.param(bare[: bare_ends[-2]], TRUNCATED, id="no-checksum-before-the-last-block")
    yield pytest.param(bare[: bare_ends[-1] - 1], TRUNCATED, id="no-checksum-the-last-byte")
    for n in (1, 3, 4, 6):
        yield pytest.param(frame + frame[:n], TRUNCATED, id=f"{n}-bytes-of-a-second-frame")
    yield pytest.param(frame + compress(data)[: len(frame) // 2], TRUNCATED, id="in-the-second-frame")
    yield pytest.param(frame + skippable(b"payload")[:-2], TRUNCATED, id="in-a-skippable-frame")
    yield pytest.param(frame + skippable(b"payload")[:6], TRUNCATED, id="in-a-skippable-frame-size")
    yield pytest.param(b"", NO_FRAME, id="an-empty-file")
    yield pytest.param(skippable(b"only metadata"), NO_FRAME, id="skippable-frames-only")


@pytest.mark.parametrize(("blob", "problem"), list(truncated_cases()))
def test_a_truncated_file_is_refused_as_truncated(
    tmp_path: Path, decoder: str, blob: bytes, problem: str
) -> None:
    error = refusal(write(tmp_path, blob), decoder)
    assert (error.kind, error.problem, error.truncated) == ("zstd", problem, True)


def reserved_block(frame: bytes) -> bytes:
    start = zstd_block_ends(frame)[0]  # the second block's header
    spoilt = bytearray(frame)
    spoilt[start] |= 0b110
    return bytes(spoilt)


def corrupt_cases() -> Iterator[Any]:
    data = body()
    frame = compress(data)
    ends = zstd_block_ends(frame)
    flipped = bytearray(frame)
    flipped[ends[0] + 3 + 20] ^= 0xFF  # inside the second block's contents: the framing holds
    last = bytearray(frame)
    last[-1] ^= 0xFF  # the checksum
    yield pytest.param(
        frame + b"\x17not compressed data at all\n", "bytes that start no zstd frame", id="garbage"
    )
    yield pytest.param(frame + b"\0" * 4, "bytes that start no zstd frame (0x00000000)", id="zero-padding")
    yield pytest.param(gzip.compress(data), "bytes that start no zstd frame", id="gzip-data")
    yield pytest.param(frame + gzip.compress(data), "bytes that start no zstd frame", id="gzip-after-a-frame")
    yield pytest.param(reserved_block(frame), "a zstd block of the reserved type", id="reserved-block")
    yield pytest.param(bytes(flipped), "corrupt zstd data (", id="a-corrupt-block")
    yield pytest.param(bytes(last), "corrupt zstd data (", id="a-wrong-checksum")
    yield pytest.param(bytes(last) + frame, "corrupt zstd data (", id="a-wrong-checksum-then-a-frame")


@pytest.mark.parametrize(("blob", "problem"), list(corrupt_cases()))
def test_a_corrupt_file_is_refused_as_corrupt(
    tmp_path: Path, decoder: str, blob: bytes, problem: str
) -> None:
    error = refusal(write(tmp_path, blob), decoder)
    assert error.kind == "zstd"
    assert error.problem.startswith(problem)
    assert not error.truncated


def shardclaim(*args: str, decoder: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: decoder}
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.parametrize(("spoil", "problem"), [("cut", "truncated"), ("flip", "corrupt zstd data")])
def test_the_command_line_names_the_file_and_the_problem_and_nothing_of_zstd_s(
    tmp_path: Path, decoder: str, spoil: str, problem: str
) -> None:
    blob = bytearray(compress(BIG, level=1))
    if spoil == "cut":
        del blob[len(blob) // 2 :]
    else:
        blob[-1] ^= 0xFF
    src = write(tmp_path, bytes(blob))
    for flag in ("--no-validate", "--skip-invalid"):
        result = shardclaim(
            "create", "--input_file", str(src), "--output_dir", str(tmp_path / "ds"), flag, decoder=decoder
        )
        assert result.returncode == 1
        assert "in.jsonl.zst" in result.stderr
        assert problem in result.stderr
        assert "Traceback" not in result.stderr
        assert "stdin" not in result.stderr  # zstd's own message names its input so
        assert not (tmp_path / "ds" / "master_metadata.json").exists()


# -- nothing left behind -----------------------------------------------------------------------------


def test_closing_early_leaves_no_process_and_no_descriptor(tmp_path: Path, decoder: str) -> None:
    src = write(tmp_path, compress(BIG, level=1))
    before = descriptors()
    reader = opened(src, decoder)
    assert read_at_least(reader, 1 << 20) == 1 << 20
    pid = reader.pid if decoder != "python" else None
    if pid is not None:
        assert not gone(pid)  # still decoding: there is far more than the pipe or the slots hold
    reader.close()
    assert descriptors() == before
    assert zstd_children() == []
    if pid is not None:
        assert gone(pid)


def test_an_interrupt_while_reading_leaves_no_process(tmp_path: Path, decoder: str) -> None:
    src = write(tmp_path, compress(BIG, level=1))
    before = descriptors()

    def interrupted() -> None:
        with opened(src, decoder) as reader:
            reader.read(1 << 16)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert descriptors() == before
    assert zstd_children() == []


def test_a_build_stopped_by_an_invalid_line_leaves_no_process(tmp_path: Path, decoder: str) -> None:
    lines = records(40_000, size=300)
    lines[10] = b"{not json\n"
    src = write(tmp_path, compress(b"".join(lines), level=1))
    before = descriptors()
    with pytest.raises(InputError, match=r"in\.jsonl\.zst, line 11: not valid JSON"):
        create_sharded_dataset(str(src), str(tmp_path / "ds"), num_shards=2)
    assert zstd_children() == []
    assert descriptors() == before


def test_the_command_line_stopped_early_prints_only_its_own_message(tmp_path: Path, decoder: str) -> None:
    lines = records(40_000, size=300)
    lines[10] = b"{not json\n"
    src = write(tmp_path, compress(b"".join(lines), level=1))
    result = shardclaim(
        "create", "--input_file", str(src), "--output_dir", str(tmp_path / "ds"), decoder=decoder
    )
    assert result.returncode == 1
    assert "line 11: not valid JSON" in result.stderr
    for noise in ("zstd", "Broken pipe", "Traceback"):
        assert noise not in result.stderr.replace("in.jsonl.zst", "")


# -- the process --------------------------------------------------------------------------------------

needs_zstd = pytest.mark.skipif(not HAS_ZSTD, reason="no zstd executable on PATH")


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        pytest.param(
            "process", "the zstd process was killed by SIGKILL before the end of the data", marks=needs_zstd
        ),
        ("child", "the zstd decoding process was killed by SIGKILL before the end of the data"),
    ],
)
def test_a_decoding_process_killed_midway_is_an_error_not_the_end_of_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, problem: str
) -> None:
    monkeypatch.setenv(ENV, kind)
    src = write(tmp_path, compress(BIG, level=1))
    with opened(src, kind) as reader:
        assert read_at_least(reader, 1 << 20) == 1 << 20
        os.kill(reader.pid, signal.SIGKILL)
        with pytest.raises(CompressedStreamError) as caught:
            read_all(reader)
    assert caught.value.problem == problem
    assert not caught.value.truncated
    with opened(src, kind) as reader:  # killed at once
        os.kill(reader.pid, signal.SIGKILL)
        if kind == "child":  # before READY it has read nothing, and this process decodes it all
            got, refused = bytearray(), ""
            try:
                while part := reader.read(1 << 20):
                    got += part
            except CompressedStreamError as e:  # (or it said READY first: then refused, as above)
                refused = e.problem
            assert refused == problem if refused else got == BIG
            return
        with pytest.raises(CompressedStreamError):  # the zstd process: refused just the same
            read_all(reader)
        with pytest.raises(CompressedStreamError):  # and stays refused
            reader.read()


def test_which_decoder_reads_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path, compress(body(100)))

    def reader_type() -> type:
        with LocalInput(str(src)).open() as reader:
            return type(reader)

    monkeypatch.delenv(ENV, raising=False)  # the default: a child from CHILD_FROM on, else in process
    assert src.stat().st_size < zstd.CHILD_FROM
    assert reader_type() is ZstdReader
    monkeypatch.setattr(zstd, "CHILD_FROM", src.stat().st_size)
    assert reader_type() is ZstdChildReader
    monkeypatch.setenv(ENV, "python")
    assert reader_type() is ZstdReader
    monkeypatch.setenv(ENV, "child")
    assert reader_type() is ZstdChildReader
    monkeypatch.setenv(ENV, "process")
    assert reader_type() is (ZstdProcessReader if HAS_ZSTD else ZstdReader)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    for choice in ("auto", "child", "process"):  # one CPU: nothing to gain
        monkeypatch.setenv(ENV, choice)
        assert reader_type() is ZstdReader
    monkeypatch.setenv(ENV, "pigz")
    with pytest.raises(
        ValueError, match="SHARDCLAIM_ZSTD must be one of 'auto', 'child', 'python', 'process'; got 'pigz'"
    ):
        LocalInput(str(src)).open()


@pytest.mark.parametrize("broken", ["no-interpreter", "exits-at-once", "import-fails", "silent", "says-else"])
def test_a_child_that_cannot_start_leaves_the_decoding_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """Until it says READY nothing the child did counts: this process decodes the whole file, from the
    offset where it handed it over (even when something read from it meanwhile)."""
    from shardclaim.dataset import zstd_child

    monkeypatch.setenv(ENV, "child")
    data = BIG
    src = write(tmp_path, compress(data, level=1))
    if broken == "no-interpreter":
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    elif broken == "exits-at-once":
        monkeypatch.setattr(sys, "executable", "/bin/false")
    elif broken == "import-fails":
        monkeypatch.setattr(zstd_child, "_CHILD", "import shardclaim_no_such_module")
    elif broken == "silent":  # says nothing (a hung interpreter): given up on after _READY_WITHIN
        monkeypatch.setattr(zstd_child, "_READY_WITHIN", 0.2)
        monkeypatch.setattr(zstd_child, "_CHILD", "import os, time; os.read(0, 1000); time.sleep(600)")
    else:  # reads some of the file, then says something other than READY
        monkeypatch.setattr(
            zstd_child, "_CHILD", "import os, sys; os.read(0, 100_000); os.write(int(sys.argv[4]), b'x' * 8)"
        )
    with LocalInput(str(src)).open() as reader:
        got = bytearray()
        while part := reader.read(1 << 20):
            got += part
    assert got == data
    assert zstd_children() == []


def test_the_child_dies_with_the_builder(tmp_path: Path) -> None:
    """A builder killed with SIGKILL leaves no child decoding behind (its socket closes; and
    PR_SET_PDEATHSIG, should it be busy decoding)."""
    src = write(tmp_path, compress(BIG, level=1))
    script = (
        "import sys, time\n"
        "from shardclaim.dataset.zstd_child import ZstdChildReader\n"
        "r = ZstdChildReader(open(sys.argv[1], 'rb', buffering=0))\n"
        "r.read(1 << 16)\n"
        "print(r.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    builder = subprocess.Popen([sys.executable, "-c", script, str(src)], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout is not None
        child = int(builder.stdout.readline())
        assert not gone(child)
        builder.kill()
        builder.wait()
        deadline = time.monotonic() + 60
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.01)  # the kernel's doing, and the init process's reaping: no clock to inject
        assert gone(child) or _zombie(child)
    finally:
        builder.kill()
        builder.wait()
        if builder.stdout is not None:
            builder.stdout.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].startswith("Z")
    except OSError:
        return True


@needs_zstd
def test_without_a_working_zstd_executable_python_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = body(100)
    src = write(tmp_path, compress(data))
    monkeypatch.delenv(ENV, raising=False)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert decoded(src, "python") == data
    broken = empty / "zstd"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    assert decoded(src, "python") == data


@pytest.mark.parametrize("kind", [pytest.param("process", marks=needs_zstd), "child"])
def test_a_pipe_or_a_url_is_decoded_by_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from shardclaim.dataset.decompress import open_decompressed

    monkeypatch.setenv(ENV, kind)
    data = body(100)
    src = write(tmp_path, compress(data))
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as w:
        w.write(src.read_bytes())
    with open_decompressed(open(read_end, "rb", buffering=0), "zstd") as reader:
        assert type(reader) is ZstdReader
        assert reader.read(1 << 20) == data
    master = create_sharded_dataset(f"file://{src}", str(tmp_path / "ds"), num_shards=2)
    assert master["total_tasks"] == 100
