"""Hostile tests of background validators that map their input (``validate._walk_mapped``, c759fd0).

The promises tried here, with real files, real builder processes and real validator processes:

- the mapped walk gives every range exactly the read path's result (``validate._MAP = False``): first bad
  line (offset, line number, reason) and big-integer count, for any file and any cut into ranges - files
  whose size is a page multiple, ranges ending on a page boundary, no final newline, a BOM, empty files,
  one line longer than a step, sparse files, offsets past 4 GiB, files on tmpfs;
- where the file cannot be mapped (an address-space limit, as ``ulimit -v``) the read path is taken,
  with the same result;
- an input truncated, appended to, rewritten in place, replaced by rename, hole-punched or collapsed
  while a validator walks it (the change made from inside the validator's walk, so nothing depends on
  timing) never yields a published dataset: the build reports the input changed, with no traceback and
  no core dump, whether the validator stopped at its size check or died of SIGBUS;
- a validator killed by a signal fails the build with a clear error; SIGINT (which validators ignore)
  and SIGPIPE (which Python ignores) leave the build to succeed with the input's records;
- a validator that dies while ``BackgroundValidator.start`` is still handing out the shares fails the
  build the same way (it crashed the builder with a BrokenProcessPool traceback before the fix).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardclaim.dataset import records, validate
from shardclaim.dataset.localfs import usable_cpus
from shardclaim.dataset.records import BOM

pytestmark = pytest.mark.skipif(
    records.c_walk() is None or not sys.platform.startswith("linux"),
    reason="the C walk is not built, or not Linux (forked validators)",
)

P = mmap.PAGESIZE
builds = pytest.mark.skipif(usable_cpus() < 2, reason="one CPU: the builder starts no background validator")


# --- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["disk", "tmpfs"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on the test's filesystem, or on tmpfs (/dev/shm)."""
    if request.param == "disk":
        yield tmp_path
        return
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    d = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="shardclaim-mapped-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class _Ways:
    """``_walk_range`` mapped and read, counting which way each call really went."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mapped = 0
        self.read = 0
        self._monkeypatch = monkeypatch
        walk_mapped, read_range = validate._walk_mapped, validate._read_range

        def counting_mapped(*args: Any) -> Any:
            self.mapped += 1
            return walk_mapped(*args)

        def counting_read(*args: Any) -> Any:
            self.read += 1
            return read_range(*args)

        monkeypatch.setattr(validate, "_walk_mapped", counting_mapped)
        monkeypatch.setattr(validate, "_read_range", counting_read)

    def both(self, path: Path, a: int, b: int) -> tuple[validate.Share, validate.Share]:
        walk = records.c_walk()
        self._monkeypatch.setattr(validate, "_MAP", True)
        mapped = validate._walk_range(walk, str(path), "f", a, b)
        self._monkeypatch.setattr(validate, "_MAP", False)
        read = validate._walk_range(walk, str(path), "f", a, b)
        self._monkeypatch.setattr(validate, "_MAP", True)
        return mapped, read


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONFAULTHANDLER", "SHARDCLAIM_SCAN")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _records(n: int, seed: int = 0) -> bytes:
    rnd = random.Random(seed)
    return b"".join(b'{"id":%d,"t":"%s"}\n' % (i, b"x" * rnd.randint(0, 120)) for i in range(n))


# --- 1. the mapped walk and the read path agree ---------------------------------------------------------

_LINES = [
    b'{"a":1}',
    b"[1,2,3]",
    '{"s":"é中😀"}'.encode(),
    b"",
    b" ",
    b"\t\r",
    b"12345678901234567890",
    b"[18446744073709551616]",
    b"[-9223372036854775809]",
    b"tru",
    b'{"a":',
    BOM + b"{}",
    b"{}x",
    b'"\xed\xa0\x80"',
    b"[" * 1001 + b"]" * 1001,
    b"\x00\x00",
    b"[1e400]",
    b'"\\ud800"',
]


def _fuzz_file(rnd: random.Random) -> bytes:
    parts: list[bytes] = []
    for _ in range(rnd.randint(0, 24)):
        r = rnd.random()
        if r < 0.55:
            parts.append(rnd.choice(_LINES))
        elif r < 0.9:  # short lines, and lines of more than a page (longer than small steps)
            parts.append(b'{"v":"' + b"y" * rnd.randint(0, rnd.choice([60, 3 * P])) + b'"}')
        else:
            parts.append(b"[" + b"9" * rnd.randint(15, 25) + b"]")
    data = b"".join(p + rnd.choice([b"\n", b"\n", b"\r\n"]) for p in parts)
    if data and rnd.random() < 0.3:
        data = data[:-1]  # no final newline
    if rnd.random() < 0.15:
        data = BOM + data
    if data and rnd.random() < 0.45:  # a page multiple: cut down, or padded (a blank line, or the last line)
        target = max(P, len(data) // P * P)
        if len(data) >= target:
            data = data[:target]
        elif rnd.random() < 0.5:
            data += b" " * (target - len(data) - 1) + b"\n"
        else:
            data += b"z" * (target - len(data))
    return data


@pytest.mark.parametrize("seed", range(2))
def test_the_mapped_walk_gives_the_read_path_s_result_for_any_file_and_any_cut(
    seed: int, where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ways = _Ways(monkeypatch)
    rnd = random.Random(seed)
    path = where / "f.jsonl"
    for _ in range(120):
        data = _fuzz_file(rnd)
        path.write_bytes(data)
        monkeypatch.setattr(validate, "_READ", rnd.choice([1, 3, 16, P - 1, P, P + 1, 1 << 20]))
        size = len(data)
        near = [0, 1, 3, 4, P - 1, P, P + 1, 2 * P, size - 1, size]
        cuts = sorted({c for c in near + [rnd.randint(0, size) for _ in range(3)] if 0 <= c <= size})
        cuts = sorted({0, size, *rnd.sample(cuts, min(len(cuts), 4))})
        for a, b in [*itertools.pairwise(cuts), (0, size + 7)]:
            mapped, read = ways.both(path, a, b)
            assert mapped == read, (validate._READ, a, b, size, data[:120])
    assert ways.mapped > 100  # each way was really taken
    assert ways.read > 100


_TAILS = [
    b'{"a":"\xc3\xa9\xf0\x9f\x98\x80","b":[1.5e300,-0.0,true,null]}',
    b'{"k":"\\u00e9\\ud83d\\ude00"}',
    b"123456789012345678901234",
    b"[18446744073709551616]",
]


def test_files_of_whole_pages_and_ranges_ending_on_a_page_boundary(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's last byte is the mapping's last: every prefix of a record as the last line (cut inside
    a string, a UTF-8 sequence, an escape, a number, a literal), with and without its newline."""
    ways = _Ways(monkeypatch)
    path = where / "pages.jsonl"
    tails = [*sorted({t[:k] for t in _TAILS for k in range(1, len(t) + 1)}), b" " * 9, b"\r", b"-", b"1e"]
    for tail in tails:
        for end in (b"", b"\n", b"\r\n"):
            body = tail + end
            filler = b'"' + b"p" * (2 * P - len(body) - 3) + b'"\n'  # the first line spans the first page
            data = filler + body
            assert len(data) == 2 * P
            path.write_bytes(data)
            for step in (7, P, 1 << 20):
                monkeypatch.setattr(validate, "_READ", step)
                for a, b in ((0, P), (P, 2 * P), (0, 2 * P), (len(filler), 2 * P), (2 * P - 1, 2 * P)):
                    mapped, read = ways.both(path, a, b)
                    assert mapped == read, (tail, end, step, a, b)
    assert ways.mapped > 0


