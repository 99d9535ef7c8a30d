"""Building a sharded dataset from JSONL, streaming: ``create_sharded_dataset`` and its distribution loop.

The builder reads its inputs once, in large blocks, as one stream; it never holds more than a block
and one small buffer per shard, whatever the input size. Each record (one line) goes whole to one
shard; inside a shard, records fill ``chunk_NNNN.jsonl`` files up to ``chunk_size_mb``. Chunk files are
written first, then every shard's ``metadata.json``, then ``master_metadata.json``: until that last
object exists the build is not a dataset, so an interrupted build never looks complete.

The build never writes into the dataset it may replace, and one build at a time writes to an output:
see :mod:`shardclaim.dataset.output` (staging and the switch) and :mod:`shardclaim.dataset.lock`.

Assignment strategies (all deterministic):

* ``blocks`` (default): runs of whole lines, about an 8 MiB block / 4N each, go to the shards in
  rotation (:mod:`shardclaim.dataset.deal`): no Python code per line, so small records build at the
  speed of copying bytes. Shards differ in bytes by about one run; small inputs (runs under 4 KiB) are
  dealt line by line, exactly as ``round_robin``.
* ``round_robin``: record *i* goes to shard *i mod N*. Shards differ by at most one record
  in count, and in bytes by the spread of record sizes — far below one chunk for any real input, also
  when the input is sorted by size. One pass.
* ``contiguous``: shard *s* takes one consecutive run of records, as ``split`` would; counts differ by
  at most one. Needs the record count first: one extra read of the input.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from shardclaim.dataset.chunks import ChunkWriter
from shardclaim.dataset.deal import deal_block, planned, runs_suit
from shardclaim.dataset.inputs import (
    blocks_of,
    input_names,
    is_blank,
    lines_of,
    names_of,
    open_inputs,
    size_of,
)
from shardclaim.dataset.output import Output, prepare_output, shard_entries
from shardclaim.dataset.records import BOM, FAST_ERRORS, big_integers_in, c_walk
from shardclaim.errors import InputError, InvalidRecordError
from shardclaim.layout import FORMAT_VERSION

if TYPE_CHECKING:  # validate (simdjson, multiprocessing) is imported only when validating
    from shardclaim.dataset.background import BackgroundValidator
    from shardclaim.dataset.validate import Invalid

__all__ = ["Options", "Strategy", "build_records", "check_options", "create_sharded_dataset"]

log = logging.getLogger("shardclaim.dataset")
Strategy = Literal["blocks", "round_robin", "contiguous"]
STRATEGIES = ("blocks", "round_robin", "contiguous")
_MiB = 1 << 20
_WHITESPACE = b" \t\r\n"


# -- build --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    num_shards: int
    limit: int
    strategy: Strategy
    validate: bool
    skip_invalid: bool


def check_options(num_shards: int, chunk_size_mb: float, strategy: str) -> None:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        msg = f"num_shards must be a positive integer, got {num_shards!r}"
        raise ValueError(msg)
    if not isinstance(chunk_size_mb, int | float) or not chunk_size_mb > 0:
        msg = f"chunk_size_mb must be a positive number, got {chunk_size_mb!r}"
        raise ValueError(msg)
    if int(chunk_size_mb * _MiB) < 1:
        msg = f"chunk_size_mb {chunk_size_mb!r} is less than one byte"
        raise ValueError(msg)
    if strategy not in STRATEGIES:
        msg = f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        raise ValueError(msg)


def _count_records(files: list[Any]) -> int:
    return sum(1 for _, _, line in lines_of(files, None) if not is_blank(line))


def create_sharded_dataset(
    input_file: str | Sequence[str],
    output_dir: str,
    num_shards: int = 8,
    chunk_size_mb: float = 100,
    *,
    strategy: Strategy = "blocks",
    validate: bool = True,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    by_reference: bool = False,
) -> dict[str, Any]:
    """Split JSONL ``input_file`` (a path or URL, a glob, or a list; ``.gz``/``.zst``/``.bz2`` read by
    suffix) into ``num_shards`` shards of ``chunk_size_mb`` chunks under ``output_dir``.

    With ``by_reference`` the chunks are not written: each is a byte range of an (uncompressed) input,
    recorded with its CRC32C, and the inputs are pinned (see :mod:`shardclaim.dataset.byref`).

    Returns the master metadata. Raises :class:`InputError` for a malformed line (naming file and
    line; with ``skip_invalid`` such lines are skipped and counted instead), an empty input or more
    shards than records; :class:`DatasetExistsError` when ``output_dir`` holds a dataset and
    ``overwrite`` is false. On any error nothing is published.
    """
    check_options(num_shards, chunk_size_mb, strategy)
    opts = Options(num_shards, int(chunk_size_mb * _MiB), strategy, validate, skip_invalid)
    files = open_inputs(input_file)
    if by_reference:
        from shardclaim.dataset.byref import build_by_reference

        return build_by_reference(files, output_dir, opts, chunk_size_mb=chunk_size_mb, overwrite=overwrite)
    return build_records(files, output_dir, opts, chunk_size_mb=chunk_size_mb, overwrite=overwrite,
                         progress=progress)  # fmt: skip


def build_records(
    files: list[Any],
    output_dir: str,
    opts: Options,
    *,
    chunk_size_mb: float,
    overwrite: bool,
    progress: bool | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a dataset of copied records from opened inputs; ``extra`` fields join the master."""
    output = prepare_output(output_dir, overwrite=overwrite)
    try:
        return _build(files, output, opts, chunk_size_mb=chunk_size_mb, progress=progress, extra=extra)
    except BaseException:
        output.abort()
        raise
    finally:
        output.close()


