"""Hostile tests of the python-zstandard child (:mod:`shardclaim.dataset.zstd_child`): real child
processes, real files, real signals. Each promise is checked against the in-process decoder
(:class:`~shardclaim.dataset.zstd.ZstdReader`). The last four found bugs, since fixed: the child took
modules from the working directory, spoke on its standard output, fell back from a moved file offset,
and was killed with the thread that started it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from shardclaim.dataset.localfs import usable_cpus
from shardclaim.dataset.zstd import ENV, ZstdReader
from shardclaim.dataset.zstd_child import ZstdChildReader
from shardclaim.errors import CompressedStreamError
from tests.test_zstd_cli import descriptors, gone, read_all, skippable, write, zstd_children

SLOT = 8 << 20  # the child's slot: the sizes around it (and around three of them) are the edges
TRUNCATED = "the zstd data ends before its end-of-stream marker: the file is truncated"
KILLED = "the zstd decoding process was killed by {} before the end of the data"
REPO = Path(__file__).resolve().parent.parent


def jsonl(size: int, seed: int = 0) -> bytes:
    """Exactly ``size`` bytes of whole JSON lines that compress about 2:1 (so that a file has many
    blocks); the last one padded to fit."""
    rnd = random.Random(seed)
    out, n, i = [], 0, 0
    while size - n >= 250:
        line = b'{"id":%d,"h":"%s"}\n' % (i, rnd.randbytes(40).hex().encode())
        out.append(line)
        n, i = n + len(line), i + 1
    left = size - n
    out.append(b'{"p":"%s"}\n' % (b"x" * (left - 9)) if left >= 9 else b"\n" * left)
    data = b"".join(out)
    assert len(data) == size
    return data


def frame(data: bytes, *, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=checksum).compress(data)


def decode(path: Path, kind: type, size: int = 1 << 20) -> tuple[bytes, CompressedStreamError | None, bool]:
    """What a reader gives: the bytes, the error that ended them (if any), and whether a child (not
    the fallback in this process) decoded."""
    out = bytearray()
    buffer = bytearray(size)
    error = None
    child = False
    with kind(open(path, "rb", buffering=0)) as reader:
        try:
            while n := reader.readinto(buffer):
                out += buffer[:n]
        except CompressedStreamError as e:
            error = e
        child = kind is ZstdChildReader and getattr(reader, "_fallback", None) is None
    return bytes(out), error, child


def memfds() -> int:
    """The child's shared memory still mapped or open in this process."""
    maps = Path("/proc/self/maps").read_text().count("shardclaim-zstd")
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += "shardclaim-zstd" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return maps + fds


