"""``shardclaim run DATASET [-N K] -- CMD ARGS...``: any command as a self-healing shard worker.

Each of K local worker processes loops: claim a shard, run CMD with the shard described in its
environment, keep the lease alive while CMD runs, then mark the shard completed (exit 0) or failed (any
other exit, with the tail of CMD's stderr recorded in the shard's metadata). On SIGTERM or SIGINT a
worker forwards the signal to CMD, releases the lease without spending an attempt, and exits. The same
command on many machines against one ``gs://`` dataset is the multi-machine mode.

CMD sees ``SHARDCLAIM_SHARD_ID``, ``SHARDCLAIM_TOTAL_SHARDS``, ``SHARDCLAIM_CHUNKS`` (the chunk
paths/URLs, one per line), ``SHARDCLAIM_CHUNKS_JSON`` (the same as a JSON list), ``SHARDCLAIM_DATASET``,
``SHARDCLAIM_ATTEMPT``, ``SHARDCLAIM_WORKER_ID`` and the seed's ``VELDA_SHARD_ID`` /
``VELDA_TOTAL_SHARDS``. To resume inside a shard after a crash, CMD starts at chunk
``SHARDCLAIM_RESUME_CHUNK`` and writes the number of chunks it has finished into the file named by
``SHARDCLAIM_CHECKPOINT_FILE``; the worker records it in the shard (a fenced write).

``--on-complete CMD`` (a shell command) runs once across every worker of every ``run`` that shares the
dataset, in whichever worker finds all shards settled first, and again in another if that one dies before
it finishes (see :mod:`shardclaim.fanin`). It sees ``SHARDCLAIM_DATASET`` and ``SHARDCLAIM_STATE``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from shardclaim._identity import default_worker_id
from shardclaim.errors import LeaseLostError, StoreError
from shardclaim.fanin import finalize_once
from shardclaim.manager import ShardManager
from shardclaim.status import summarize
from shardclaim.worker import Preempted

__all__ = ["run_workers", "shard_environment"]

_TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024
_DRAIN_SECONDS = 1.0
_GRACE_SECONDS = 30.0
_CHECKPOINT_POLL = 0.2
_PROGRESS_SECONDS = 2.0


def shard_environment(shard: dict[str, Any], dataset: str, worker_id: str) -> dict[str, str]:
    """The variables CMD gets for one claimed shard."""
    return {
        "SHARDCLAIM_SHARD_ID": str(shard["shard_id"]),
        "SHARDCLAIM_TOTAL_SHARDS": str(shard["total_shards"]),
        "SHARDCLAIM_CHUNKS": "\n".join(shard["chunks"]),
        "SHARDCLAIM_CHUNKS_JSON": orjson.dumps(shard["chunks"]).decode(),
        "SHARDCLAIM_DATASET": dataset,
        "SHARDCLAIM_ATTEMPT": str(shard["attempt"]),
        "SHARDCLAIM_WORKER_ID": worker_id,
        "SHARDCLAIM_RESUME_CHUNK": str(shard.get("resume_chunk") or 0),
        "VELDA_SHARD_ID": str(shard["shard_id"]),
        "VELDA_TOTAL_SHARDS": str(shard["total_shards"]),
    }


class _Pump:
    """Passes CMD's stderr through and keeps its tail, without outliving CMD.

    A background process that CMD started may hold the pipe open long after CMD exited (``sleep 30 &``,
    a daemon): the attempt ends with CMD, so once CMD has exited the pump only drains what is already
    there (for at most ``_DRAIN_SECONDS``) and stops.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
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
            with contextlib.suppress(OSError):
                sys.stderr.buffer.write(data)
                sys.stderr.buffer.flush()
            self._tail += data
            del self._tail[:-_TAIL_BYTES]

    def tail(self) -> str:
        """The last lines CMD wrote to stderr (after :meth:`join`)."""
        lines = self._tail.decode("utf-8", "replace").splitlines(keepends=True)
        return "".join(lines[-_TAIL_LINES:])

    def join(self) -> None:
        self.finished.set()
        self._thread.join()


@dataclass(frozen=True, slots=True)
class _Options:
    dataset: str
    command: list[str]
    lease_seconds: float
    max_attempts: int
    on_complete: str | None


