"""One attempt of a command on one claimed shard: its environment, its process group, its stderr (passed
through, its tail kept), its checkpoints recorded, its timeout, and how the shard is settled after it.

A command that cannot start on this machine (not found, not executable: exit 126/127) is a worker
fault, not the shard's: the shard is released without spending an attempt.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from shardclaim.attempt_log import AttemptLog, log_key
from shardclaim.errors import LeaseLostError
from shardclaim.locations import readable_chunks
from shardclaim.manager import ShardManager

__all__ = ["GRACE_SECONDS", "kill_group", "run_attempt", "shard_environment", "stop"]

#: Releases for "cannot start" a shard takes before the next one counts as its failure.
CANNOT_START_LIMIT = 3
_TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024
_DRAIN_SECONDS = 1.0
GRACE_SECONDS = 30.0
_CHECKPOINT_POLL = 0.2


def shard_environment(shard: dict[str, Any], dataset: str, worker_id: str) -> dict[str, str]:
    """The variables CMD gets for one claimed shard, or part of one (``range``: then only its chunks,
    the resume point and checkpoints counted from its first, and ``SHARDCLAIM_CHUNK_RANGE`` =
    ``start-end`` in the shard's numbering, end excluded)."""
    start, end = shard.get("range") or (0, len(shard["chunks"]))
    chunks = readable_chunks(shard)[start:end]
    return {
        "SHARDCLAIM_SHARD_ID": str(shard["shard_id"]),
        "SHARDCLAIM_TOTAL_SHARDS": str(shard["total_shards"]),
        "SHARDCLAIM_CHUNKS": "\n".join(chunks),
        "SHARDCLAIM_CHUNKS_JSON": orjson.dumps(chunks).decode(),
        "SHARDCLAIM_CHUNK_RANGE": f"{start}-{end}",
        "SHARDCLAIM_DATASET": dataset,
        "SHARDCLAIM_ATTEMPT": str(shard["attempt"]),
        "SHARDCLAIM_WORKER_ID": worker_id,
        "SHARDCLAIM_RESUME_CHUNK": str(max(0, int(shard.get("resume_chunk") or 0) - start)),
        "VELDA_SHARD_ID": str(shard["shard_id"]),
        "VELDA_TOTAL_SHARDS": str(shard["total_shards"]),
    }


class _Pump:
    """Passes one of CMD's streams through (to ``out``, tagged ``[shard N]`` when ``tag``), into the
    attempt's log, and keeps its tail, without outliving CMD.

    A background process that CMD started may hold the pipe open long after CMD exited (``sleep 30 &``,
    a daemon): the attempt ends with CMD, so once CMD has exited the pump only drains what is already
    there (for at most ``_DRAIN_SECONDS``) and stops.
    """

    def __init__(self, stream: IO[bytes], out: IO[bytes], record: AttemptLog, tag: bytes = b"") -> None:
        self._fd = stream.fileno()
        self._out = out
        self._record = record
        self._tag = tag
        self._partial = b""  # an incomplete last line, held back so streams interleave by whole lines
        self._tail = bytearray()
        self.finished = threading.Event()  # set by the caller once CMD has exited
        self._thread = threading.Thread(target=self._run, name="shardclaim-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        drain_until: float | None = None
        while True:
            if drain_until is None and self.finished.is_set():
                drain_until = time.monotonic() + _DRAIN_SECONDS
            if drain_until is not None and time.monotonic() >= drain_until:
                return
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                if drain_until is not None:
                    return  # CMD is gone and nothing more is waiting
                continue
            try:
                data = os.read(self._fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            data, self._partial = self._partial + data, b""
            if not data.endswith(b"\n") and len(data) < _TAIL_BYTES:  # a huge line goes out as it is
                data, _, self._partial = data.rpartition(b"\n")
                data += b"\n" if data else b""
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._record.write(data)
        with contextlib.suppress(OSError):
            self._out.write(self._tagged(data))
            self._out.flush()
        self._tail += data
        del self._tail[:-_TAIL_BYTES]

    def _tagged(self, data: bytes) -> bytes:
        if not self._tag:
            return data
        return b"".join(self._tag + line for line in data.splitlines(keepends=True))

    def tail(self) -> str:
        """The last lines CMD wrote to stderr (after :meth:`join`)."""
        lines = self._tail.decode("utf-8", "replace").splitlines(keepends=True)
        return "".join(lines[-_TAIL_LINES:])

    def join(self) -> None:
        self.finished.set()
        self._thread.join()
        partial, self._partial = self._partial, b""
        self._emit(partial)  # a last line without its newline


#: Exit statuses of a shell for a command it could not run: found but not executable, not found.
_CANNOT_RUN = (126, 127)


def run_attempt(
    m: ShardManager,
    claim: Any,
    *,
    dataset: str,
    command: list[str],
    worker_id: str,
    timeout: float | None,
    running: list[subprocess.Popen[bytes]],
    tag: bool = False,
    per_chunk: bool = False,
) -> str:
    """Run CMD on one claimed shard (or part of one) and settle it; the outcome: ``completed``,
    ``failed``, ``lost`` or ``cannot start`` (a worker fault, not the shard's: the shard is released
    without spending an attempt). ``per_chunk``: CMD runs once per chunk, each run a reservation of its
    chunk, so that an idle worker may take the chunks not started yet (:mod:`shardclaim.stealing`)."""
    first = int((claim.shard.get("range") or [0])[0])
    record = AttemptLog(m.store, log_key(claim.shard_id, m.num_shards, int(claim.shard["attempt"]), first))
    label = f"[shard {claim.shard_id}] ".encode() if tag else b""
    invoke = functools.partial(
        _invoke, m, claim, dataset=dataset, command=command, worker_id=worker_id, timeout=timeout,
        running=running, record=record, label=label,
    )  # fmt: skip
    try:
        code, tail = _each_chunk(m, claim, invoke) if per_chunk else invoke(claim.shard)
        if code == _NOT_STARTED:
            return _cannot_start(m, claim, tail)
        if code in _CANNOT_RUN:
            why = "not executable" if code == 126 else "not found"
            last = tail.strip().splitlines()
            detail = f"; it said: {last[-1]}" if last else ""
            return _cannot_start(m, claim, f"{command[0]!r} exited {code} ({why}){detail}")
        if code == 0:
            m.mark_completed(claim.shard_id)
            return "completed"
        error = f"timed out after {timeout:g} s" if code == _TIMED_OUT else f"{command[0]} exited with {code}"
        m.mark_failed(claim.shard_id, error + "\n" + tail)
    except LeaseLostError as e:
        print(f"shardclaim run: {e}; the result is not committed", file=sys.stderr)
        return "lost"
    finally:
        record.close()
    return "failed"


def _each_chunk(
    m: ShardManager, claim: Any, invoke: Callable[[dict[str, Any]], tuple[int, str]]
) -> tuple[int, str]:
    """``--per-chunk``: reserve the next chunk, run CMD on it alone, and so on until the claim's range
    (which a split may shorten) has no chunk left; the first failing run ends the attempt."""
    cursor = claim.resume_chunk
    while True:  # each successful run is a checkpoint: a later holder resumes after its chunk
        reserved, _ = m.reserve(claim.shard_id, cursor, 1, done=True)
        if reserved <= cursor:
            return 0, ""
        code, tail = invoke({**claim.shard, "range": [cursor, reserved], "resume_chunk": cursor})
        if code != 0:
            return code, tail
        cursor = reserved


def _invoke(
    m: ShardManager, claim: Any, shard: dict[str, Any], *, dataset: str, command: list[str], worker_id: str,
    timeout: float | None, running: list[subprocess.Popen[bytes]], record: AttemptLog, label: bytes,
) -> tuple[int, str]:  # fmt: skip
    """One run of CMD on ``shard`` (the claim, or one chunk of it); its exit code and stderr's tail."""
    env = {**os.environ, **shard_environment(shard, dataset, worker_id)}
    scratch = Path(tempfile.mkdtemp(prefix="shardclaim-"))
    progress = scratch / "checkpoint"
    env["SHARDCLAIM_CHECKPOINT_FILE"] = str(progress)
    offset, limit = (int(x) for x in shard.get("range") or (0, len(shard["chunks"])))
    try:
        try:
            # Its own process group: stopping the attempt stops everything the command started.
            proc = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
            )
        except OSError as e:
            return _NOT_STARTED, f"cannot start {command[0]!r}: {e.strerror or e}"
        running.append(proc)
        assert proc.stdout is not None
        assert proc.stderr is not None
        out_pump = _Pump(proc.stdout, sys.stdout.buffer, record, label)
        pump = _Pump(proc.stderr, sys.stderr.buffer, record, label)
        try:
            resume = int(shard.get("resume_chunk") or 0)
            code = _wait_and_checkpoint(
                proc, progress, m, claim.shard_id, resume, offset=offset, limit=limit, timeout=timeout
            )
        finally:
            out_pump.join()
            pump.join()
            proc.stdout.close()
            proc.stderr.close()
        running.remove(proc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return code, pump.tail()


def _cannot_start(m: ShardManager, claim: Any, reason: str) -> str:
    """The command cannot run on this machine: give the shard back without spending an attempt, and say
    why once. A shard given back so ``CANNOT_START_LIMIT`` times already (a command that exits 126/127
    on this shard's data alone, under a supervisor that restarts ``run``) fails the attempt instead."""
    times = int(claim.shard.get("cannot_start") or 0)
    try:
        if times >= CANNOT_START_LIMIT:
            m.mark_failed(claim.shard_id, f"{reason}; the shard could not start {times + 1} times in a row")
            print(f"shardclaim run: {reason}, on shard {claim.shard_id} {times + 1} times: counted as its "
                  "failure", file=sys.stderr)  # fmt: skip
            return "failed"
        m.release_shard(claim.shard_id, cannot_start=True)
    except LeaseLostError:
        pass
    print(f"shardclaim run: {reason}; no attempt spent, this worker stops", file=sys.stderr)
    return "cannot start"


#: What _wait_and_checkpoint returns for a command it stopped at its timeout.
_TIMED_OUT = -1000
#: What _invoke returns for a command that could not be started at all (its tail says why).
_NOT_STARTED = -1001


def _wait_and_checkpoint(
    proc: subprocess.Popen[bytes], progress: Path, m: ShardManager, shard_id: int, done: int, *,
    offset: int = 0, limit: int | None = None, timeout: float | None = None,
) -> int:  # fmt: skip
    """Wait for CMD; whenever it writes a larger chunk count into its checkpoint file (counted from the
    first chunk it was given, ``offset``), record it. Past ``timeout`` seconds, stop it (SIGTERM, SIGKILL
    after the grace period) and return ``_TIMED_OUT``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    refused = False
    while True:
        try:
            return proc.wait(timeout=_CHECKPOINT_POLL)
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            stop(proc)
            return _TIMED_OUT
        try:
            value = offset + int(progress.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if limit is not None and value > limit:  # past the chunks CMD was given: not its to say
            if not refused:
                print(f"shardclaim run: checkpoint {value - offset} is past the {limit - offset} chunks "
                      "given; not recorded", file=sys.stderr)  # fmt: skip
            refused = True
            continue
        if value > done:
            try:
                m.checkpoint(shard_id, value)
                done = value
            except LeaseLostError as e:
                # Said once: the completion will be refused too; no point re-reading every poll.
                print(f"shardclaim run: {e}; progress is no longer recorded", file=sys.stderr)
                done = sys.maxsize
            except ValueError as e:  # past the shard's chunks: recording it would skip unprocessed work
                print(f"shardclaim run: checkpoint file says {value}: {e}; not recorded", file=sys.stderr)
                done = value


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, SIGKILL after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # what the command left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