def _build(
    files: list[Any],
    output: Output,
    opts: Options,
    *,
    chunk_size_mb: float,
    progress: bool | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    num_shards = opts.num_shards
    total_records = _count_records(files) if opts.strategy == "contiguous" else 0
    background: BackgroundValidator | None = None
    writer: ChunkWriter | None = None
    bar = None
    # A writer thread needs the GIL back after every write; with the default 5 ms switch interval
    # it would queue behind the parsing loop for most of that time (1.63 s -> 1.35 s on 2 GiB here).
    switch_interval = sys.getswitchinterval()
    try:  # (everything started here is stopped in `finally`, whenever an error or Ctrl-C comes)
        if opts.validate:  # (before the writer's threads start: the validators may then be forked)
            from shardclaim.dataset.background import BackgroundValidator

            if BackgroundValidator.suits(files, opts.skip_invalid):
                background = BackgroundValidator(files)
                background.start()
        writer = ChunkWriter(output.fs, output.chunk_base, num_shards, opts.limit)
        bar = _progress_bar(files, progress)
        sys.setswitchinterval(0.0002)
        stats = _distribute(
            files, writer=writer, opts=opts, total=total_records, bar=bar, background=background
        )
        if background is not None:
            if (bad := background.result()) is not None:
                _invalid(bad)
            stats["big"] += background.big_integers()
        if stats["records"] == 0:
            raise InputError(f"no records in {names_of(files)}: nothing to shard")
        if stats["records"] < num_shards:
            raise InputError(
                f"{stats['records']} records cannot fill {num_shards} shards; "
                f"use at most {stats['records']} shards"
            )
        shards = writer.finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        sys.setswitchinterval(switch_interval)
        if bar is not None:
            bar.close()
        if background is not None:
            background.close()
    master = {
        "format_version": FORMAT_VERSION,
        "total_tasks": stats["records"],
        "num_shards": num_shards,
        "chunk_size_mb": float(chunk_size_mb),
        "total_bytes": stats["bytes"],
        "strategy": opts.strategy,
        "validated": opts.validate,
        "skipped_invalid": stats["invalid"],
        "big_integers": stats["big"] if opts.validate else None,
        "blank_lines": stats["blank"],
        "inputs": input_names(files),
        "created_at": datetime.now(UTC).isoformat(),
        "shards": shard_entries(shards),
        **(extra or {}),
    }
    output.publish(shards, master)
    elapsed = time.perf_counter() - started
    chunks = sum(d["num_chunks"] for d in shards)
    log.info(
        "%d records -> %d shards, %d chunks; %d invalid skipped, %d blank; %.1f MB/s",
        stats["records"], num_shards, chunks, stats["invalid"], stats["blank"],
        stats["bytes"] / _MiB / max(elapsed, 1e-9),
    )  # fmt: skip
    return master


def _distribute(
    files: list[Any],
    *,
    writer: ChunkWriter,
    opts: Options,
    total: int,
    bar: Any,
    background: BackgroundValidator | None,
) -> dict[str, int]:
    stats = {"records": 0, "invalid": 0, "blank": 0, "bytes": 0, "big": 0}
    parse: Any = None  # inline validation: the C walk over each block, else simdjson's parse a line
    c_check = False
    if opts.validate and background is None:
        parse = c_walk()
        c_check = parse is not None
        if parse is None:
            import simdjson

            parse = simdjson.Parser().parse
    walk = _Walk(writer, opts, total, parse, c_check=c_check)
    blocks = opts.strategy == "blocks"
    current = 0
    if blocks and parse is None:  # no Python code per line: each block planned ahead (see deal)
        stream = planned(blocks_of(files, bar, buffers=2), opts.num_shards)
    else:
        stream = ((block, None) for block in blocks_of(files, bar))
    for (index, name, data, start, end), plan in stream:
        if index != current:
            current, walk.lineno = index, 0
        runs = blocks and runs_suit(end - start, opts.num_shards)
        counts = None
        if plan is not None:
            holes, counts = plan.result()
            stats["blank"] += len(holes)  # (line numbers: only inline validation needs them)
        else:
            holes = walk.lines(name, data, start, end, stats, deal=not runs)
        if runs:
            walk.turn, got, size = deal_block(
                writer, data, start, end, turn=walk.turn, excluded=holes, counts=counts
            )
            stats["records"] += got
            stats["bytes"] += size
        if background is not None and (bad := background.problem()) is not None:
            _invalid(bad)
    return stats


class _Walk:
    """The line-by-line part of the distribution: blank lines, inline validation, and dealing one line
    per turn (``round_robin``, ``contiguous``, and ``blocks`` on blocks too small for runs)."""

    def __init__(self, writer: ChunkWriter, opts: Options, total: int, parse: Any, *, c_check: bool) -> None:
        self.writer = writer
        self.opts = opts
        self.total = total
        self.parse = parse
        self.c_check = c_check  # parse is the C walk: (data, a, b) -> where its first unsure line begins
        self.turn = 0  # the rotation: a line's (round_robin, small blocks) or a run's (blocks)
        self.lineno = 0

    def lines(
        self, name: str, data: bytes | bytearray, start: int, end: int, stats: dict[str, int], *, deal: bool
    ) -> list[tuple[int, int]]:
        """Walk ``data[start:end]``: count blank lines, validate, and (``deal``) deal each record; return
        the lines left out (blank, or invalid and skipped)."""
        n, total, parse, add = self.opts.num_shards, self.total, self.parse, self.writer.add
        contiguous = self.opts.strategy == "contiguous"
        c_check = self.c_check
        records, nbytes, turn, lineno = stats["records"], stats["bytes"], self.turn, self.lineno
        holes = []
        # The same walk as inputs.lines_of, written out: a generator step per line costs ~15% of the
        # whole --no-validate build on 10 KB records. add() copies the line out of the block at once.
        view = memoryview(data)
        pos = start
        unsure = parse(data, start, end) if c_check else -1  # the C walk: the first line to look at
        while pos < end:
            nl = data.index(b"\n", pos, end) + 1
            lineno += 1
            line = view[pos:nl]
            first = data[pos]
            begin, pos = pos, nl
            if first in _WHITESPACE and is_blank(line):
                stats["blank"] += 1
                holes.append((begin, nl))
                continue
            if parse is not None:  # records.fast_validator, written out (a call per line costs ~10%)
                try:
                    if c_check:
                        if begin == unsure:  # (the lines before it are records)
                            unsure = parse(data, nl, end)
                            raise ValueError("unsure")  # the rule decides
                    elif first == 0xEF and line[:3] == BOM:
                        raise ValueError("BOM")  # simdjson skips one; the rule does not
                    else:
                        parse(line)
                except FAST_ERRORS:
                    try:
                        stats["big"] += 1 if big_integers_in(line) else 0
                    except InvalidRecordError as e:
                        if not self.opts.skip_invalid:
                            _invalid((name, lineno, e.reason))
                        stats["invalid"] += 1
                        holes.append((begin, nl))
                        continue
            if deal:
                add(min(records * n // max(total, 1), n - 1) if contiguous else turn % n, line)
                turn += 1
                records += 1
                nbytes += len(line)
        view.release()  # the buffer is read into again next
        stats["records"], stats["bytes"], self.turn, self.lineno = records, nbytes, turn, lineno
        return holes


def _invalid(bad: Invalid) -> NoReturn:
    name, lineno, reason = bad
    raise InputError(f"{name}, line {lineno}: not valid JSON ({reason})", name, lineno)


def _progress_bar(files: list[Any], progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    compressed = any(getattr(f, "compression", None) for f in files)
    total = None if compressed else sum(size_of(f) for f in files)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="sharding", file=sys.stderr)
