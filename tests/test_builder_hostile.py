"""Hostile checks of the builder's promises, with real files and real processes.

Every record an input holds ends up in exactly one chunk, byte for byte, with exact counts, whatever the
block boundaries, line lengths, blank lines and scan (C or numpy); a build interrupted at any moment
(SIGINT, SIGKILL) leaves no process behind, frees its output at once and keeps the dataset it was
replacing; a bad line found by a background validator stops the build with nothing published; an input
that changes while it is read fails or builds what was read; a closed pipe on the builder's output
neither hangs it nor leaves an orphan.

The process tests run the builder through a small driver (:data:`_DRIVER`) that reports on a pipe when
it reaches a chosen point (validators started, block K dealt, publish) and waits there for a byte, so
each signal lands at a known moment; nothing here sleeps to wait for a state. Waits that could hang on
a regression are bounded (a hang is the failure they detect), never timed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardclaim.dataset import create_sharded_dataset
from shardclaim.dataset.lineends import BUILT
from shardclaim.dataset.read import open_shard, verify_chunk
from shardclaim.errors import BuildInProgressError

_MiB = 1 << 20
_BLOCK = 8 * _MiB
_BENCH = Path("/var/tmp/shardclaim-bench/small_1024m.jsonl")
_GEN = Path("/work/shared/bench/gen_jsonl.py")
_HANG = 120.0  # seconds: only a hang (the failure being tested) ever waits this long


# -- reading a dataset back ----------------------------------------------------------------------


def expected_records(data: bytes) -> list[bytes]:
    """The records of one input file's bytes as the builder promises them: a BOM at the start dropped,
    each line with its newline (one added to a last line without), blank lines (JSON whitespace) out."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    tail = lines.pop()
    out = [line + b"\n" for line in lines]
    if tail:
        out.append(tail + b"\n")
    return [line for line in out if line.strip(b" \t\r\n")]


def read_back(dataset: str) -> tuple[dict[str, Any], list[bytes], dict[str, bytes]]:
    """``(master, every record with its newline, chunk path -> bytes)``; each chunk's size, CRC32C and
    record count checked against its metadata, each shard's and the master's totals against the chunks."""
    master = orjson.loads((Path(dataset) / "master_metadata.json").read_bytes())
    records: list[bytes] = []
    chunks: dict[str, bytes] = {}
    for shard_id in range(master["num_shards"]):
        _, meta, fs, url = open_shard(dataset, shard_id)
        total = 0
        for chunk in meta["chunks"]:
            path = f"{url}/{chunk['file']}"
            verify_chunk(fs, path, chunk)
            data = Path(path).read_bytes()
            assert data.endswith(b"\n"), path
            lines = data.split(b"\n")[:-1]
            assert len(lines) == chunk["num_tasks"], (path, len(lines), chunk["num_tasks"])
            records += [x + b"\n" for x in lines]
            total += chunk["num_tasks"]
            chunks[os.path.relpath(path, dataset)] = data
        assert total == meta["total_tasks"] == master["shards"][shard_id]["total_tasks"]
    assert len(records) == master["total_tasks"]
    return master, records, chunks


