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
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shardclaim._identity import default_worker_id
from shardclaim.attempt import GRACE_SECONDS, kill_group, run_attempt, shard_environment, stop
from shardclaim.console import Progress, SharedLine
from shardclaim.errors import JobHaltedError, LeaseLostError, StoreError
from shardclaim.fanin import finalize_once
from shardclaim.lease import halt
from shardclaim.manager import ShardManager
from shardclaim.status import summarize
from shardclaim.worker import Preempted, sigterm_raises

__all__ = ["run_workers", "shard_environment"]

_PROGRESS_SECONDS = 2.0  #: a listing for the progress line at most this often
_REDRAW_SECONDS = 0.25  #: how soon the line comes back after output scrolled over it


@dataclass(frozen=True, slots=True)
class _Options:
    dataset: str
    command: list[str]
    lease_seconds: float
    max_attempts: int
    on_complete: str | None
    timeout: float | None = None
    max_expiries: int = 3
    max_consecutive_failures: int = 3
    max_failed_shards: int | None = None
    workers: int = 1
    screen: SharedLine | None = None  #: the progress line the worker's output must not collide with
    per_chunk: bool = False  #: CMD once per chunk, each a reservation: the rest may be stolen


def _worker(opts: _Options, index: int) -> int:
    worker_id = f"{default_worker_id()}-w{index}"
    with ShardManager(
        opts.dataset, worker_id, lease_seconds=opts.lease_seconds, max_attempts=opts.max_attempts,
        max_expiries=opts.max_expiries, max_failed_shards=opts.max_failed_shards,
    ) as m:  # fmt: skip
        running: list[subprocess.Popen[bytes]] = []
        try:
            while True:
                failed_in_a_row: set[int] = set()  # distinct shards: one bad shard's retries count once
                for claim in m.claims(steal=True):  # parts of shards too: CMD gets the part's chunks
                    outcome = run_attempt(
                        m, claim, dataset=opts.dataset, command=opts.command, worker_id=worker_id,
                        timeout=opts.timeout, running=running, tag=opts.workers > 1, per_chunk=opts.per_chunk,
                    )  # fmt: skip
                    if outcome == "cannot start":
                        return 3
                    failed_in_a_row = failed_in_a_row | {claim.shard_id} if outcome == "failed" else set()
                    if len(failed_in_a_row) >= opts.max_consecutive_failures:
                        print(
                            f"shardclaim run: worker {worker_id} failed {len(failed_in_a_row)} shards in a "
                            "row and stops claiming: its environment is the likely culprit",
                            file=sys.stderr,
                        )
                        return 4
                if opts.on_complete is None:
                    return 0
                code = _finalize(m, opts.on_complete, running)
                if code is not None:
                    return code
                # An operator reset shards while we waited to finalize: there is work again.
        except (JobHaltedError, StoreError) as e:
            if not isinstance(e, JobHaltedError):  # (run prints a halt with its summary)
                # A store error that outlasted the retries (or a clock it cannot trust): one line, and
                # the shards this worker holds go back, spending nothing.
                print(f"shardclaim run: worker {worker_id}: {e}", file=sys.stderr)
                _give_back(m, running)
            return 1
        except (Preempted, KeyboardInterrupt):
            # Wherever the signal landed — running CMD, claiming, between the two — stop CMD and give
            # back every shard this worker holds, without spending an attempt.
            _give_back(m, running)
            return 143


def _give_back(m: ShardManager, running: list[subprocess.Popen[bytes]]) -> None:
    """Stop the commands running, and give back every shard held, without spending an attempt."""
    for proc in running:
        stop(proc)
    for shard_id in m.held_shards():
        with contextlib.suppress(LeaseLostError, StoreError):  # (what cannot go back expires)
            m.release_shard(shard_id)


def _finalize(m: ShardManager, on_complete: str, running: list[subprocess.Popen[bytes]]) -> int | None:
    """Run ``on_complete`` once per settled state across all workers, taking it over if its runner
    dies. The exit status, or None when the shards became unsettled again (an operator reset them)."""
    lost = threading.Event()

    def stop_command() -> None:  # called by the heartbeat thread when a successor took the marker
        lost.set()
        for proc in list(running):  # the shell and everything it started: its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            timer = threading.Timer(GRACE_SECONDS, kill_group, args=(proc,))
            timer.daemon = True
            timer.start()

    def finalizer(agg: dict[str, Any]) -> None:
        env = {**os.environ, "SHARDCLAIM_DATASET": m.dataset_dir, "SHARDCLAIM_STATE": agg["state"]}
        proc = subprocess.Popen(["/bin/sh", "-c", on_complete], env=env, process_group=0)
        running.append(proc)
        try:
            code = proc.wait()
        except BaseException:  # SIGTERM (Preempted), Ctrl-C: the finalizer's whole group stops with us
            stop(proc)
            raise
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
        if outcome == "halted":
            print("shardclaim run: the job is halted; --on-complete does not run", file=sys.stderr)
            return 1
        if outcome == "unsettled":
            return None
        time.sleep(min(m.heartbeat_seconds, 2.0))  # someone else is finalizing: watch its lease


