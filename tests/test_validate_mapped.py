"""Background validators map their input: what a file cut while it is mapped does to them, and to the build.

Reading a mapped file past its new end is fatal to the reader (SIGBUS). The promises: a validator checks
before each step that its file has not shrunk and stops if it has; one killed all the same (the file cut
between that check and the step) leaves no core dump; and either way the builder reports the input as
changed while it was read and publishes nothing. A validator that dies for any other reason fails the
build with a clear error. Real builder and validator processes; the cut is made by the validator's own
walk at a chosen call, so nothing depends on timing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from shardclaim.dataset import background, records, validate
from shardclaim.dataset.inputs import open_inputs
from shardclaim.errors import InputError

pytestmark = pytest.mark.skipif(
    records.c_walk() is None or not sys.platform.startswith("linux"),
    reason="the C walk is not built, or not Linux (forked validators)",
)


def _input(path: Path, lines: int = 40_000) -> int:
    data = b"".join(b'{"id":%d,"text":"%s"}\n' % (i, b"x" * (i % 97)) for i in range(lines))
    path.write_bytes(data)
    return len(data)


def _run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


_STOPS = """
import os, sys
from shardclaim.dataset import background, records, validate
path, size = sys.argv[1], int(sys.argv[2])
validate._READ = 4096  # many steps
walk = records.c_walk()
calls = 0

def cutting_walk(data, a, b):  # the first step goes through, then the file loses its second half
    global calls
    calls += 1
    found = walk(data, a, b)
    if calls == 1:
        os.truncate(path, size // 2)
    return found

print(validate._walk_range(cutting_walk, path, "in", 0, size), calls)
"""


def test_a_file_cut_after_it_was_mapped_stops_the_walk_at_the_next_step(tmp_path: Path) -> None:
    """Without the check the next step would read pages past the new end: the process would die."""
    src = tmp_path / "in.jsonl"
    size = _input(src)
    done = _run(_STOPS, str(src), str(size))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["(None,", "0)", "1"], done.stdout


_BUILD = """
import os, resource, signal, sys
from shardclaim.dataset import background, records, validate
from shardclaim.dataset.build import create_sharded_dataset
from shardclaim.errors import InputError
src, out, how = sys.argv[1], sys.argv[2], sys.argv[3]
background.BACKGROUND_FROM = 0  # background validators, even for this input
validate._READ = 4096
hard = resource.getrlimit(resource.RLIMIT_CORE)[1]  # core dumps allowed: a validator must turn them off
resource.setrlimit(resource.RLIMIT_CORE, (hard if hard == resource.RLIM_INFINITY else max(hard, 0), hard))
walk = records.c_walk()

def dying_walk(data, a, b):  # in each validator, on its first call: past the file-size check
    sys.stderr.write(f"core limit {resource.getrlimit(resource.RLIMIT_CORE)[0]}\\n")
    sys.stderr.flush()
    if how == "cut":
        os.truncate(src, a - a % 4096)  # the page this call reads first is now wholly past the end: SIGBUS
    else:
        os.kill(os.getpid(), signal.SIGKILL)
    return walk(data, a, b)

validate.c_walk = lambda: dying_walk
try:
    create_sharded_dataset(src, out, num_shards=2)
except InputError as e:
    print("error:", e)
    print("context:", type(e.__context__).__name__)
    sys.exit(3)
print("published")
"""


def test_a_validator_killed_by_its_input_cut_reports_the_change(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    _input(src)
    out = tmp_path / "ds"
    done = _run(_BUILD, str(src), str(out), "cut", cwd=tmp_path)
    assert done.returncode == 3, (done.stdout, done.stderr[-2000:])
    assert "changed while it was read" in done.stdout, done.stdout
    assert "context: BrokenProcessPool" in done.stdout, done.stdout  # a validator did die of the cut
    assert "core limit 0" in done.stderr, done.stderr[-2000:]  # and could leave no core dump
    assert not (out / "master_metadata.json").exists()
    assert not list(tmp_path.glob("core*"))


def test_a_validator_killed_otherwise_fails_the_build_with_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    _input(src)
    out = tmp_path / "ds"
    done = _run(_BUILD, str(src), str(out), "kill", cwd=tmp_path)
    assert done.returncode == 3, (done.stdout, done.stderr[-2000:])
    assert f"a background validator of {src} died before it finished" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (out / "master_metadata.json").exists()


def _validator_with(paths: list[Path], futures: list[Future[Any]]) -> background.BackgroundValidator:
    """A BackgroundValidator over ``paths`` whose shares are ``futures`` (no process started)."""
    bv = background.BackgroundValidator.__new__(background.BackgroundValidator)
    bv._files = open_inputs([str(p) for p in paths])
    bv._stamps = [background._stamp(f) for f in bv._files]
    bv._futures = [(0, f) for f in futures]
    return bv


def test_a_dead_validator_fails_the_build_at_the_next_poll(tmp_path: Path) -> None:
    """``problem()`` is polled after every block: a validator found dead must end the build there, not
    after the whole input was copied."""
    src = tmp_path / "in.jsonl"
    _input(src, lines=10)
    running: Future[Any] = Future()  # another share, still running: the dead one decides
    dead: Future[Any] = Future()
    dead.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    bv = _validator_with([src], [dead, running])
    with pytest.raises(InputError, match="died before it finished"):
        bv.problem()
    fine: Future[Any] = Future()
    fine.set_result((None, 0))
    assert _validator_with([src], [fine, running]).problem() is None
    failed: Future[Any] = Future()  # any other error in a share is result()'s to raise, once all are done
    failed.set_exception(InputError("a corrupt stream"))
    assert _validator_with([src], [failed, running]).problem() is None


def test_a_dead_validator_of_many_inputs_names_a_few(tmp_path: Path) -> None:
    paths = []
    for i in range(50):
        paths.append(tmp_path / f"part-{i:03d}.jsonl")
        _input(paths[-1], lines=2)
    dead: Future[Any] = Future()
    dead.set_exception(BrokenProcessPool("gone"))
    with pytest.raises(InputError) as info:
        _validator_with(paths, [dead]).result()
    message = str(info.value)
    assert "part-000.jsonl" in message
    assert "and 47 more" in message
    assert "part-049" not in message
    assert len(message) < 600, message


@pytest.mark.parametrize("mapped", [True, False])
def test_lines_before_a_huge_line_are_walked_before_its_end_is_sought(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    """A bad line just before a line many steps long is reported from the step that holds it: no step
    reaches past the huge line's start before then (a step used to run to the end of the line holding its
    last byte, so a bad line waited for a gigabyte-long neighbour to be sought through)."""
    monkeypatch.setattr(validate, "_READ", 4096)
    monkeypatch.setattr(validate, "_MAP", mapped)
    good = b"".join(b'{"id":%d}\n' % i for i in range(300))
    huge_start = len(good) + len(b"{bad\n")
    path = tmp_path / "in.jsonl"
    path.write_bytes(good + b"{bad\n" + b'{"t":"' + b"x" * 40 * 4096 + b'"}\n' + b'{"id":1}\n')
    walk = records.c_walk()
    stops: list[int] = []

    def recording(data: Any, i: int, stop: int) -> int:
        stops.append(stop)
        return walk(data, i, stop)

    bad, _ = validate._walk_range(recording, str(path), "in", 0, path.stat().st_size)
    assert bad is not None
    assert bad[0] == len(good)
    assert bad[1][1] == 301  # the line number
    assert stops
    assert max(stops) <= huge_start, (stops, huge_start)