def assert_exact(dataset: str, inputs: list[bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Every record of ``inputs`` in exactly one chunk, byte for byte; returns the master and chunks."""
    master, got, chunks = read_back(dataset)
    want = [r for data in inputs for r in expected_records(data)]
    assert len(got) == len(want)
    assert collections.Counter(got) == collections.Counter(want)
    assert master["total_bytes"] == sum(map(len, want))
    return master, chunks


def build_both_scans(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, paths: list[Path], **kw: Any
) -> dict[str, Any]:
    """Build with the numpy scan and with the C scan (when built): the same records, exactly, and the
    same chunk files byte for byte."""
    inputs = [p.read_bytes() for p in paths]
    results = {}
    for scan in ("python", "c") if BUILT else ("python",):
        if scan == "python":
            monkeypatch.setenv("SHARDCLAIM_SCAN", "python")
        else:
            monkeypatch.delenv("SHARDCLAIM_SCAN", raising=False)
        out = tmp_path / f"out-{scan}"
        create_sharded_dataset([str(p) for p in paths], str(out), progress=False, overwrite=True, **kw)
        results[scan] = assert_exact(str(out), inputs)
    if len(results) == 2:
        (m1, c1), (m2, c2) = results["python"], results["c"]
        assert c1 == c2
        for key in ("total_tasks", "total_bytes", "blank_lines", "shards"):
            assert m1[key] == m2[key]
    return results["python"][0]


# -- inputs around block boundaries ----------------------------------------------------------------


def _record(i: int, size: int, *, crlf: bool = False) -> bytes:
    """A JSON record line of exactly ``size`` bytes (newline included)."""
    end = b"\r\n" if crlf else b"\n"
    head = b'{"i":%d,"p":"' % i
    pad = size - len(head) - 2 - len(end)
    assert pad >= 0
    return head + b"x" * pad + b'"}' + end


def _fill_to(parts: list[bytes], target: int, start: int, *, crlf: bool = False) -> int:
    """Append records of 100..900 bytes to ``parts`` until their total is exactly ``target``."""
    total = sum(map(len, parts))
    i = start
    while total < target:
        left = target - total
        size = 100 + (i * 7919) % 800
        if left - size < 100:
            size = left if left >= 20 else size
        if left < 20:  # too small for a record: widen the last one
            last = parts.pop()
            total -= len(last)
            size = len(last) + left
        parts.append(_record(i, size, crlf=crlf))
        total += size
        i += 1
    assert total == target
    return i


BLANKS = [b"\n", b" \n", b"\t\n", b"\r\n", b" \t\r \n", b"\r\r\n"]


def boundary_file(path: Path, *, crlf: bool = False, bom: bool = False, last_newline: bool = True) -> None:
    """About 33 MiB: around each 8 MiB boundary a line ends just before, at, or just after it, blank
    lines of every kind straddle it, and a record straddles it."""
    parts: list[bytes] = [b"\xef\xbb\xbf"] if bom else []
    i = 0
    for k, shape in enumerate(["at", "before", "blank", "after"], start=1):
        boundary = k * _BLOCK
        if shape == "at":
            i = _fill_to(parts, boundary, i, crlf=crlf)
        elif shape == "before":
            i = _fill_to(parts, boundary - 1, i, crlf=crlf)
        elif shape == "blank":  # blank lines from 200 bytes before the boundary to 200 after
            i = _fill_to(parts, boundary - 200, i, crlf=crlf)
            filler = b"".join(BLANKS * 40)
            parts.append(filler)
        else:
            i = _fill_to(parts, boundary + 1, i, crlf=crlf)
    i = _fill_to(parts, 33 * _MiB, i, crlf=crlf)
    parts.append(b'{"last":true}' + (b"\n" if last_newline else b""))
    path.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def boundary_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("boundary")
    made = {}
    for name, kw in {
        "lf": {},
        "crlf-bom-nolast": {"crlf": True, "bom": True, "last_newline": False},
    }.items():
        made[name] = base / f"{name}.jsonl"
        boundary_file(made[name], **kw)
    return made


@pytest.mark.parametrize(
    ("name", "shards"), [("lf", 1), ("lf", 512), ("crlf-bom-nolast", 7), ("crlf-bom-nolast", 1)]
)
def test_block_boundaries_exact_both_scans(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boundary_inputs: dict[str, Path], name: str, shards: int
) -> None:
    """Lines ending at, before and after 8 MiB boundaries, blank lines of every JSON-whitespace kind
    straddling one, CRLF, a BOM and a last line without newline: every record once, byte-exact, counts
    exact, numpy and C scans identical (planned blocks: no validation, the plan thread runs)."""
    master = build_both_scans(
        monkeypatch, tmp_path, [boundary_inputs[name]], num_shards=shards, chunk_size_mb=3, validate=False
    )
    assert master["blank_lines"] == len(BLANKS) * 40


def test_more_than_512_shards_line_by_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boundary_inputs: dict[str, Path]
) -> None:
    """``blocks`` with 600 shards (runs too small: dealt line by line) keeps every record."""
    build_both_scans(
        monkeypatch, tmp_path, [boundary_inputs["lf"]], num_shards=600, chunk_size_mb=1, validate=False
    )


def test_lines_longer_than_one_and_two_blocks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A first line of 9 MiB, lines of 17 MiB and 8 MiB exactly amid short ones, blank lines around
    them, and a last line of 16 MiB + 1 without newline: all records, byte-exact, both scans."""
    parts = [_record(0, 9 * _MiB)]
    i = _fill_to(parts, 9 * _MiB + 5000, 1)
    parts += [b" \n", _record(i, 17 * _MiB), b"\t\r\n", _record(i + 1, _BLOCK)]
    i = _fill_to(parts, 40 * _MiB - 3, i + 2)
    parts.append(_record(i, 16 * _MiB + 1)[:-1])
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"".join(parts))
    build_both_scans(monkeypatch, tmp_path, [path], num_shards=5, chunk_size_mb=4, validate=False)


def test_many_small_and_empty_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """300 inputs: empty ones, blank-only ones, ones without a last newline, one of 9 MiB: each record
    once; inputs joined never merge a line without newline with the next file's first line."""
    paths = []
    for k in range(300):
        p = tmp_path / f"in-{k:03d}.jsonl"
        if k % 7 == 0:
            data = b""
        elif k % 11 == 0:
            data = b" \n\r\n"
        elif k == 150:
            parts: list[bytes] = []
            _fill_to(parts, 9 * _MiB + 17, 0)
            data = b"".join(parts)
        else:
            data = b"".join(_record(k * 100 + j, 60 + j) for j in range(k % 5 + 1))
            if k % 3 == 0:
                data = data[:-1]
        p.write_bytes(data)
        paths.append(p)
    for shards, validate in ((1, False), (4, False), (4, True)):
        build_both_scans(monkeypatch, tmp_path, paths, num_shards=shards, validate=validate, chunk_size_mb=1)


@pytest.mark.parametrize("strategy", ["round_robin", "contiguous"])
def test_other_strategies_on_boundaries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boundary_inputs: dict[str, Path], strategy: str
) -> None:
    """The line-by-line strategies, validated inline, on the same boundary input."""
    build_both_scans(
        monkeypatch, tmp_path, [boundary_inputs["crlf-bom-nolast"]], num_shards=3, strategy=strategy
    )