def test_odd_files_the_same_both_ways(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ways = _Ways(monkeypatch)
    monkeypatch.setattr(validate, "_READ", 64)
    cases: dict[str, bytes] = {
        "empty": b"",
        "bom only": BOM,
        "bom then a blank line": BOM + b"\n",
        "two boms": BOM + BOM + b"{}\n",
        "one huge line": b'["' + b"y" * (5 * P + 3) + b'"]',
        "one huge bad line": b'["' + b"y" * (5 * P + 3) + b'"x]\n[1]\n',
        "blank lines only": b" \n\t\r\n\n" * 2000,
    }
    for name, data in cases.items():
        path = where / "odd.jsonl"
        path.write_bytes(data)
        size = len(data)
        for a, b in {(0, size), (0, 1), (0, 3), (0, 4), (1, size), (3, size), (P, size), (0, P)}:
            if 0 <= a <= b and (a < size or a == 0):
                mapped, read = ways.both(path, a, b)
                assert mapped == read, (name, a, b)
    # a sparse file: a hole (zeros) between lines, on a page boundary and across several pages
    path = where / "sparse.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"a":1}\n[99999999999999999999]\n')
        f.truncate(9 * P)
        f.seek(9 * P)
        f.write(b'\n{"b":2}\n')
    size = path.stat().st_size
    for a, b in ((0, size), (0, P), (P, 2 * P), (P, size), (8 * P, size), (9 * P, size), (9 * P + 1, size)):
        mapped, read = ways.both(path, a, b)
        assert mapped == read, ("sparse", a, b)
    whole = ways.both(path, 0, size)[0]
    assert whole[0] is not None
    assert whole[0][0] == 31
    assert whole[0][1][1] == 3  # the hole is line 3
    assert ways.mapped > 0


_LIMITED = """
import os, resource, sys
from shardclaim.dataset import background, records, validate
path, extra = sys.argv[1], int(sys.argv[2])
validate._READ = 4096
taken = []
for name in ("_walk_mapped", "_read_range"):
    def counted(*args, _f=getattr(validate, name), _n=name):
        taken.append(_n)
        return _f(*args)
    setattr(validate, name, counted)
if extra >= 0:  # what this process has mapped now, and a little more: too little to map the input
    with open("/proc/self/status") as f:
        vm = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
size = os.path.getsize(path)
walk = records.c_walk()
print(repr([validate._walk_range(walk, path, "f", a, b) for a, b in ((0, size), (9, size), (0, 4))]))
print(sorted(set(taken)))
"""


def test_a_file_that_cannot_be_mapped_under_an_address_space_limit_is_read(tmp_path: Path) -> None:
    """``ulimit -v``: mapping the 1 GiB (sparse) input fails, the read path is taken, same results."""
    path = tmp_path / "sparse.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"a":1}\n[99999999999999999999]\nnot json\n')
        f.truncate(1 << 30)
        f.seek((1 << 30) - 1)
        f.write(b"\n")
    free = _run(_LIMITED, str(path), "-1", cwd=tmp_path)
    limited = _run(_LIMITED, str(path), str(64 << 20), cwd=tmp_path)
    assert free.returncode == 0, free.stderr[-2000:]
    assert limited.returncode == 0, limited.stderr[-2000:]
    free_result, free_ways = free.stdout.splitlines()
    limited_result, limited_ways = limited.stdout.splitlines()
    assert free_ways == "['_walk_mapped']"
    assert limited_ways == "['_read_range']"
    assert limited_result == free_result
    assert "(31, ('f', 3," in free_result


def test_offsets_past_4_gib_in_a_sparse_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines on both sides of the 4 GiB mark (a hole before them): ranges cut around it, both ways."""
    ways = _Ways(monkeypatch)
    g4 = 1 << 32
    path = tmp_path / "s4g.jsonl"
    tail = b"".join(b"[%d]\n" % (10**20 + i) for i in range(50)) + b'{"a":"' + b"q" * 9000 + b'"}\n[1]'
    with open(path, "wb") as f:
        f.write(b"[0]\n")
        f.seek(g4 - 200)
        f.write(b"\n" + tail)  # the hole is one line of zeros: every range below starts after it
    size = path.stat().st_size
    for step in (64, 1 << 20):
        monkeypatch.setattr(validate, "_READ", step)
        for a, b in ((g4 - 199, size), (g4 - 100, g4 + 100), (g4, size), (g4 + 500, size), (g4 - 199, g4)):
            mapped, read = ways.both(path, a, b)
            assert mapped == read, (step, a - g4, b - g4)
        assert ways.both(path, g4 - 199, size)[0] == (None, 50)
    assert ways.mapped > 0


# --- 2. an input changed while a validator walks it: the build ----------------------------------------

_CHANGED = """
import ctypes, mmap, os, resource, sys
from shardclaim.dataset import background, records, validate
from shardclaim.dataset.build import create_sharded_dataset
from shardclaim.errors import InputError
src, out, how, marker = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
background.BACKGROUND_FROM = 0  # background validators, even for this input
validate._READ = 4096  # many steps
hard = resource.getrlimit(resource.RLIMIT_CORE)[1]  # core dumps allowed: a validator must turn them off
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
libc = ctypes.CDLL(None, use_errno=True)
walk = records.c_walk()
calls = 0

def fallocate(mode, offset, length):
    fd = os.open(src, os.O_WRONLY)
    try:
        if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            e = ctypes.get_errno()
            os.write(2, b"fallocate: %d\\n" % e)
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)

