"""``status --watch``: what each refresh costs, what a frame shows, and that the view ends by itself
(the loop with an injected clock; the live terminal is tests/test_watch_terminal.py)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardclaim import ShardManager
from shardclaim.cli.watch import watch
from shardclaim.errors import TransientStoreError
from shardclaim.lease import halt
from shardclaim.testing import FakeClock, HookStore, build_dataset, memory_dataset
from shardclaim.view.follow import Follower, RateWindow
from shardclaim.view.frame import cell_states, frame, line

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Job:
    """N shards in a memory store on a fake clock: a worker that moves them, a watcher that counts."""

    def __init__(self, shards: int, **kw: object) -> None:
        self.clock = FakeClock()
        self.store = memory_dataset(shards, clock=self.clock)
        self.worker = ShardManager("memory://j", "w1", store=self.store, lease_seconds=60, **kw)  # type: ignore[arg-type]
        self.counted = HookStore(self.store)
        self.watcher = ShardManager("memory://j", "watcher", store=self.counted)  # type: ignore[arg-type]

    def complete(self, n: int) -> list[int]:
        done = []
        for _ in range(n):
            shard = self.worker.claim_shard()
            assert shard is not None
            self.worker.mark_completed(shard["shard_id"])
            done.append(shard["shard_id"])
        return done

    def fail(self, error: str) -> int:
        shard = self.worker.claim_shard()
        assert shard is not None
        self.worker.mark_failed(shard["shard_id"], error)
        return shard["shard_id"]


def grid_of(lines: list[str]) -> list[str]:
    """The grid rows of a frame: between the header and the legend."""
    end = next(i for i, text in enumerate(lines) if " completed " in text)
    return lines[1:end]


def test_a_frame_of_10000_shards_fits_80x24_from_one_listing() -> None:
    job = Job(10_000, max_attempts=1)
    job.complete(600)
    failed = [job.fail(f"ValueError: bad record {i}\nmore") for i in range(3)]
    follower = Follower(job.watcher)
    job.counted.count.clear()
    look = follower.look()
    # One listing and the store's clock, plus the first read of each failure the view names.
    assert dict(job.counted.count) == {"list": 1, "now": 1, "read": 3}
    job.counted.count.clear()
    look = follower.look()
    assert dict(job.counted.count) == {"list": 1, "now": 1}  # failures already named are not read again
    lines = frame(look, 80, 24)
    assert len(lines) <= 23
    assert max(len(text) for text in lines) <= 80
    grid = grid_of(lines)
    per_cell = int(re.search(r"1 cell = ([\d,]+) shards", "\n".join(lines))[1])  # type: ignore[index]
    assert sum(len(row) for row in grid) == math.ceil(10_000 / per_cell)
    assert sum(row.count("X") for row in grid) == len({i // per_cell for i in failed})
    text = "\n".join(lines)
    assert "completed 600" in text
    assert "failed: " + ",".join(str(i) for i in sorted(failed)) in text
    assert "ValueError: bad record 0" in text
    assert "records 6,000/100,000" in text


def test_each_shard_gets_a_cell_while_they_fit() -> None:
    job = Job(8)
    done = job.complete(3)
    lines = frame(Follower(job.watcher).look(), 80, 24)
    assert grid_of(lines) == ["".join("#" if i in done else "." for i in range(8))]
    assert "1 cell =" not in "\n".join(lines)


def test_a_cell_for_several_shards_shows_the_most_urgent_of_them() -> None:
    c, a, r, f = "completed", "available", "in_use", "failed"
    states = [c, c, a, c, r, f, c, c]
    assert cell_states(states, 2) == [c, a, f, c]  # type: ignore[arg-type]
    assert cell_states(states, 4) == [a, f]  # type: ignore[arg-type]
    assert cell_states(states, 8) == [f]  # type: ignore[arg-type]


def test_rate_and_eta_come_from_a_sliding_window_of_store_time() -> None:
    job = Job(100)
    follower = Follower(job.watcher, window_seconds=60)
    assert follower.look().rates is None  # one look: no rate yet
    for _ in range(6):  # 2 shards (20 records) every 10 s
        job.clock.advance(10)
        job.complete(2)
        look = follower.look()
    assert look.rates == pytest.approx((2.0, 0.2))
    assert look.eta_s == pytest.approx((1000 - 120) / 2.0)
    for _ in range(6):  # faster now: 10 shards every 10 s; after a window the old pace is forgotten
        job.clock.advance(10)
        job.complete(10)
        look = follower.look()
    assert look.rates == pytest.approx((10.0, 1.0))
    assert look.window_s == 60


def test_a_reset_starts_the_rate_window_again() -> None:
    window = RateWindow(60)
    window.add(0, 0, 0)
    window.add(10, 100, 10)
    window.add(20, 50, 5)  # an operator reset shards: progress went back
    assert window.rates() is None
    window.add(30, 150, 15)
    assert window.rates() == pytest.approx((10.0, 1.0))
    with pytest.raises(ValueError, match="seconds must be positive"):
        RateWindow(0)


def test_slowest_running_shards_name_their_holder_and_heartbeat_age() -> None:
    job = Job(6)
    first = job.worker.claim_shard()
    job.clock.advance(30)
    second = job.worker.claim_shard()
    assert first is not None
    assert second is not None
    follower = Follower(job.watcher)
    look = follower.look()
    assert [(r.shard_id, r.holder, r.heartbeat_age_s) for r in look.slowest] == [
        (first["shard_id"], "w1", 30.0),
        (second["shard_id"], "w1", 0.0),
    ]
    job.clock.advance(45)
    job.worker.heartbeat(second["shard_id"])
    job.clock.advance(1)
    look = follower.look()
    assert [(r.seen_running_s, r.expired) for r in look.slowest] == [(46.0, True), (46.0, False)]
    text = "\n".join(frame(look, 80, 24))
    assert f"{first['shard_id']} w1  heartbeat 1m16s ago  running >= 46s  EXPIRED" in text
    assert f"expired: {first['shard_id']}" in text
    assert "! expired 1" in text


def test_the_halt_is_shown_above_the_grid() -> None:
    job = Job(6, max_attempts=1)
    failed = [job.fail("boom") for _ in range(2)]
    halt.trip(job.store, failed, 2, "w1")
    look = Follower(job.watcher).look()
    lines = frame(look, 100, 24)
    assert lines[1].startswith("HALTED: 2 shards failed (limit 2)")
    assert look.snapshot.settled  # nothing runs: a halted job is over
    assert "halted" in line(look)


def run_watch(job: Job, step: object, *, tty: bool = False) -> tuple[int, str, list[float]]:
    out = io.StringIO()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        job.clock.advance(seconds)
        step()  # type: ignore[operator]

    code = watch(
        job.watcher, out, interval=2.0, tty=tty, size=lambda: os.terminal_size((80, 24)), sleep=sleep
    )
    return code, out.getvalue(), slept


def test_the_view_ends_by_itself_when_every_shard_completed() -> None:
    job = Job(5)
    code, out, slept = run_watch(job, lambda: job.complete(1))
    lines = out.splitlines()
    assert code == 0
    assert slept == [2.0] * 5
    assert len(lines) == 6  # a line per refresh when the output is not a terminal
    assert [re.search(r"(\d+)/5 completed", text)[1] for text in lines] == ["0", "1", "2", "3", "4", "5"]  # type: ignore[index]
    assert "succeeded" in lines[-1]


def test_the_view_exits_1_when_a_shard_failed() -> None:
    job = Job(3, max_attempts=1)
    steps = iter([lambda: job.fail("Traceback (most recent call last):\n  File x\nKeyError: 'id'"),
                  lambda: job.complete(2)])  # fmt: skip
    code, out, _ = run_watch(job, lambda: next(steps)(), tty=True)  # noqa: PLW0108 (next step each sleep)
    assert code == 1
    frames = [ANSI.sub("", f) for f in out.split("\x1b[H") if ANSI.sub("", f).strip()]
    assert len(frames) == 3
    assert "KeyError: 'id'" in frames[-1]  # a traceback is named by its last line
    assert "failed" in frames[-1].splitlines()[0]
    assert out.endswith("\x1b[?25h\n")  # the cursor is given back


def test_a_store_outage_is_shown_and_the_view_goes_on() -> None:
    job = Job(2)
    job.counted.before("list", TransientStoreError("list", "HTTP 503"))
    code, out, _ = run_watch(job, lambda: job.complete(1))
    assert code == 0
    assert "store unreachable" in out.splitlines()[0]


def test_status_prints_the_shards_in_each_state_as_compact_ranges(tmp_path: Path) -> None:
    ds = build_dataset(str(tmp_path / "ds"), tmp_path, shards=8, records=40)
    m = ShardManager(ds, "w", max_attempts=1)
    for shard_id in (0, 1, 2, 4):
        assert m.claim_shard(shard_id) is not None
        m.mark_completed(shard_id)
    assert m.claim_shard(6) is not None
    m.mark_failed(6, "boom")
    out = subprocess.run([sys.executable, "-m", "shardclaim", "status", ds], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "  completed: 0-2,4\n" in out.stdout
    assert "  available: 3,5,7\n" in out.stdout
    assert "  failed: 6\n" in out.stdout
    m.close()


def test_escape_sequences_in_an_error_are_drawn_as_text_not_sent_to_the_terminal() -> None:
    job = Job(3, max_attempts=1)
    job.fail("\x1b[31mERROR\x1b[0m: boom\x07\x1b]0;pwned\x07 \x1b[2J")
    lines = frame(Follower(job.watcher).look(), 80, 24, color=False)
    assert not any("\x1b" in text or "\x07" in text for text in lines)
    assert any(text.rstrip().endswith(": ERROR: boom?") for text in lines)
    colored = "\n".join(frame(Follower(job.watcher).look(), 80, 24, color=True))
    assert "\x1b[2J" not in colored
    assert "pwned" not in colored


def test_a_split_shard_that_failed_is_named_by_its_failed_range_s_error() -> None:
    clock = FakeClock()
    store = memory_dataset(2, clock=clock, chunks_per_shard=4)
    key = "shard_001/metadata.json"
    obj = store.read(key)
    parts = [
        {"start": 0, "end": 2, "status": "completed", "resume_chunk": 2, "attempt": 1},
        {"start": 2, "end": 4, "status": "failed", "attempt": 1, "failures": 1,
         "last_error": "Traceback (most recent call last):\n  File x\nKeyError: 'text'"},
    ]  # fmt: skip
    split = {**json.loads(obj.data), "status": "failed", "failures": 1, "ranges": parts}
    store.write(key, json.dumps(split).encode(), if_generation_match=obj.generation,
                metadata={"status": "failed", "failures": "1"})  # fmt: skip
    look = Follower(ShardManager("memory://s", "watcher", store=store)).look()
    assert [(f.shard_id, f.error) for f in look.failures] == [(1, "KeyError: 'text'")]
