"""``status --watch`` in a pseudo-terminal against a running job: the grid changes as shards complete,
and the view ends by itself when the job settles (on a directory and on the GCS test server)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from shardclaim import ShardManager
from shardclaim.testing import build_dataset, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """Without escape sequences, and with the terminal's CR LF as LF."""
    return ANSI.sub("", text).replace("\r\n", "\n")


#: A shard's command: waits until the test opens its gate (a file named after the shard).
GATED = """
import os, pathlib, sys, time
gate = pathlib.Path(sys.argv[1]) / os.environ["SHARDCLAIM_SHARD_ID"]
while not gate.exists():
    time.sleep(0.02)
"""


class Terminal:
    """A process on the slave side of a pseudo-terminal of ``cols`` x ``rows``; what it writes is read
    by a thread into :attr:`output`."""

    def __init__(self, argv: list[str], cols: int = 80, rows: int = 24) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the slave side closed (the process ended)
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    @property
    def output(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def frames(self) -> list[list[str]]:
        """Every complete frame drawn so far, as plain lines (the view starts each at the cursor home)."""
        parts = self.output.split("\x1b[H")[1:]
        return [plain(p).rstrip("\n").split("\n") for p in parts[:-1] if plain(p).strip()]

    def close(self) -> None:
        self._reader.join(timeout=10)
        os.close(self._master)


def grid(lines: list[str]) -> str:
    """The grid's cells (one per shard here), or "" for a frame without a grid (an outage notice)."""
    end = next((i for i, text in enumerate(lines) if " completed " in text), 1)
    return "".join(lines[1:end])


def test_the_live_view_follows_a_running_job_and_ends_by_itself(shared_url: str, tmp_path: Path) -> None:
    ds = build_dataset(shared_url, tmp_path, shards=5, records=50)
    gates = tmp_path / "gates"
    gates.mkdir()
    command = [sys.executable, "-c", GATED, str(gates)]
    job = subprocess.Popen(
        [sys.executable, "-m", "shardclaim", "run", ds, "-N", "2", "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    view = Terminal([sys.executable, "-m", "shardclaim", "status", ds, "--watch", "--interval", "0.1"])
    try:
        wait_for(lambda: any(grid(f).count(">") == 2 for f in view.frames()), "a frame with 2 shards running")
        assert all(grid(f).count("#") == 0 for f in view.frames())
        held = [s["shard_id"] for s in ShardManager(ds, "t").get_shard_status() if s["status"] == "in_use"]
        (gates / str(held[0])).touch()
        wait_for(
            lambda: any(grid(f).count("#") == 1 for f in view.frames()), "a frame with 1 shard completed"
        )
        first_done = next(f for f in view.frames() if grid(f).count("#") == 1)
        assert grid(first_done)[held[0]] == "#"
        assert "completed 1" in "\n".join(first_done)
        for shard_id in range(5):
            (gates / str(shard_id)).touch()
        assert view.proc.wait(timeout=120) == 0  # it ended by itself: every shard completed
        assert job.wait(timeout=120) == 0
    finally:
        for proc in (view.proc, job):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        view.close()
    last = plain(view.output.split("\x1b[H")[-1]).strip().split("\n")
    assert grid(last) == "#####"
    assert "succeeded" in last[0]
    frames = view.frames()
    assert all(len(f) <= 23 and max(map(len, f)) <= 80 for f in frames)
    done_counts = [grid(f).count("#") for f in frames]
    assert done_counts == sorted(done_counts)  # the grid only moves forward in this job
    assert view.output.endswith("\x1b[?25h\r\n")  # the cursor is given back