def change(at):  # at: where this validator's walk is now; it goes on from there
    size = os.path.getsize(src)
    if how == "truncate-fatal":  # the pages this very call reads are cut off: SIGBUS
        os.truncate(src, 100)
    elif how == "truncate-ahead":  # past this step, not below it: the next size check stops the walk
        os.truncate(src, size - size // 4)
    elif how == "truncate-restore":  # `cat same > in` (the same bytes, the same size, pages dropped)
        data = open(src, "rb").read()
        with open(src, "wb") as f:
            f.write(data)
    elif how == "append":
        with open(src, "ab") as f:
            f.write(b'{"appended":1}\\n')
    elif how == "pwrite-bad":  # ahead of the walk, a byte that makes a line invalid
        fd = os.open(src, os.O_WRONLY)
        os.pwrite(fd, b"#", size - 3 * 4096)
        os.close(fd)
    elif how == "pwrite-valid":  # ahead of the walk, a record changed into another valid one
        data = open(src, "rb").read()
        i = data.index(b'{"id":', size // 2) + 6
        fd = os.open(src, os.O_WRONLY)
        os.pwrite(fd, b"7" if data[i:i + 1] != b"7" else b"8", i)
        os.close(fd)
    elif how == "last-newline":  # the file's (and the mapping's) last byte, a newline, overwritten
        fd = os.open(src, os.O_WRONLY)
        os.pwrite(fd, b" ", size - 1)
        os.close(fd)
    elif how == "rename":  # replaced: the same size, one record changed
        data = bytearray(open(src, "rb").read())
        i = data.index(b'{"id":', size // 2) + 6
        data[i:i + 1] = b"7" if data[i:i + 1] != b"7" else b"8"
        with open(src + ".new", "wb") as f:
            f.write(data)
        os.rename(src + ".new", src)
    elif how == "punch":  # a hole (zeros) ahead of the walk; the size stays
        fallocate(0x01 | 0x02, (at // 4096 + 4) * 4096, 2 * 4096)  # FALLOC_FL_KEEP_SIZE | PUNCH_HOLE
    elif how == "collapse":  # a page taken out ahead of the walk: the file shrinks
        fallocate(0x08, (at // 4096 + 4) * 4096, 4096)  # FALLOC_FL_COLLAPSE_RANGE
    else:
        raise AssertionError(how)

def changing_walk(data, a, b):  # the first validator to reach its third call changes the input
    global calls
    calls += 1
    if calls == 3:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, type(data).__name__.encode())
            os.close(fd)
            change(a)
    return walk(data, a, b)

validate.c_walk = lambda: changing_walk
try:
    create_sharded_dataset(src, out, num_shards=3)
except InputError as e:
    print("error:", e)
    sys.exit(3)
print("published")
"""

CHANGES = [
    "truncate-fatal",
    "truncate-ahead",
    "truncate-restore",
    "append",
    "pwrite-bad",
    "pwrite-valid",
    "last-newline",
    "rename",
    "punch",
    "collapse",
]


@builds
@pytest.mark.parametrize("how", CHANGES)
def test_an_input_changed_under_the_mapped_walk_is_reported_and_nothing_published(
    how: str, where: Path
) -> None:
    src = where / "in.jsonl"
    data = _records(3000)
    data += b" " * (-len(data) % P)  # a page multiple: the last newline is the mapping's last byte
    data = data[:-1] + b"\n"
    src.write_bytes(data)
    out = where / "ds"
    marker = where / "changed"
    done = _run(_CHANGED, str(src), str(out), how, str(marker), cwd=where)
    if f"fallocate: {errno.EOPNOTSUPP}" in done.stderr:
        pytest.skip(f"{how}: not supported on this filesystem")
    assert marker.read_text() == "mmap"  # the change was made while a validator walked its mapped input
    assert done.returncode == 3, (done.stdout, done.stderr[-3000:])
    assert "changed while it was read" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Fatal Python error" not in done.stderr, done.stderr[-3000:]
    assert not (out / "master_metadata.json").exists()
    assert not list(where.glob("core*"))


# --- 3. a validator killed by a signal ------------------------------------------------------------------

_KILLED = """
import os, resource, signal, sys
from shardclaim.dataset import background, records, validate
from shardclaim.dataset.build import create_sharded_dataset
from shardclaim.dataset.read import iter_shard_records
from shardclaim.errors import InputError
src, out, sig = sys.argv[1], sys.argv[2], int(sys.argv[3])
background.BACKGROUND_FROM = 0
validate._READ = 4096
hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
# As an interactive shell leaves them (a shell's background job inherits SIGINT and SIGQUIT ignored); a
# validator is forked from this process. SIGPIPE stays as Python sets it (ignored).
if sig == signal.SIGINT:
    signal.signal(sig, signal.default_int_handler)
elif sig not in (signal.SIGPIPE, signal.SIGKILL):
    signal.signal(sig, signal.SIG_DFL)
walk = records.c_walk()
calls = 0

def killed_walk(data, a, b):  # each validator, at its second call (mid-walk), on its unchanged input
    global calls
    calls += 1
    if calls == 2:
        os.kill(os.getpid(), sig)
    return walk(data, a, b)

validate.c_walk = lambda: killed_walk
try:
    create_sharded_dataset(src, out, num_shards=3)
except InputError as e:
    print("error:", e)
    sys.exit(3)
got = sorted(line for s in range(3) for line in iter_shard_records(out, s, parse=False))
want = sorted(open(src, "rb").read().splitlines())
print("published", got == want)
"""

SIGNALS = ["SIGKILL", "SIGTERM", "SIGBUS", "SIGSEGV", "SIGABRT", "SIGQUIT", "SIGHUP", "SIGUSR1"]
IGNORED = ["SIGINT", "SIGPIPE"]  # Ctrl-C is the builder's to handle; Python ignores SIGPIPE


@builds
@pytest.mark.parametrize("name", SIGNALS + IGNORED)
def test_a_validator_killed_by_a_signal_fails_the_build_clearly(name: str, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_records(3000))
    out = tmp_path / "ds"
    done = _run(_KILLED, str(src), str(out), str(int(getattr(signal, name))), cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Fatal Python error" not in done.stderr, done.stderr[-3000:]
    assert not list(tmp_path.glob("core*"))
    if name in IGNORED:  # the validator goes on and finishes its share: the build is the input's
        assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
        assert done.stdout.strip() == "published True"
        return
    assert done.returncode == 3, (done.stdout, done.stderr[-3000:])
    assert f"a background validator of {src} died before it finished" in done.stdout, done.stdout
    assert not (out / "master_metadata.json").exists()


# --- 4. a validator that dies while the builder still hands out the shares ------------------------------

_EARLY = """
import os, signal, sys
from concurrent.futures import ProcessPoolExecutor
from shardclaim.dataset import background, records, validate
from shardclaim.dataset.build import create_sharded_dataset
from shardclaim.errors import InputError
src, out, how = sys.argv[1], sys.argv[2], sys.argv[3]
background.BACKGROUND_FROM = 0
validate._READ = 4096
walk = records.c_walk()

def dying_walk(data, a, b):
    if how == "cut":
        os.truncate(src, 100)  # SIGBUS: the pages this call reads are gone
    else:
        os.kill(os.getpid(), signal.SIGKILL)
    return walk(data, a, b)

validate.c_walk = lambda: dying_walk
submit = ProcessPoolExecutor.submit
futures = []

def in_order(self, fn, *args, **kwargs):  # the next share is handed out once the first has ended
    if futures:
        futures[0].exception()
    future = submit(self, fn, *args, **kwargs)
    futures.append(future)
    return future

ProcessPoolExecutor.submit = in_order
try:
    create_sharded_dataset(src, out, num_shards=2)
except InputError as e:
    print("error:", e)
    sys.exit(3)
print("published")
"""


@builds
@pytest.mark.parametrize(("how", "expected"), [("cut", "changed while it was read"), ("kill", "died before")])
def test_a_validator_dying_while_the_shares_are_handed_out_fails_the_build_cleanly(
    how: str, expected: str, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(_records(3000))
    out = tmp_path / "ds"
    done = _run(_EARLY, str(src), str(out), how, cwd=tmp_path)
    assert not (out / "master_metadata.json").exists()
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 3, (done.stdout, done.stderr[-3000:])
    assert expected in done.stdout, done.stdout