def _worker(opts: _Options, index: int) -> int:
    worker_id = f"{default_worker_id()}-w{index}"
    with ShardManager(
        opts.dataset, worker_id, lease_seconds=opts.lease_seconds, max_attempts=opts.max_attempts
    ) as m:
        running: list[subprocess.Popen[bytes]] = []
        try:
            while True:
                for claim in m.claims():
                    _run_one(m, opts, claim, worker_id, running)
                if opts.on_complete is None:
                    return 0
                code = _finalize(m, opts.on_complete, running)
                if code is not None:
                    return code
                # An operator reset shards while we waited to finalize: there is work again.
        except (Preempted, KeyboardInterrupt):
            # Wherever the signal landed — running CMD, claiming, between the two — stop CMD and give
            # back every shard this worker holds, without spending an attempt.
            for proc in running:
                _stop(proc)
            for shard_id in m.held_shards():
                with contextlib.suppress(LeaseLostError):
                    m.release_shard(shard_id)
            return 143


def _run_one(
    m: ShardManager, opts: _Options, claim: Any, worker_id: str, running: list[subprocess.Popen[bytes]]
) -> None:
    env = {**os.environ, **shard_environment(claim.shard, opts.dataset, worker_id)}
    scratch = Path(tempfile.mkdtemp(prefix="shardclaim-"))
    progress = scratch / "checkpoint"
    env["SHARDCLAIM_CHECKPOINT_FILE"] = str(progress)
    try:
        try:
            # Its own process group: stopping the attempt stops everything the command started.
            proc = subprocess.Popen(opts.command, env=env, stderr=subprocess.PIPE, process_group=0)
        except OSError as e:
            m.mark_failed(claim.shard_id, f"cannot start {opts.command[0]!r}: {e}")
            return
        running.append(proc)
        assert proc.stderr is not None
        pump = _Pump(proc.stderr)
        try:
            code = _wait_and_checkpoint(proc, progress, m, claim.shard_id, claim.resume_chunk)
        finally:
            pump.join()
            proc.stderr.close()
        running.remove(proc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        if code == 0:
            m.mark_completed(claim.shard_id)
        else:
            m.mark_failed(claim.shard_id, f"{opts.command[0]} exited with {code}\n" + pump.tail())
    except LeaseLostError as e:
        print(f"shardclaim run: {e}; the result is not committed", file=sys.stderr)


def _finalize(m: ShardManager, on_complete: str, running: list[subprocess.Popen[bytes]]) -> int | None:
    """Run ``on_complete`` once per settled state across all workers, taking it over if its runner
    dies. The exit status, or None when the shards became unsettled again (an operator reset them)."""
    lost = threading.Event()

    def stop_command() -> None:  # called by the heartbeat thread when a successor took the marker
        lost.set()
        for proc in list(running):  # the shell and everything it started: its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            timer = threading.Timer(_GRACE_SECONDS, _kill_group, args=(proc,))
            timer.daemon = True
            timer.start()

    def finalizer(agg: dict[str, Any]) -> None:
        env = {**os.environ, "SHARDCLAIM_DATASET": m.dataset_dir, "SHARDCLAIM_STATE": agg["state"]}
        proc = subprocess.Popen(["/bin/sh", "-c", on_complete], env=env, process_group=0)
        running.append(proc)
        try:
            code = proc.wait()
        finally:
            running.remove(proc)
        if lost.is_set():
            raise LeaseLostError(
                None, m.worker_id, "another worker took the finalizer over; its command was stopped"
            )
        if code != 0:
            raise subprocess.CalledProcessError(code, on_complete)

    while True:
        try:
            outcome = finalize_once(m, finalizer, on_lost=stop_command)
        except LeaseLostError as e:
            print(f"shardclaim run: --on-complete: {e}", file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as e:
            print(f"shardclaim run: --on-complete failed: {e}", file=sys.stderr)
            return 1
        if outcome in ("ran", "done"):
            return 0
        if outcome == "failed":
            final = m.finalizer_status() or {}
            lines = str(final.get("error") or "").strip().splitlines()
            print(
                f"shardclaim run: --on-complete failed on {final.get('worker')} for this state of the shards"
                + (f" ({lines[-1]})" if lines else "")
                + f"; shardclaim reset {m.dataset_dir} --finalizer runs it again",
                file=sys.stderr,
            )
            return 1
        if outcome == "unsettled":
            return None
        time.sleep(min(m.heartbeat_seconds, 2.0))  # someone else is finalizing: watch its lease


def _wait_and_checkpoint(
    proc: subprocess.Popen[bytes], progress: Path, m: ShardManager, shard_id: int, done: int
) -> int:
    """Wait for CMD; whenever it writes a larger chunk count into its checkpoint file, record it."""
    while True:
        try:
            return proc.wait(timeout=_CHECKPOINT_POLL)
        except subprocess.TimeoutExpired:
            pass
        try:
            value = int(progress.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if value > done:
            try:
                m.checkpoint(shard_id, value)
                done = value
            except LeaseLostError as e:
                # Said once: the completion will be refused too; no point re-reading every poll.
                print(f"shardclaim run: {e}; progress is no longer recorded", file=sys.stderr)
                done = sys.maxsize


class _Progress:
    """One redrawn status line on stderr."""

    def __init__(self, manager: ShardManager) -> None:
        self._manager = manager
        self._start = time.monotonic()
        self._total = int(manager.master.get("total_tasks") or 0)

    def __call__(self, *, final: bool = False) -> None:
        try:
            agg = summarize(self._manager.get_shard_status())
        except StoreError:
            return  # progress is best effort; the workers retry on their own
        counts, done = agg["counts"], agg["records_done"]
        rate = done / max(time.monotonic() - self._start, 1e-9)
        eta = f"{(self._total - done) / rate:.0f}s" if rate > 0 and done < self._total else "-"
        sys.stderr.write(
            f"\r{counts.get('completed', 0)}/{agg['shards']} shards done, {counts.get('in_use', 0)} in use, "
            f"{counts.get('failed', 0)} failed; {done} records, {rate:.0f}/s, ETA {eta}   "
            + ("\n" if final else "")
        )
        sys.stderr.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, SIGKILL after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # what the command left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)


def _child(*args: Any) -> None:
    _die_with_parent()
    sys.exit(_worker(*args))


def _die_with_parent() -> None:
    """A worker ends with its ``run``: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``), so a
    SIGKILLed ``run`` leaves no orphan claiming shards and running commands with nowhere to report."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(
    dataset: str,
    command: Sequence[str],
    *,
    workers: int = 1,
    lease_seconds: float = 60.0,
    max_attempts: int = 3,
    on_complete: str | None = None,
    progress: bool | None = None,
) -> int:
    """Run ``workers`` local worker processes until every shard is terminal; the exit status is 0 when
    every shard completed, 1 when some shard failed, 143 after SIGTERM/SIGINT. ``progress`` (default:
    when stderr is a terminal) redraws one line every 2 s: shards done / in use / failed, records per
    second and an ETA, from one listing each time."""
    if not command:
        msg = "no command given: shardclaim run DATASET -- CMD ARGS..."
        raise ValueError(msg)
    if workers < 1:
        msg = f"-N must be at least 1, got {workers}"
        raise ValueError(msg)
    watcher = ShardManager(dataset, "run", lease_seconds=lease_seconds, max_attempts=max_attempts)
    show = _Progress(watcher) if (sys.stderr.isatty() if progress is None else progress) else None
    ctx = mp.get_context("spawn")
    options = _Options(dataset, list(command), lease_seconds, max_attempts, on_complete)
    procs = [ctx.Process(target=_child, args=(options, i)) for i in range(workers)]
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        while alive := [p.sentinel for p in procs if p.is_alive()]:
            mp.connection.wait(alive, timeout=_PROGRESS_SECONDS)  # a worker exits, or it is time to redraw
            if show is not None:
                show()
        for p in procs:
            p.join()
        if show is not None:
            show(final=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    statuses = ShardManager(dataset, "run").get_shard_status()
    agg = summarize(statuses)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(agg["counts"].items()))
    print(f"{agg['state']}: {agg['shards']} shards ({counts}); {agg['records_done']} records done")
    if interrupted:
        return 143
    if any(p.exitcode not in (0, None) for p in procs):
        return 1
    return 0 if agg["state"] == "succeeded" else 1
