"""`run`'s progress line: measured over a sliding window, counting checkpointed records, never mixed
with the output of the workers and their commands (real processes on a real pseudo-terminal), and
refreshed at a fixed cadence however many workers exit at once."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shardclaim.console import CLEAR, Progress
from shardclaim.run import _PROGRESS_SECONDS, _Display
from shardclaim.testing import FakeClock, build_dataset


def screen(raw: bytes) -> list[str]:
    """The lines a terminal shows for ``raw``: ``\\r`` returns to the line's start (later text overwrites
    it), ``\\r`` + erase-line clears it, ``\\n`` (or a pty's ``\\r\\n``) ends it."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    clear = CLEAR.decode()
    i = 0
    while i < len(text):
        if text.startswith(clear, i):
            cur, col = [], 0
            i += len(clear)
            continue
        c = text[i]
        if c == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        elif c == "\r":
            col = 0
        else:
            if col < len(cur):
                cur[col] = c
            else:
                cur.append(c)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur))
    return lines


def test_the_screen_model_shows_what_a_terminal_would() -> None:
    assert screen(b"progress 1%\r\x1b[Kline\nprogress 2%") == ["line", "progress 2%"]
    assert screen(b"progress 1%, ETA 3s\rline\r\n") == ["lineress 1%, ETA 3s"]  # the old collision


def read_pty(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> bytes:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal; everything it showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd, env={**os.environ, **(env or {})}
    )
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(timeout=300) == 0, out.decode("utf-8", "replace")[-3000:]
    return bytes(out)


WRITERS = textwrap.dedent(
    """
    import multiprocessing as mp, sys
    from shardclaim.console import SharedLine

    def child(line, n):
        sys.stderr = line.text_stream(sys.__stderr__.buffer)
        sys.stdout = line.text_stream(sys.__stdout__.buffer)
        for i in range(200):
            print(f"writer {n} line {i} " + "x" * (i % 50), file=sys.stderr if i % 2 else sys.stdout)

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        line = SharedLine(ctx)
        procs = [ctx.Process(target=child, args=(line, n)) for n in range(4)]
        for p in procs:
            p.start()
        k = 0
        while any(p.is_alive() for p in procs):
            k += 1
            line.draw(f"progress {k}: 3/9 shards done, 4 running, ETA {k}s")
            line.redraw()
        for p in procs:
            p.join()
        line.draw("progress done", final=True)
    """
)


def test_lines_of_four_processes_never_mix_with_the_progress_line(tmp_path: Path) -> None:
    script = tmp_path / "writers.py"
    script.write_text(WRITERS)
    shown = screen(read_pty([sys.executable, str(script)]))
    assert shown[-1] == "progress done"
    body = shown[:-1]
    expected = {f"writer {n} line {i} " + "x" * (i % 50) for n in range(4) for i in range(200)}
    assert [line for line in body if line not in expected] == []  # no progress text, nothing torn
    assert sorted(body) == sorted(expected)  # and every line shown once


def test_the_rate_follows_a_sliding_window_and_the_eta_comes_from_it() -> None:
    clock = FakeClock()
    progress = Progress(1000, window=30.0, clock=clock)
    agg = {"counts": {"in_use": 2}, "shards": 4, "records_done": 0}
    assert progress.text(agg).endswith("0/1000 records, 0/s, ETA -")
    for _ in range(10):  # 10 records/s for 100 s
        clock.now += 10
        agg["records_done"] += 100
        text = progress.text(agg)
    assert text.endswith("1000/1000 records, 10/s, ETA 0s")
    progress = Progress(100_000, window=30.0, clock=clock)
    done = 0
    for step in range(20):  # 100/s for 100 s, then 10/s: the rate follows within the window
        clock.now += 10
        done += 1000 if step < 10 else 100
        text = progress.text({**agg, "records_done": done})
    assert "10/s" in text
    assert text.endswith("11000/100000 records, 10/s, ETA 2h28m")  # 89,000 left at 10/s


class _Screen:
    def __init__(self) -> None:
        self.drawn: list[str] = []
        self.redraws = 0

    def draw(self, text: str, *, final: bool = False) -> bool:
        self.drawn.append(text)
        return True

    def redraw(self) -> None:
        self.redraws += 1


def test_the_line_is_refreshed_at_a_fixed_cadence_not_once_per_exiting_worker(tmp_path: Path) -> None:
    """Eight workers exiting within one refresh interval make one listing, not eight."""
    from shardclaim.manager import ShardManager

    class Counting(ShardManager):
        listings = 0

        def get_shard_status(self) -> Any:
            Counting.listings += 1
            return super().get_shard_status()

    clock = FakeClock()
    ds = build_dataset(str(tmp_path / "ds"), tmp_path)
    display = _Display(Counting(ds, "run"), _Screen(), clock=clock)  # type: ignore[arg-type]
    display.tick()
    for _ in range(8):  # the parent wakes up once per exiting worker
        clock.now += _PROGRESS_SECONDS / 10
        display.tick()
    assert Counting.listings == 1
    clock.now += _PROGRESS_SECONDS
    display.tick()
    assert Counting.listings == 2
    assert display.screen.redraws == 8  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [1, 3])
def test_run_keeps_its_progress_line_apart_from_the_commands_output(tmp_path: Path, workers: int) -> None:
    """Output over a few seconds, so that refreshes of the line fall between the command's lines (the
    previous line drawing wrote ``\r`` + text and the next output line landed on top of it)."""
    ds = build_dataset(str(tmp_path / "ds"), tmp_path)
    cmd = (
        'for i in $(seq 1 12); do echo "out $SHARDCLAIM_SHARD_ID $i"; '
        'echo "err $SHARDCLAIM_SHARD_ID $i" >&2; sleep 0.1; done'
    )
    shown = screen(
        read_pty(
            [
                sys.executable,
                "-m",
                "shardclaim",
                "run",
                ds,
                "-N",
                str(workers),
                "--progress",
                "--",
                "sh",
                "-c",
                cmd,
            ]
        )
    )
    progress = [line for line in shown if "shards done" in line]
    output = [line for line in shown if "shards done" not in line]
    tag = r"\[shard \d+\] " if workers > 1 else ""
    pattern = re.compile(rf"{tag}(out|err) \d+ \d+")
    command_lines = [line for line in output if pattern.fullmatch(line)]
    assert len(command_lines) == 8 * 12 * 2
    leftovers = [line for line in output if not pattern.fullmatch(line) and not line.startswith("succeeded")]
    assert leftovers == []  # nothing torn, no progress text inside a command's line
    assert progress[-1].startswith("8/8 shards done, 0 running, 0 failed; 80/80 records")
    assert all("ETA" in line for line in progress)
