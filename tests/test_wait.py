"""``shardclaim wait``: exit 0 when every shard completed, 1 when some failed or the job halted, 124 when
the timeout ran out; the loop on an injected clock, the command with real processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardclaim import ShardManager
from shardclaim.cli.wait import TIMED_OUT, wait
from shardclaim.errors import TransientStoreError
from shardclaim.lease import halt
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset


def job(shards: int) -> tuple[FakeClock, ShardManager, HookStore, ShardManager]:
    clock = FakeClock()
    store = memory_dataset(shards, clock=clock)
    counted = HookStore(store)
    worker = ShardManager("memory://w", "w", store=store, max_attempts=1)  # type: ignore[arg-type]
    return clock, worker, counted, ShardManager("memory://w", "waiter", store=counted)  # type: ignore[arg-type]


def settle(worker: ShardManager, *, fail: bool = False) -> None:
    shard = worker.claim_shard()
    assert shard is not None
    if fail:
        worker.mark_failed(shard["shard_id"], "boom")
    else:
        worker.mark_completed(shard["shard_id"])


def test_exit_0_once_every_shard_completed_one_listing_a_look() -> None:
    clock, worker, counted, waiter = job(3)
    counted.count.clear()
    code, snap = wait(
        waiter, timeout=None, interval=5, sleep=lambda s: (clock.sleep(s), settle(worker)), clock=clock
    )
    assert code == 0
    assert snap is not None
    assert snap.summary["state"] == "succeeded"
    assert clock.slept == [5, 5, 5]
    assert dict(counted.count) == {"list": 4, "now": 4}  # four looks, each one listing and the clock


def test_exit_1_when_a_shard_failed() -> None:
    clock, worker, _, waiter = job(2)
    settle(worker, fail=True)
    settle(worker)
    assert wait(waiter, timeout=10, sleep=clock.sleep, clock=clock)[0] == 1


def test_exit_1_when_the_job_halted_and_nothing_runs() -> None:
    clock, worker, _, waiter = job(4)
    settle(worker, fail=True)
    halt.trip(worker.store, [0], 1, "w")
    assert wait(waiter, timeout=10, sleep=clock.sleep, clock=clock)[0] == 1


def test_exit_124_at_the_timeout_never_sleeping_past_it() -> None:
    clock, _, counted, waiter = job(2)
    counted.count.clear()
    code, snap = wait(waiter, timeout=12, interval=5, sleep=clock.sleep, clock=clock)
    assert code == TIMED_OUT == 124
    assert clock.slept == [5, 5, 2]  # the last sleep ends at the deadline, where one more look is made
    assert counted.count["list"] == 4
    assert snap is not None
    assert snap.summary["state"] == "partial"


def test_an_unreachable_store_is_retried_until_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    clock, worker, counted, waiter = job(2)
    counted.before("list", TransientStoreError("list", "HTTP 503"), times=2)
    code, _ = wait(
        waiter, timeout=60, interval=5, sleep=lambda s: (clock.sleep(s), settle(worker)), clock=clock
    )
    assert code == 0
    assert capsys.readouterr().err.count("store unreachable") == 1  # said once, not at every look
    counted.before("list", TransientStoreError("list", "HTTP 503"), times=100)
    assert wait(waiter, timeout=12, interval=5, sleep=clock.sleep, clock=clock) == (TIMED_OUT, None)


def shardclaim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardclaim", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_command_exits_0_1_and_124_on_a_real_job(shared_url: str, tmp_path: Path) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=4, records=40)
    timed_out = shardclaim("wait", ds, "--timeout", "0.3", "--interval", "0.1")
    assert timed_out.returncode == 124, timed_out.stderr
    assert "timed out after 0.3 s" in timed_out.stderr
    assert "available: 0-3" in timed_out.stderr
    waiter = subprocess.Popen([sys.executable, "-m", "shardclaim", "wait", ds, "--interval", "0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    fail_shard_2 = 'test "$SHARDCLAIM_SHARD_ID" != 2 || { echo "bad input in 2" >&2; exit 3; }'
    run = shardclaim("run", ds, "-N", "2", "--max-attempts", "1", "--", "sh", "-c", fail_shard_2)
    assert run.returncode == 1, run.stderr
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 1, err
    assert "failed: 4 shards (3 completed, 1 failed)" in out
    assert "  failed: 2\n" in out
    piped = shardclaim("status", ds, "--watch", "--interval", "0.1")  # not a terminal: a line a refresh
    assert piped.returncode == 1, piped.stderr
    assert piped.stdout.count("\n") == 1
    assert piped.stdout.endswith("failed: 3/4 completed, 1 failed; records 30/40; failed: 2\n")
    reset = shardclaim("reset", ds, "--failed")
    assert reset.returncode == 0, reset.stderr
    assert shardclaim("run", ds, "--", "true").returncode == 0
    done = shardclaim("wait", ds, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "  completed: 0-3\n" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["wait", "DS", "--timeout", "-1"],
        ["wait", "DS", "--timeout", "soon"],
        ["wait", "DS", "--interval", "0"],
        ["status", "DS", "--watch", "--json"],
        ["status", "DS", "--watch", "--interval", "nan"],
        ["report", "DS"],
        ["report", "DS", "--html", "r.html", "--workers", "0"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = shardclaim(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_options_take_both_spellings_and_help_shows_defaults(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    assert shardclaim("wait", ds, "--timeout", "0.2", "--interval", "0.1").returncode == 124
    assert shardclaim("report", ds, "--html", str(tmp_path / "a.html"), "--workers", "2").returncode == 0
    assert shardclaim("report", ds, "--html", str(tmp_path / "b.html"), "--workers=2").returncode == 0
    for command, default in (("wait", r"\(default: 5(\.0)?\)"), ("report", r"\(default: 16\)"),
                             ("status", r"\(default: 2(\.0)?\)")):  # fmt: skip
        assert re.search(default, shardclaim(command, "--help").stdout)
    assert "(default: never)" in shardclaim("wait", "--help").stdout
    assert "one list request per 1,000 shards" in " ".join(shardclaim("status", "--help").stdout.split())
    assert "N + 5 requests" in " ".join(shardclaim("report", "--help").stdout.split())