class _Display:
    """The parent's side of the progress line: a listing every ``_PROGRESS_SECONDS`` at most (however
    many workers exit meanwhile), and a redraw of the same text, without a listing, after the workers'
    output scrolled over it."""

    def __init__(
        self, manager: ShardManager, screen: SharedLine, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._manager = manager
        self.screen = screen
        self._clock = clock
        self._progress = Progress(int(manager.master.get("total_tasks") or 0), clock=clock)
        self._listed_at: float | None = None

    def tick(self) -> None:
        now = self._clock()
        if self._listed_at is not None and now - self._listed_at < _PROGRESS_SECONDS:
            self.screen.redraw()
            return
        self._listed_at = now
        try:
            agg = summarize(self._manager.get_shard_status())
        except StoreError:
            return  # progress is best effort; the workers retry on their own
        self.screen.draw(self._progress.text(agg))

    def final(self, agg: Mapping[str, Any]) -> None:
        self.screen.draw(self._progress.text(agg), final=True)


def _child(opts: _Options, index: int, parent: int) -> None:
    _die_with_parent(parent)
    if opts.screen is not None:  # every line this worker and its commands print goes above the line
        sys.stdout = opts.screen.text_stream((sys.__stdout__ or sys.stdout).buffer)
        sys.stderr = opts.screen.text_stream((sys.__stderr__ or sys.stderr).buffer)
    with sigterm_raises(True):  # the whole worker, finalizer included: SIGTERM stops what it runs
        sys.exit(_worker(opts, index))


def _die_with_parent(parent: int) -> None:
    """A worker ends with its ``run``: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``), so a
    SIGKILLed ``run`` leaves no orphan claiming shards and running commands with nowhere to report."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _check_options(
    command: Sequence[str], workers: int, timeout: float | None, max_consecutive_failures: int
) -> None:
    if not command:
        msg = "no command given: shardclaim run DATASET -- CMD ARGS..."
        raise ValueError(msg)
    if workers < 1:
        msg = f"-N must be at least 1, got {workers}"
        raise ValueError(msg)
    if timeout is not None and not 0 < timeout < float("inf"):
        msg = f"--timeout must be a positive number of seconds, got {timeout!r}"
        raise ValueError(msg)
    if max_consecutive_failures < 1:
        msg = f"--max-consecutive-failures must be at least 1, got {max_consecutive_failures}"
        raise ValueError(msg)


def run_workers(
    dataset: str,
    command: Sequence[str],
    *,
    workers: int = 1,
    lease_seconds: float = 60.0,
    max_attempts: int = 3,
    on_complete: str | None = None,
    progress: bool | None = None,
    timeout: float | None = None,
    max_expiries: int = 3,
    max_consecutive_failures: int = 3,
    max_failed_shards: int | None = None,
    per_chunk: bool = False,
) -> int:
    """Run ``workers`` local worker processes until every shard is terminal; the exit status is 0 when
    every shard completed, 1 when some shard failed, 143 after SIGTERM/SIGINT. ``progress`` (default:
    when stderr is a terminal) keeps one line at the bottom of stderr (:mod:`shardclaim.console`): shards
    done / running / failed, records (checkpointed ones included), the rate over the last 30 s and an
    ETA, from one listing every 2 s; the workers' and commands' output scrolls above it by whole lines."""
    _check_options(command, workers, timeout, max_consecutive_failures)
    watcher = ShardManager(
        dataset, "run", lease_seconds=lease_seconds, max_attempts=max_attempts, max_expiries=max_expiries,
        max_failed_shards=max_failed_shards,
    )  # fmt: skip
    watcher.get_shard_status()
    if watcher.halt is not None:
        print(f"shardclaim run: refused: {halt.describe(watcher.halt, dataset)}", file=sys.stderr)
        return 1
    ctx = mp.get_context("spawn")
    show = None
    if sys.stderr.isatty() if progress is None else progress:
        show = _Display(watcher, SharedLine(ctx))
    options = _Options(
        dataset, list(command), lease_seconds, max_attempts, on_complete, timeout, max_expiries,
        max_consecutive_failures, max_failed_shards, workers, show.screen if show is not None else None,
        per_chunk,
    )  # fmt: skip
    procs = [ctx.Process(target=_child, args=(options, i, os.getpid())) for i in range(workers)]
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
            mp.connection.wait(alive, timeout=_REDRAW_SECONDS if show is not None else None)
            if show is not None:
                show.tick()
        for p in procs:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    statuses = watcher.get_shard_status()
    agg = summarize(statuses, halted=watcher.halt is not None)
    if show is not None:
        show.final(agg)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(agg["counts"].items()))
    print(f"{agg['state']}: {agg['shards']} shards ({counts}); {agg['records_done']} records done")
    if interrupted:
        return 143
    if any(p.exitcode not in (0, None) for p in procs):
        return 1
    return 0 if agg["state"] == "succeeded" else 1