# -- real processes ------------------------------------------------------------------------------

_DRIVER = r"""
import os, sys
ctl, rep = int(os.environ["HOSTILE_CTL"]), int(os.environ["HOSTILE_REP"])
point, action = os.environ["HOSTILE_AT"], os.environ.get("HOSTILE_DO", "wait")
pids = []

def reached(label):
    if label != point:
        return
    os.write(rep, ("at %s %s\n" % (label, " ".join(map(str, pids)))).encode())
    if action == "wait":
        os.read(ctl, 1)  # the test signals this process while it waits here
    elif action.startswith("append:"):
        with open(os.environ["HOSTILE_FILE"], "ab") as f:
            f.write(bytes.fromhex(action[7:]))
    elif action.startswith("truncate:"):
        os.truncate(os.environ["HOSTILE_FILE"], int(action[9:]))
    elif action.startswith("pwrite:"):  # rewrite bytes in place, then let held validators go
        _, offset, data = action.split(":")
        before = os.stat(os.environ["HOSTILE_FILE"])
        fd = os.open(os.environ["HOSTILE_FILE"], os.O_WRONLY)
        os.pwrite(fd, bytes.fromhex(data), int(offset))
        os.close(fd)
        if os.environ.get("HOSTILE_KEEP_TIMES"):  # as rsync -a --inplace or touch -r would
            os.utime(os.environ["HOSTILE_FILE"], ns=(before.st_atime_ns, before.st_mtime_ns))
        os.write(int(os.environ["HOSTILE_RELEASE"]), b"x" * 64)

import shardclaim.dataset.build as build
import shardclaim.dataset.background as background
import shardclaim.dataset.validate as validate
from shardclaim.dataset.output_local import LocalOutput

if os.environ.get("HOSTILE_HOLD"):  # each validator's job waits for a byte before it reads
    _check = validate.check_range
    def held_check(*args):
        os.read(int(os.environ["HOSTILE_HOLD"]), 1)
        return _check(*args)
    validate.check_range = held_check

def at_exit():  # which validators still run as the interpreter exits; then let held ones go
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    os.write(rep, ("at exit %s\n" % " ".join(map(str, alive))).encode())
    os.write(int(os.environ["HOSTILE_RELEASE"]), b"x" * 64)

_start = background.BackgroundValidator.start
def start(self):
    _start(self)
    pids.extend(self._pool._processes)
    if os.environ.get("HOSTILE_EXIT_REPORT"):
        import threading
        threading._register_atexit(at_exit)  # runs before the process pool's own exit handler
    reached("validators")
background.BackgroundValidator.start = start

_bar = build._progress_bar
def bar(*a, **kw):  # (the writer's threads and the validators are running by then)
    reached("bar")
    return _bar(*a, **kw)
build._progress_bar = bar

_deal = build.deal_block
dealt = [0]
def deal(*a, **kw):
    dealt[0] += 1
    reached("block:%d" % dealt[0])
    return _deal(*a, **kw)
build.deal_block = deal

import shardclaim.dataset.output_local as output_local
_fsync = output_local._fsync_directory
def fsync(path):  # in publish, just after the new dataset was swapped in (or moved in)
    reached("swapped")
    return _fsync(path)
output_local._fsync_directory = fsync

_publish = LocalOutput.publish
def publish(self, shards, master):
    reached("publish")
    return _publish(self, shards, master)
LocalOutput.publish = publish

_result = background.BackgroundValidator.result
def result(self):
    found = _result(self)
    reached("validated")
    return found
background.BackgroundValidator.result = result

if __name__ == "__main__":  # (a spawned validator imports this file again)
    if os.environ.get("HOSTILE_THREAD"):  # another thread: the validators are spawned, not forked
        import threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    from shardclaim.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pidfds(pids: list[int]) -> dict[int, int]:
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            fds[pid] = os.pidfd_open(pid)
    return fds


def _assert_all_exit(fds: dict[int, int]) -> None:
    """Every process behind ``fds`` ends (a bounded wait: a survivor is the failure)."""
    try:
        survivors = []
        for pid, fd in fds.items():
            ready, _, _ = select.select([fd], [], [], _HANG)
            if not ready:
                survivors.append(pid)
        for pid in survivors:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"process {pid} ({cmd!r}) outlived the build")
    finally:
        for fd in fds.values():
            os.close(fd)


class Driver:
    """``shardclaim create ARGS`` in a process that stops at ``at`` (see :data:`_DRIVER`)."""

    def __init__(
        self, script: Path, args: list[str], *, at: str, do: str = "wait", file: str = "", **options: Any
    ) -> None:
        self._ctl_r, self._ctl_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        hold_r, hold_w = os.pipe()  # for validators held until the driver lets them go (pwrite)
        env = {**os.environ, "HOSTILE_CTL": str(self._ctl_r), "HOSTILE_REP": str(rep_w)}
        env |= {
            "HOSTILE_RELEASE": str(hold_w),
            "HOSTILE_HOLD": "" if not options.pop("hold", False) else str(hold_r),
        }
        env |= {"HOSTILE_AT": at, "HOSTILE_DO": do, "HOSTILE_FILE": file}
        env.pop("SHARDCLAIM_SCAN", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "create", *args],
            env=env | options.pop("env", {}),
            start_new_session=options.pop("start_new_session", False),
            pass_fds=(self._ctl_r, rep_w, hold_r, hold_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for fd in (rep_w, self._ctl_r, hold_r, hold_w):
            os.close(fd)

    def reached(self) -> list[int]:
        """Wait for the report of the stopping point; the validators' pids it names (empty if the
        build ended before it)."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self._rep_r], [], [], _HANG)
            assert ready, "the builder never reached its stopping point"
            got = os.read(self._rep_r, 4096)
            if not got:
                return []
            line += got
        return [int(p) for p in line.split()[2:]]

    def go_on(self) -> None:
        os.write(self._ctl_w, b"x")

    def finish(self) -> tuple[int, bytes, bytes]:
        """Wait for the builder (bounded: a hang fails) and its output to end (EOF on both pipes)."""
        try:
            out, err = self.proc.communicate(timeout=_HANG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail("the builder, or a process holding its output pipes, did not end")
        finally:
            os.close(self._ctl_w)
            os.close(self._rep_r)
        return self.proc.returncode, out, err


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(_DRIVER)
    return path


@pytest.fixture(scope="session")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 MiB of valid JSONL (over the background validators' 96 MiB): the bench file's head
    when present, else made by the bench generator."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    if _BENCH.exists():
        with _BENCH.open("rb") as f:
            data = f.read(100 * _MiB + 4 * _MiB)
        path.write_bytes(data[: data.rindex(b"\n", 0, 100 * _MiB + 2 * _MiB) + 1])
    elif _GEN.exists():
        subprocess.run(
            [sys.executable, str(_GEN), "--out", str(path), "--size-mb", "100", "--profile", "small",
             "--seed", "1"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    else:
        pytest.skip("no bench file and no generator for a 100 MiB input")
    assert path.stat().st_size >= 98 * _MiB
    return path


@pytest.fixture(scope="session")
def small_dataset_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    path.write_bytes(b"".join(_record(i, 50 + i % 40) for i in range(3000)))
    return path


def _rebuild_at_once(out: Path, source: Path) -> None:
    """The output takes a new build at once (no lock left held), and it is exact."""
    try:
        create_sharded_dataset(str(source), str(out), num_shards=3, overwrite=True, progress=False)
    except BuildInProgressError as e:
        pytest.fail(f"the output is still locked after the build ended: {e}")
    assert_exact(str(out), [source.read_bytes()])


def _create_args(source: Path, out: Path, *extra: str) -> list[str]:
    return ["--input_file", str(source), "--output_dir", str(out), "--num_shards", "4", *extra]


def _previous(tmp_path: Path, small: Path) -> Path:
    out = tmp_path / "out"
    create_sharded_dataset(str(small), str(out), num_shards=3, progress=False)
    return out


def _interrupt_overwrite(
    driver: Path, big: Path, small: Path, tmp_path: Path, *, at: str, sig: int, env: dict[str, str]
) -> None:
    """A validated build of ``big`` over a dataset of ``small`` (``--overwrite``), sent ``sig`` at
    ``at``: the builder exits, every process it started ends, its output pipes close, the old dataset is
    intact and the output takes a new build at once."""
    out = _previous(tmp_path, small)
    d = Driver(driver, _create_args(big, out, "--overwrite"), at=at, env=env)
    validators = d.reached()
    assert len(validators) >= 2
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    d.proc.send_signal(sig)
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    assert_exact(str(out), [small.read_bytes()])
    _rebuild_at_once(out, small)


@pytest.mark.parametrize("at", ["validators", "block:1", "block:7", "publish"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_overwrite_leaves_nothing(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, *, at: str, sig: int
) -> None:
    """A validated 100 MiB build over an existing dataset (``--overwrite``) interrupted at a known
    moment (validators just started, first block, seventh block, just before publishing): the builder
    exits, every process it started ends, its output pipes close, the old dataset is intact and the
    output takes a new build at once."""
    _interrupt_overwrite(driver, big_input, small_dataset_input, tmp_path, at=at, sig=sig, env={})


def _with_bad_line(big: Path, tmp_path: Path, fraction: float, bad: bytes) -> tuple[Path, int]:
    data = big.read_bytes()
    at = data.index(b"\n", int(len(data) * fraction)) + 1
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data[:at] + bad + data[at:])
    return path, data.count(b"\n", 0, at) + 1


@pytest.mark.parametrize("fraction", [0.1, 0.55, 0.999])
def test_background_validator_finds_bad_line(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, fraction: float
) -> None:
    """A bad line found by a background validator: ``FILE, line N`` with the right N, exit status 1,
    nothing published (the old dataset intact), no process left, the output free at once."""
    source, line = _with_bad_line(big_input, tmp_path, fraction, b'{"a": 1,}\n')
    out = _previous(tmp_path, small_dataset_input)
    d = Driver(driver, _create_args(source, out, "--overwrite"), at="validators", do="report")
    validators = d.reached()
    assert len(validators) >= 2
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == 1
    assert f"shardclaim: {source}, line {line}: not valid JSON".encode() in err
    assert_exact(str(out), [small_dataset_input.read_bytes()])
    _rebuild_at_once(out, small_dataset_input)


def _ends_clean_or_exact(code: int, err: bytes, out: Path, read: bytes) -> None:
    """A build whose input changed: a clear error and no dataset, or a dataset of valid records only
    (the master says validated) that are exactly ``read``'s."""
    if code != 0:
        assert b"Traceback" not in err, err
        assert err.startswith(b"shardclaim: "), err
        assert not (out / "master_metadata.json").exists()
        return
    master, records, _ = read_back(str(out))
    assert master["validated"] is True
    for line in records:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"a validated dataset holds a line that is not JSON: {line[:60]!r}")
    assert_exact(str(out), [read])


def test_input_appended_invalid_while_read(driver: Path, big_input: Path, tmp_path: Path) -> None:
    """An invalid line appended to a 100 MiB input once the background validators have started (before
    the builder reads its first block): the build must fail, or publish only valid records."""
    source = tmp_path / "growing.jsonl"
    shutil.copyfile(big_input, source)
    out = tmp_path / "out"
    d = Driver(
        driver,
        _create_args(source, out),
        at="validators",
        do="append:" + b"not json\n".hex(),
        file=str(source),
    )
    d.reached()
    code, _, err = d.finish()
    _ends_clean_or_exact(code, err, out, source.read_bytes())


@pytest.mark.parametrize("cut", ["line", "mid-line"])
def test_input_truncated_while_read(driver: Path, big_input: Path, tmp_path: Path, cut: str) -> None:
    """A 100 MiB input cut to about half (at a line end, or inside a line) once the validators have
    started: a clear error, or exactly the remaining records."""
    source = tmp_path / "shrinking.jsonl"
    shutil.copyfile(big_input, source)
    data = big_input.read_bytes()
    size = data.index(b"\n", len(data) // 2) + 1 - (cut == "mid-line") * 20
    out = tmp_path / "out"
    d = Driver(driver, _create_args(source, out), at="validators", do=f"truncate:{size}", file=str(source))
    d.reached()
    code, _, err = d.finish()
    _ends_clean_or_exact(code, err, out, source.read_bytes())
    if cut == "mid-line":
        assert code == 1


def test_stdout_closed_by_reader(driver: Path, big_input: Path, tmp_path: Path) -> None:
    """``shardclaim create --json ... | head -c 0``: the reader is gone before the build prints; the
    builder ends (no hang), quietly, and leaves no process."""
    out = tmp_path / "out"
    d = Driver(driver, _create_args(big_input, out, "--json"), at="validators", do="report")
    validators = d.reached()
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    assert d.proc.stdout is not None
    d.proc.stdout.close()
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == 128 + signal.SIGPIPE, err
    assert b"Traceback" not in err


def test_stderr_progress_to_reader_that_leaves(driver: Path, big_input: Path, tmp_path: Path) -> None:
    """``shardclaim create --verbose ... 2>&1 | head -c 1``: the progress bar's reader takes one byte and
    leaves mid-build; the builder ends (no hang), leaves no process, and the output takes a build."""
    out = tmp_path / "out"
    d = Driver(driver, _create_args(big_input, out, "--verbose"), at="block:1")
    validators = d.reached()
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    assert d.proc.stderr is not None
    d.go_on()
    assert os.read(d.proc.stderr.fileno(), 1)
    d.proc.stderr.close()
    code, _, _ = d.finish()
    _assert_all_exit(fds)
    assert code in {0, 128 + signal.SIGPIPE}
    if code == 0:
        assert_exact(str(out), [big_input.read_bytes()])
    _rebuild_at_once(out, _small(tmp_path))


def _small(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_bytes(b"".join(_record(i, 40) for i in range(10)))
    return path


@pytest.mark.parametrize("at", ["validators", "block:1", "block:7"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_with_spawned_validators(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, *, at: str, sig: int
) -> None:
    """The same interruptions when the builder runs beside another thread (a library caller's): the
    validators are spawned (with multiprocessing's resource tracker), and still none outlives it."""
    _interrupt_overwrite(
        driver, big_input, small_dataset_input, tmp_path, at=at, sig=sig, env={"HOSTILE_THREAD": "1"}
    )


@pytest.mark.parametrize("at", ["validators", "block:1", "block:7", "validated"])
def test_ctrl_c_to_the_process_group(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, at: str
) -> None:
    """Ctrl-C at a terminal: SIGINT to the builder and its validators at once (its process group).
    The builder exits 130, no process is left, the old dataset is intact, the output free."""
    out = _previous(tmp_path, small_dataset_input)
    d = Driver(driver, _create_args(big_input, out, "--overwrite"), at=at, start_new_session=True)
    validators = d.reached()
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    os.killpg(d.proc.pid, signal.SIGINT)
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == 130, err
    assert_exact(str(out), [small_dataset_input.read_bytes()])
    _rebuild_at_once(out, small_dataset_input)


def test_ctrl_c_once_validated_is_quiet(driver: Path, big_input: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) once the validators have checked every line and wait
    idle: the command ends as it does alone, 130 and no traceback on stderr."""
    out = tmp_path / "out"
    d = Driver(driver, _create_args(big_input, out), at="validated", start_new_session=True)
    validators = d.reached()
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    os.killpg(d.proc.pid, signal.SIGINT)
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == 130
    assert b"Traceback" not in err, err.decode()


@pytest.mark.parametrize(
    "keep_times",
    [
        False,
        True,
    ],
    ids=["mtime-moves", "mtime-restored"],
)
def test_input_rewritten_in_place_after_read(
    driver: Path, big_input: Path, tmp_path: Path, keep_times: bool
) -> None:
    """A 100 MiB input whose line at 10 MiB is invalid when the builder copies it and is rewritten in
    place (same length, valid) before the validators reach it (held here until then, as a slow or
    busy validator would be): the build must fail, or publish only valid records."""
    source, _ = _with_bad_line(big_input, tmp_path, 0.1, b'{"a": 1,}\n')
    read = source.read_bytes()
    offset = read.index(b'{"a": 1,}\n')
    out = tmp_path / "out"
    good = b'{"a": 12}'.hex()  # the same length as the bad line's text
    fix = f"pwrite:{offset}:{good}"
    env = {"HOSTILE_KEEP_TIMES": "1"} if keep_times else {}
    d = Driver(driver, _create_args(source, out), at="block:4", do=fix, file=str(source), hold=True, env=env)
    d.reached()
    code, _, err = d.finish()
    _ends_clean_or_exact(code, err, out, read)


def test_by_reference_two_threads_exact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boundary_inputs: dict[str, Path]
) -> None:
    """``--by-reference`` with its two scanning threads (forced on below 96 MiB): every record of the
    CRLF/BOM/no-last-newline boundary input read back once, exact, counts and blank lines right."""
    from shardclaim.dataset import iter_shard_records, ranges

    monkeypatch.setattr(ranges, "PARALLEL_FROM", 0)
    source = boundary_inputs["crlf-bom-nolast"]
    want = expected_records(source.read_bytes())
    for shards, chunk in ((1, 100), (3, 2)):
        out = tmp_path / f"ref-{shards}"
        master = create_sharded_dataset(
            str(source), str(out), num_shards=shards, chunk_size_mb=chunk, by_reference=True, progress=False
        )
        got = [r + b"\n" for s in range(shards) for r in iter_shard_records(str(out), s, parse=False)]
        assert collections.Counter(got) == collections.Counter(want)
        assert master["total_tasks"] == len(want)
        assert master["blank_lines"] == len(BLANKS) * 40


def test_gzip_input_planned_blocks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, boundary_inputs: dict[str, Path]
) -> None:
    """A ``.gz`` input through the planned blocks (its reader fills the two buffers by ``readinto``):
    the same chunks, byte for byte, as the plain file."""
    import gzip

    plain = boundary_inputs["lf"]
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    results = []
    for source in (plain, packed):
        out = tmp_path / f"out-{source.suffix}"
        create_sharded_dataset(
            str(source), str(out), num_shards=5, chunk_size_mb=2, validate=False, progress=False
        )
        results.append(assert_exact(str(out), [plain.read_bytes()])[1])
    assert results[0] == results[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_just_after_the_switch(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, sig: int
) -> None:
    """Interrupted in publish just after the new dataset took the old one's place (the old tree not
    yet removed): the output holds the new dataset, exact, and takes a new build at once."""
    out = _previous(tmp_path, small_dataset_input)
    d = Driver(driver, _create_args(big_input, out, "--overwrite"), at="swapped")
    d.reached()
    fds = _pidfds(_descendants(d.proc.pid))
    d.proc.send_signal(sig)
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code in {0, 130, -signal.SIGKILL}, err
    assert_exact(str(out), [big_input.read_bytes()])
    _rebuild_at_once(out, small_dataset_input)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def _bad_line_at_share(big: bytes, workers: int, shift: int) -> tuple[bytes, int]:
    """``big`` with a bad line beginning ``shift`` bytes after where the first validator's share ends
    (a negative shift: the line straddles it); returns the bytes and the bad line's number."""
    bad = b'{"bad": tru}\n'
    target = len(big) // workers
    cut = big.rindex(b"\n", 0, target - 4096) + 1
    prefix, rest = big[:cut], big[cut:]
    rest = rest[rest.index(b"\n") + 1 :]  # the filler takes that line's place
    fill = 0
    for _ in range(50):  # the share moves with the filler: settle the filler's length
        total = len(prefix) + fill + len(bad) + len(rest)
        share = -(-total // workers)
        want = share + shift - len(prefix)
        if want == fill:
            break
        fill = want
    assert fill >= 20
    assert fill == share + shift - len(prefix)
    filler = b'{"f":"' + b"y" * (fill - 9) + b'"}\n'
    data = prefix + filler + bad + rest
    assert -(-len(data) // workers) + shift == data.index(bad)
    return data, prefix.count(b"\n") + 2


@pytest.mark.parametrize("shift", [-13, -6, -1, 0, 1])
def test_bad_line_at_a_validator_share_boundary(
    driver: Path, big_input: Path, tmp_path: Path, shift: int
) -> None:
    """A bad line that begins exactly where a validator's byte range ends, just after, or straddles
    it: found, with its line number, whichever validator owns it."""
    from shardclaim.dataset.background import validators

    data, line = _bad_line_at_share(big_input.read_bytes(), validators(), shift)
    source = tmp_path / "edge.jsonl"
    source.write_bytes(data)
    out = tmp_path / "out"
    d = Driver(driver, _create_args(source, out), at="validators", do="report")
    assert len(d.reached()) >= 2
    code, _, err = d.finish()
    assert code == 1, err
    assert f"shardclaim: {source}, line {line}: not valid JSON".encode() in err
    assert not out.exists()


def test_first_bad_line_in_input_order_across_files(driver: Path, big_input: Path, tmp_path: Path) -> None:
    """Two inputs of 50 MiB (validated in the background together), a bad line near the end of the
    first and one near the start of the second: the first one is reported, named by its own file and
    line; nothing is published."""
    data = big_input.read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    bad_path, line_one = _with_bad_line(big_input, tmp_path, 0.45, b"[1,2\n")
    one = bad_path.read_bytes()
    bad_path.unlink()
    first.write_bytes(one[: one.index(b"\n", half) + 1])
    cut = data.index(b"\n", half + 1000) + 1
    second.write_bytes(data[half:cut] + b"{]\n" + data[cut:])
    out = tmp_path / "out"
    args = ["--input_file", str(first), str(second), "--output_dir", str(out)]
    d = Driver(driver, args, at="validators", do="report")
    assert len(d.reached()) >= 2
    code, _, err = d.finish()
    assert code == 1, err
    assert f"shardclaim: {first}, line {line_one}: not valid JSON".encode() in err
    assert not out.exists()


@pytest.mark.parametrize(
    "at",
    [
        "block:1",
        "block:6",
        "validators",  # (as start() returns: the validator is the build's to close by then)
        "bar",
    ],
)
def test_sigint_stops_running_validators(driver: Path, big_input: Path, tmp_path: Path, at: str) -> None:
    """SIGINT while the validators are still in their first share (held there, as on a large input),
    from the moment they start on: the builder stops them before it exits, rather than wait for their
    shares to end."""
    out = tmp_path / "out"
    d = Driver(driver, _create_args(big_input, out), at=at, hold=True, env={"HOSTILE_EXIT_REPORT": "1"})
    validators = d.reached()
    assert len(validators) >= 2
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    d.proc.send_signal(signal.SIGINT)
    alive_at_exit = d.reached()
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == 130, err
    assert alive_at_exit == [], "validators still running as the builder exits"


@pytest.mark.parametrize(
    "large",
    [
        False,
        True,
    ],
    ids=["small-file", "large-file"],
)
def test_pipe_input_beside_a_file(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, large: bool
) -> None:
    """``--input_file big.jsonl <(zcat more.jsonl.gz)``: a pipe (size 0) beside a 100 MiB file. Without
    the big file, or with a small one, the pipe builds; beside it, the build must still hold every
    record of both, exactly (or refuse the pipe with an error that names it)."""
    import threading

    fifo = tmp_path / "more.fifo"
    os.mkfifo(fifo)
    piped = b"".join(_record(i, 64) for i in range(30000))
    stop = threading.Event()
    delivered = threading.Event()

    def feed() -> None:
        # Like a writer that starts again for each reader that opens the pipe: the records go, whole,
        # to the first reader that takes them all; every other reader gets an empty stream (so no
        # reader waits forever for a writer, whoever opens the pipe and when).
        while not stop.is_set():
            fd = os.open(fifo, os.O_WRONLY)
            with contextlib.suppress(BrokenPipeError):
                if not delivered.is_set():
                    view = memoryview(piped)
                    while view:
                        view = view[os.write(fd, view) :]
                    delivered.set()
            os.close(fd)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "out"
    companion = big_input if large else small_dataset_input
    args = ["--input_file", str(companion), str(fifo), "--output_dir", str(out)]
    d = Driver(driver, args, at="never")
    code, _, err = d.finish()
    stop.set()
    # A writer waiting for a reader: let it end (a daemon thread: never waited for).
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    if code != 0:
        assert str(fifo).encode() in err, err
    assert code == 0, err
    assert_exact(str(out), [companion.read_bytes(), piped])


@pytest.mark.parametrize("group", [False, True], ids=["builder", "process-group"])
def test_sigterm_mid_build(
    driver: Path, big_input: Path, small_dataset_input: Path, tmp_path: Path, group: bool
) -> None:
    """SIGTERM (``timeout``, ``docker stop``; systemd sends it to the whole group) in the middle of a
    validated build over an old dataset: the builder dies at once without its cleanup, and still no
    process outlives it, the old dataset is intact and the output takes a build at once."""
    out = _previous(tmp_path, small_dataset_input)
    d = Driver(driver, _create_args(big_input, out, "--overwrite"), at="block:5", start_new_session=group)
    validators = d.reached()
    assert len(validators) >= 2
    fds = _pidfds(sorted({*validators, *_descendants(d.proc.pid)}))
    if group:
        os.killpg(d.proc.pid, signal.SIGTERM)
    else:
        d.proc.send_signal(signal.SIGTERM)
    code, _, err = d.finish()
    _assert_all_exit(fds)
    assert code == -signal.SIGTERM, err
    assert_exact(str(out), [small_dataset_input.read_bytes()])
    _rebuild_at_once(out, small_dataset_input)
