"""The Python worker loop and `run` cannot hang or leak (issue 11, point 8)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shardclaim import Preempted, ShardclaimError, ShardManager
from shardclaim.testing import FakeClock, build_dataset, memory_dataset, process_gone, wait_for


def test_a_claim_left_unsettled_is_released_and_the_mistake_named() -> None:
    m = ShardManager("memory://loop", "w", store=memory_dataset(3, clock=FakeClock()))
    with pytest.raises(ShardclaimError, match="with claim:"):
        for _claim in m.claims(handle_sigterm=False):
            pass  # forgot `with claim:`
    assert m.held_shards() == []
    assert {s["status"] for s in m.get_shard_status()} == {"available"}
    m.close()


def test_a_claim_settled_by_the_seed_calls_is_fine() -> None:
    m = ShardManager("memory://loop", "w", store=memory_dataset(3, clock=FakeClock()))
    for claim in m.claims(handle_sigterm=False):
        m.mark_completed(claim.shard_id)
    assert {s["status"] for s in m.get_shard_status()} == {"completed"}
    m.close()


def test_leaving_the_manager_through_an_exception_releases_what_it_holds() -> None:
    store = memory_dataset(3, clock=FakeClock())

    def work() -> None:
        with ShardManager("memory://loop", "w", store=store) as m:
            m.claim_shard()
            m.claim_shard()
            raise RuntimeError("the model failed to load")

    with pytest.raises(RuntimeError):
        work()
    observer = ShardManager("memory://loop", "o", store=store)
    assert {s["status"] for s in observer.get_shard_status()} == {"available"}
    assert {s["attempt"] for s in observer.get_shard_status()} == {0, 1}  # released, no attempt spent
    assert all(s["failures"] == 0 for s in observer.get_shard_status())


def test_preempted_is_a_clean_exit_with_143() -> None:
    assert isinstance(Preempted(15), SystemExit)
    assert Preempted(15).code == 143
    assert not isinstance(Preempted(15), Exception)


def test_sigterm_in_a_python_worker_loop_exits_143_without_a_traceback(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, time
        from shardclaim import ShardManager
        with ShardManager({ds!r}, "w") as m:
            for claim in m.claims():
                with claim:
                    pathlib.Path({str(tmp_path / "working")!r}).write_text("yes")
                    time.sleep(300)
        """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    wait_for((tmp_path / "working").exists, "the worker to hold a shard")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "Traceback" not in err
    assert {s["status"] for s in ShardManager(ds, "o").get_shard_status()} == {"available"}


def test_sigkill_of_run_ends_its_workers_and_their_commands(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=2, records=4)
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = f'echo $$ > "{pids}/$SHARDCLAIM_SHARD_ID"; exec sleep 300'
    run = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "-N", "2", "--", "sh", "-c", cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: len(list(pids.iterdir())) == 2, "both workers to run a command")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    commands = [int(f.read_text()) for f in pids.iterdir()]
    wait_for(lambda: all(process_gone(pid) for pid in commands), "the orphaned commands to be stopped")
    observer = ShardManager(ds, "o")
    wait_for(
        lambda: {s["status"] for s in observer.get_shard_status()} == {"available"}, "the shards' release"
    )


def test_a_python_loop_that_fails_every_shard_stops_after_three_in_a_row() -> None:
    store = memory_dataset(6, clock=FakeClock())
    m = ShardManager("memory://loop", "w", store=store, max_attempts=10)
    seen = []

    def buggy_loop() -> None:
        for claim in m.claims(handle_sigterm=False):
            with claim:
                seen.append(claim.shard_id)
                undefined_name  # type: ignore[name-defined]  # noqa: B018, F821

    with pytest.raises(ShardclaimError, match=r"failed 3 shards in a row.*NameError"):
        buggy_loop()
    assert len(set(seen)) == 3  # three distinct shards (one shard's retries count once)
    assert sum(s["failures"] for s in m.get_shard_status()) == len(seen)
    m.close()


def test_one_bad_shard_s_retries_do_not_count_as_shards_in_a_row() -> None:
    store = memory_dataset(4, clock=FakeClock())
    m = ShardManager("memory://loop", "w", store=store, max_attempts=5)
    for claim in m.claims(handle_sigterm=False):
        with claim:
            if claim.shard_id == 0:
                raise RuntimeError("this shard's data is bad")
    statuses = {s["shard_id"]: s["status"] for s in m.get_shard_status()}
    assert statuses == {0: "failed", 1: "completed", 2: "completed", 3: "completed"}
    m.close()


def test_a_worker_whose_run_is_already_gone_ends_at_once() -> None:
    # The parent given is not this process's parent: as if `run` died during the worker's start-up.
    code = "from shardclaim.run import _die_with_parent; import time; _die_with_parent(1); time.sleep(60)"
    proc = subprocess.run([sys.executable, "-c", code], timeout=120, check=False)
    assert proc.returncode == -signal.SIGTERM


def test_sigterm_to_run_stops_its_finalizer_too(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=1, records=2)
    pidfile = tmp_path / "finalizer.pid"
    run = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "--on-complete", f'echo $$ > "{pidfile}"; sleep 300',
         "--", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(pidfile.exists, "the finalizer to start")
        finalizer = int(pidfile.read_text())
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 143
    finally:
        if run.poll() is None:
            run.kill()

    wait_for(lambda: process_gone(finalizer, group=True), "the finalizer's process group to be stopped")