def run_python(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    """Run ``code`` in a fresh interpreter (SIGPIPE at its default: death) and return the JSON it prints
    last."""
    prelude = "import signal; signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- 1. exactly the input's bytes ----------------------------------------------------------------------


def exact_cases() -> Iterator[Any]:
    for total in (SLOT - 1, SLOT, SLOT + 1, 3 * SLOT, 3 * SLOT + 1):
        yield pytest.param(lambda t=total: [jsonl(t)], id=f"{total}-bytes")
    yield pytest.param(lambda: [b"", b"", b""], id="empty-frames-only")
    # frames whose ends fall exactly on slot ends, with empty and skippable frames between
    yield pytest.param(
        lambda: [jsonl(SLOT, 1), b"", jsonl(SLOT, 2), b"", jsonl(7, 3)], id="frames-on-slot-ends"
    )
    yield pytest.param(lambda: [jsonl(SLOT // 3, s) for s in range(8)], id="eight-frames-across-slots")


@pytest.mark.parametrize("parts", list(exact_cases()))
def test_the_child_gives_exactly_the_in_process_bytes_at_every_read_size(tmp_path: Path, parts: Any) -> None:
    pieces = parts()
    blob = skippable(b"head") + b"".join(frame(p) + skippable(b"x" * 9) for p in pieces)
    src = write(tmp_path, blob)
    expected = b"".join(pieces)
    for size in (SLOT, 4093, SLOT + 7, 3 * SLOT + 5):
        got, error, child = decode(src, ZstdChildReader, size)
        assert error is None
        assert child
        assert len(got) == len(expected)
        assert got == expected, size
    assert decode(src, ZstdReader)[0] == expected
    assert zstd_children() == []


# -- 2. the same refusals ------------------------------------------------------------------------------


def late_refusals() -> Iterator[Any]:
    data = jsonl(5 * SLOT + 12345)
    whole = frame(data)
    yield pytest.param(whole[: len(whole) * 3 // 4], id="cut-after-four-slots")
    yield pytest.param(whole[:-1], id="cut-at-the-last-byte")
    yield pytest.param(whole[:-1] + bytes([whole[-1] ^ 0xFF]), id="a-wrong-checksum")
    flipped = bytearray(whole)
    flipped[len(whole) - 5000] ^= 0xFF
    yield pytest.param(bytes(flipped), id="a-flipped-byte-late")
    yield pytest.param(whole + b"garbage!", id="garbage-after")
    yield pytest.param(whole + whole[:1000], id="a-second-frame-cut")
    big_skip = (0x184D2A50).to_bytes(4, "little") + (100 << 20).to_bytes(4, "little") + b"x"
    yield pytest.param(whole + big_skip, id="a-skippable-frame-longer-than-the-file")
    yield pytest.param(frame(data, checksum=False)[:-3], id="no-checksum-cut")


@pytest.mark.parametrize("blob", list(late_refusals()))
def test_a_refusal_after_several_slots_is_the_in_process_one(tmp_path: Path, blob: bytes) -> None:
    src = write(tmp_path, blob)
    _, here, _ = decode(src, ZstdReader, SLOT)
    got, there, child = decode(src, ZstdChildReader, SLOT)
    assert child
    assert here is not None
    assert there is not None
    assert (there.kind, there.problem, there.truncated) == (here.kind, here.problem, here.truncated)
    assert len(got) % SLOT == 0  # never a part of a slot handed out before the error
    assert zstd_children() == []


# -- 3 and 5. a child that dies, stalls or never starts; never SIGPIPE ---------------------------------

_SIGNALS = """
import json, os, random, signal, sys, threading, time
from shardclaim.dataset.zstd_child import ZstdChildReader
from shardclaim.errors import CompressedStreamError
src, data = sys.argv[1], open(sys.argv[2], "rb").read()
results = []
def one(sig, after, delay=None):
    reader = ZstdChildReader(open(src, "rb", buffering=0))
    timer = None
    if delay is not None:
        def hit():
            try:
                os.kill(reader.pid, sig)
            except ProcessLookupError:
                pass
        timer = threading.Timer(delay, hit)
        timer.start()
    out, buffer, k = bytearray(), bytearray(1 << 20), 0
    try:
        while True:
            if k == after:
                os.kill(reader.pid, sig)
                if sig == signal.SIGSTOP:
                    time.sleep(0.05)
                    os.kill(reader.pid, signal.SIGCONT)
            n = reader.readinto(buffer)
            if not n:
                break
            out += buffer[:n]
            k += 1
        said = "exact" if out == data else "short %d of %d" % (len(out), len(data))
    except CompressedStreamError as e:
        said = e.problem
    if timer is not None:
        timer.join()
    reader.close()
    results.append([signal.Signals(sig).name, after, said])
for sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM, signal.SIGSTOP, signal.SIGINT):
    for after in (0, 1, 9, 30, 1000):
        one(sig, after)
rnd = random.Random(7)
for _ in range(12):
    one(signal.SIGKILL, -1, rnd.random() * 0.4)
print(json.dumps(results))
"""


def test_a_child_killed_stopped_or_crashed_anywhere_gives_the_data_or_an_error_never_sigpipe(
    tmp_path: Path,
) -> None:
    data = jsonl(5 * SLOT + 999)
    src = write(tmp_path, frame(data))
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(data)
    results = run_python(_SIGNALS, str(src), str(plain))  # (its exit status checked: not SIGPIPE)
    assert len(results) == 5 * 5 + 12
    for name, after, said in results:
        if name == "SIGSTOP" or after == 1000:  # stopped then continued, or "killed" after the end
            assert said == "exact", (name, after, said)
        else:  # (killed at once: before READY this process decodes it all, else it is refused)
            assert said in ("exact", KILLED.format(name)), (name, after, said)


@pytest.mark.parametrize("how", ["exit-0", "exit-3"])
def test_a_child_that_exits_midway_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A child that says READY, hands out a slot and then exits (cleanly or not) is never the end."""
    from shardclaim.dataset import zstd_child

    code = how.split("-")[1]
    monkeypatch.setattr(
        zstd_child,
        "_CHILD",
        "import os, struct, sys; "  # its words go on the descriptor named last
        f"os.write(int(sys.argv[4]), struct.pack('<q', -1) + struct.pack('<q', 4096)); os._exit({code})",
    )
    src = write(tmp_path, frame(jsonl(2 * SLOT)))
    got, error, _ = decode(src, ZstdChildReader)
    assert error is not None
    assert not error.truncated
    assert len(got) == 4096
    if code == "0":
        assert error.problem == "the zstd decoding process ended early"
    else:
        assert error.problem.startswith("the zstd decoding process failed (exit status 3)")


# -- 4. nothing left behind ----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [0, 1, 8, 9, 17, 100])
def test_closing_or_raising_at_any_point_leaves_no_process_descriptor_or_memory(
    tmp_path: Path, stop_after: int
) -> None:
    src = write(tmp_path, frame(jsonl(3 * SLOT + 1)))
    before = descriptors()
    pids = []

    def interrupted() -> None:
        with ZstdChildReader(open(src, "rb", buffering=0)) as reader:
            pids.append(reader.pid)
            for _ in range(stop_after):
                if not reader.read(1 << 20):
                    break
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert gone(pids[0])
    assert descriptors() == before
    assert memfds() == 0
    assert zstd_children() == []


def test_an_interrupt_while_blocked_on_a_stopped_child_leaves_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, frame(jsonl(5 * SLOT)))
    before = descriptors()
    reader = ZstdChildReader(open(src, "rb", buffering=0))  # noqa: SIM115 - closed below
    reader.read(1 << 20)
    os.kill(reader.pid, signal.SIGSTOP)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        read_all(reader)
    timer.join()
    with pytest.raises(KeyboardInterrupt):  # the interrupted reader stays interrupted, never "ends"
        reader.read(1 << 20)
    pid = reader.pid
    reader.close()
    assert gone(pid)
    assert descriptors() == before
    assert memfds() == 0


@pytest.mark.parametrize("when", ["before-ready", "stopped-after-ready"])
def test_a_builder_killed_at_any_moment_leaves_no_child(tmp_path: Path, when: str) -> None:
    """Killed while its child is still importing (before PR_SET_PDEATHSIG: it must see it is orphaned),
    or while its child is stopped (SIGKILL reaches a stopped process)."""
    src = write(tmp_path, frame(jsonl(5 * SLOT)))
    before_ready = when == "before-ready"
    script = (
        "import os, signal, sys, time\n"
        "from shardclaim.dataset.zstd_child import ZstdChildReader\n"
        "r = ZstdChildReader(open(sys.argv[1], 'rb', buffering=0))\n"
        + ("" if before_ready else "r.read(1 << 16)\nos.kill(r.pid, signal.SIGSTOP)\n")
        + "print(r.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", script, str(src)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert builder.stdout is not None
        child = int(builder.stdout.readline())
        builder.kill()
        builder.wait()
        deadline = time.monotonic() + 60
        while not _dead(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _dead(child)
    finally:
        builder.kill()
        builder.wait()
        if builder.stdout is not None:
            builder.stdout.close()


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].startswith(("Z", "X"))
    except OSError:
        return True


_LOW_LIMIT = """
import json, os, resource, sys
os.environ["SHARDCLAIM_ZSTD"] = "child"
from shardclaim.dataset.localfs import LocalInput
from shardclaim.errors import CompressedStreamError
import orjson, zstandard, mmap, socket, subprocess, tempfile
data = open(sys.argv[2], "rb").read()
before = sorted(os.listdir("/proc/self/fd"))
results = []
for limit in range(6, 20):
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, 4096))
    out = bytearray()
    try:
        with LocalInput(sys.argv[1]).open() as reader:
            while part := reader.read(1 << 22):
                out += part
        said = "exact" if out == data else "short"
    except (CompressedStreamError, OSError) as e:
        said = repr(e)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    left = sorted(os.listdir("/proc/self/fd")) != before
    memory = open("/proc/self/maps").read().count("shardclaim-zstd")
    results.append([limit, type(reader).__name__, said, left, memory])
print(json.dumps(results))
"""


def test_a_very_low_descriptor_limit_decodes_here_or_there_exactly_and_leaks_nothing(tmp_path: Path) -> None:
    data = jsonl(2 * SLOT + 5)
    src = write(tmp_path, frame(data))
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(data)
    results = run_python(_LOW_LIMIT, str(src), str(plain))
    kinds = set()
    for limit, kind, said, left, memory in results:
        assert (said, left, memory) == ("exact", False, 0), (limit, kind, said)
        kinds.add(kind)
    if usable_cpus() >= 2:  # (on one CPU no child is started)
        assert kinds == {"ZstdReader", "ZstdChildReader"}  # both sides of the limit were reached


# -- 6. the input changed while it is read -------------------------------------------------------------


@pytest.mark.parametrize("change", ["append-a-frame", "truncate-to-half", "append-garbage", "rewrite"])
def test_a_file_changed_after_the_child_read_it_gives_the_child_s_snapshot_not_what_python_gives(
    tmp_path: Path, change: str
) -> None:
    """A known difference, not a bug: the child reads ahead (the whole file here, which fits in its
    slots), so a change made after that is never seen, where the in-process decoder, reading as it goes,
    sees it (and includes an appended frame, or refuses the file). The child's output is always the
    whole file as it was: never a mix, never short."""
    data = jsonl(SLOT + SLOT // 2)
    blob = frame(data)
    extra = frame(b'{"late":1}\n' * 100)
    outcomes = {}
    for kind in (ZstdReader, ZstdChildReader):
        src = write(tmp_path, blob, f"{kind.__name__}.jsonl.zst")
        out = bytearray()
        try:
            with kind(open(src, "rb", buffering=0)) as reader:
                out += reader.read(1 << 20)
                if kind is ZstdChildReader:  # it has decoded everything and exited
                    deadline = time.monotonic() + 60
                    while not _dead(reader.pid) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert _dead(reader.pid)
                if change == "append-a-frame":
                    with open(src, "ab") as f:
                        f.write(extra)
                elif change == "truncate-to-half":
                    os.truncate(src, len(blob) // 2)
                elif change == "append-garbage":
                    with open(src, "ab") as f:
                        f.write(b"garbage!")
                else:
                    with open(src, "r+b") as f:
                        f.write(frame(data[::-1]))
                while part := reader.read(1 << 20):
                    out += part
            outcomes[kind] = (
                "original"
                if out == data
                else ("appended" if out == data + b'{"late":1}\n' * 100 else "other")
            )
        except CompressedStreamError as e:
            outcomes[kind] = e.problem
    assert outcomes[ZstdChildReader] == "original"
    assert outcomes[ZstdReader] != "original"  # the difference
    assert outcomes[ZstdReader] in ("appended", TRUNCATED) or outcomes[ZstdReader].startswith(
        ("bytes that start no zstd frame", "corrupt zstd data")
    )


# -- 7. odd environments -------------------------------------------------------------------------------


def test_many_children_in_parallel_threads_each_give_the_exact_bytes(tmp_path: Path) -> None:
    data = jsonl(3 * SLOT + 77)
    src = write(tmp_path, frame(data))
    before = descriptors()
    results: dict[int, tuple[bool, bool]] = {}

    def one(i: int) -> None:
        got, error, child = decode(src, ZstdChildReader, (1 << 20) + i)
        results[i] = (error is None and got == data, child)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == dict.fromkeys(range(4), (True, True))
    assert descriptors() == before
    assert zstd_children() == []


def test_a_package_found_on_an_odd_path_is_the_one_the_child_runs(tmp_path: Path) -> None:
    """The package reached through a directory whose name has spaces, quotes and non-ASCII letters (a
    symbolic link to this checkout): the child finds it there and decodes."""
    odd = tmp_path / "odd dir 'é' \"x\""
    odd.mkdir()
    (odd / "shardclaim").symlink_to(REPO / "shardclaim")
    data = jsonl(SLOT + 3)
    src = write(tmp_path, frame(data))
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from shardclaim.dataset import zstd_child\n"
        "assert zstd_child.__file__.startswith(sys.argv[2]), zstd_child.__file__\n"
        "r = zstd_child.ZstdChildReader(open(sys.argv[1], 'rb', buffering=0))\n"
        "out = bytearray()\n"
        "while part := r.read(1 << 20):\n"
        "    out += part\n"
        "print(json.dumps([len(out), r._fallback is None, __import__('hashlib').sha256(out).hexdigest()]))\n"
        "r.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(src), str(odd)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import hashlib

    assert json.loads(result.stdout) == [len(data), True, hashlib.sha256(data).hexdigest()]


def dataset_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("chunk_*"))}


@pytest.mark.parametrize("flags", [["--no-validate"], []], ids=["no-validate", "validated"])
def test_the_command_line_builds_the_same_dataset_with_the_child_as_in_process(
    tmp_path: Path, flags: list[str]
) -> None:
    """Validated, the validators decode in process (SHARDCLAIM_ZSTD=python in them) beside the child."""
    src = write(tmp_path, frame(jsonl(3 * SLOT + 11)), "big.jsonl.zst")
    built = {}
    for decoder in ("child", "python"):
        out = tmp_path / f"ds-{decoder}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "shardclaim",
                "create",
                "--input_file",
                str(src),
                "--output_dir",
                str(out),
                "--num_shards",
                "4",
                *flags,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, ENV: decoder},
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        built[decoder] = dataset_bytes(out)
    assert built["child"] == built["python"]
    assert len(built["child"]) >= 4


# -- the bugs found here, since fixed -------------------------------------------------------------------


def test_a_script_named_like_a_stdlib_module_in_the_working_directory_is_not_run(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("shardclaim")
    if not script.exists():
        pytest.skip("no shardclaim console script beside this interpreter")
    data = jsonl(2 * SLOT)
    src = write(tmp_path, frame(data), "big.jsonl.zst")
    here = tmp_path / "work"
    here.mkdir()
    (here / "random.py").write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_name('RAN').write_text('ran')\n"
        "print('42 random numbers')\n"
    )
    result = subprocess.run(
        [
            str(script),
            "create",
            "--input_file",
            str(src),
            "--output_dir",
            str(tmp_path / "ds"),
            "--no-validate",
        ],
        capture_output=True,
        text=True,
        cwd=here,
        env={**os.environ, ENV: "child"},
        check=False,
    )
    assert not (here / "RAN").exists()
    assert result.returncode == 0, result.stderr


def test_something_printed_at_the_child_s_start_up_does_not_break_the_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('welcome to the cluster')\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    data = jsonl(SLOT + 1)
    src = write(tmp_path, frame(data))
    got, error, _ = decode(src, ZstdChildReader)
    assert error is None
    assert got == data


def test_the_fallback_decodes_from_where_the_input_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = jsonl(SLOT // 2, 1), jsonl(SLOT // 2, 2)
    a = frame(first)
    src = write(tmp_path, a + frame(second))
    eats = tmp_path / "not-python"
    eats.write_text(f"#!/bin/sh\ndd bs={len(a)} count=1 of=/dev/null 2>/dev/null\nexit 1\n")
    eats.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(eats))
    got, error, child = decode(src, ZstdChildReader)
    assert not child  # it did not start: decoded here
    assert error is not None or got == first + second  # got == second: frames lost, no error


def test_a_reader_opened_in_a_thread_that_ends_still_decodes(tmp_path: Path) -> None:
    data = jsonl(4 * SLOT)
    src = write(tmp_path, frame(data))
    box: list[Any] = []

    def opener() -> None:
        reader = ZstdChildReader(open(src, "rb", buffering=0))  # noqa: SIM115 - closed below
        box.append(reader.read(1 << 20))  # past READY: the child has set its parent-death signal
        box.append(reader)

    thread = threading.Thread(target=opener)
    thread.start()
    thread.join()
    head, reader = box
    out = bytearray(head)
    refused = ""
    try:
        while part := reader.read(1 << 20):
            out += part
    except CompressedStreamError as e:
        refused = e.problem
    finally:
        reader.close()
    assert refused == ""
    assert out == data
