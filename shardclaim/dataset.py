"""Build a sharded dataset from JSONL, streaming, and read it back verified.

The builder reads its inputs once, in large blocks, as one stream; it never holds more than a block
and one small buffer per shard, whatever the input size. Each record (one line) goes whole to one
shard; inside a shard, records fill ``chunk_NNNN.jsonl`` files up to ``chunk_size_mb``. Chunk files are
written first, then every shard's ``metadata.json``, then ``master_metadata.json``: until that last
object exists the build is not a dataset, so an interrupted build never looks complete.

Assignment strategies (both deterministic):

* ``round_robin`` (default): record *i* goes to shard *i mod N*. Shards differ by at most one record
  in count, and in bytes by the spread of record sizes — far below one chunk for any real input, also
  when the input is sorted by size. One pass.
* ``contiguous``: shard *s* takes one consecutive run of records, as ``split`` would; counts differ by
  at most one. Needs the record count first: one extra read of the input.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import orjson

from shardclaim._build_json import BOM, FAST_ERRORS, InvalidRecordError, big_integers_in
from shardclaim._chunks import ChunkWriter
from shardclaim._input import (
    InputError,
    blocks_of,
    input_names,
    is_blank,
    lines_of,
    names_of,
    open_inputs,
    size_of,
)
from shardclaim._localfs import filesystem
from shardclaim.errors import ShardclaimError
from shardclaim.layout import (
    FORMAT_VERSION,
    MASTER_KEY,
    SHARD_METADATA,
    check_master,
    check_shard,
    shard_dir,
)
from shardclaim.store import open_store

if TYPE_CHECKING:  # _validate (simdjson, multiprocessing) is imported only when validating
    from shardclaim._validate import BackgroundValidator, Invalid

__all__ = ["DatasetExistsError", "InputError", "create_sharded_dataset"]

log = logging.getLogger("shardclaim.dataset")
Strategy = Literal["round_robin", "contiguous"]
_MiB = 1 << 20
_WHITESPACE = b" \t\r\n"


class DatasetExistsError(ShardclaimError, FileExistsError):
    """The output already holds a dataset (or foreign files) and overwriting was not asked for."""


# -- output -------------------------------------------------------------------------------------


# -- build --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    num_shards: int
    limit: int
    strategy: Strategy
    validate: bool
    skip_invalid: bool


def _check_options(num_shards: int, chunk_size_mb: float, strategy: str) -> None:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        msg = f"num_shards must be a positive integer, got {num_shards!r}"
        raise ValueError(msg)
    if not isinstance(chunk_size_mb, int | float) or not chunk_size_mb > 0:
        msg = f"chunk_size_mb must be a positive number, got {chunk_size_mb!r}"
        raise ValueError(msg)
    if int(chunk_size_mb * _MiB) < 1:
        msg = f"chunk_size_mb {chunk_size_mb!r} is less than one byte"
        raise ValueError(msg)
    if strategy not in ("round_robin", "contiguous"):
        msg = f"strategy must be 'round_robin' or 'contiguous', got {strategy!r}"
        raise ValueError(msg)


def _prepare_output(output_dir: str, overwrite: bool) -> tuple[Any, Any, str]:
    """Open the output; refuse an existing dataset unless ``overwrite``; clear a partial build."""
    store = open_store(output_dir)
    fs, base = filesystem(store.url)
    existing = store.list()
    ours = [o.key for o in existing if _is_layout_key(o.key)]
    foreign = [o.key for o in existing if not _is_layout_key(o.key)]
    if foreign:
        raise DatasetExistsError(
            f"{output_dir} holds files that are not part of a shardclaim dataset "
            f"(e.g. {foreign[0]!r}); choose an empty or new directory"
        )
    if MASTER_KEY in ours and not overwrite:
        raise DatasetExistsError(
            f"{output_dir} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
        )
    if ours:
        # A complete dataset being replaced, or the leftovers of an interrupted build.
        # The master goes first, so the old dataset stops looking whole before anything else changes.
        if MASTER_KEY in ours:
            fs.rm(f"{base}/{MASTER_KEY}")
        for key in ours:
            if "/" not in key and key != MASTER_KEY:
                fs.rm(f"{base}/{key}")
        # Every file in these directories is ours (anything else was refused above).
        for directory in sorted({k.split("/", 1)[0] for k in ours if "/" in k}):
            fs.rm(f"{base}/{directory}", recursive=True)
    return store, fs, base


def _is_layout_key(key: str) -> bool:
    if key == "_finalize.json":  # the fan-in marker (shardclaim.fanin)
        return True
    return (
        key == MASTER_KEY
        or re.fullmatch(r"shard_[0-9]{3,}/(metadata\.json|chunk_[0-9]{4,}\.jsonl)", key) is not None
    )


def _count_records(files: list[Any]) -> int:
    return sum(1 for _, _, line in lines_of(files, None) if not is_blank(line))


def create_sharded_dataset(
    input_file: str | Sequence[str],
    output_dir: str,
    num_shards: int = 8,
    chunk_size_mb: float = 100,
    *,
    strategy: Strategy = "round_robin",
    validate: bool = True,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Split JSONL ``input_file`` (a path or URL, a glob, or a list; ``.gz``/``.zst``/``.bz2`` read by
    suffix) into ``num_shards`` shards of ``chunk_size_mb`` chunks under ``output_dir``.

    Returns the master metadata. Raises :class:`InputError` for a malformed line (naming file and
    line; with ``skip_invalid`` such lines are skipped and counted instead), an empty input or more
    shards than records; :class:`DatasetExistsError` when ``output_dir`` holds a dataset and
    ``overwrite`` is false. On any error nothing is published.
    """
    _check_options(num_shards, chunk_size_mb, strategy)
    opts = _Options(num_shards, int(chunk_size_mb * _MiB), strategy, validate, skip_invalid)
    files = open_inputs(input_file)
    store, fs, base = _prepare_output(output_dir, overwrite)
    started = time.perf_counter()
    total_records = _count_records(files) if strategy == "contiguous" else 0
    writer = ChunkWriter(fs, base, num_shards, opts.limit)
    background = None
    if validate:
        from shardclaim._validate import BackgroundValidator

        if BackgroundValidator.suits(files, skip_invalid):
            background = BackgroundValidator(files)
    bar = _progress_bar(files, progress)
    # A writer thread needs the GIL back after every write; with the default 5 ms switch interval
    # it would queue behind the parsing loop for most of that time (1.63 s -> 1.35 s on 2 GiB here).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
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
        writer.abort()
        _remove_quietly(fs, [f"{base}/{shard_dir(i, num_shards)}" for i in range(num_shards)])
        raise
    finally:
        sys.setswitchinterval(switch_interval)
        if bar is not None:
            bar.close()
        if background is not None:
            background.close()
    for doc in shards:
        key = f"{shard_dir(doc['shard_id'], num_shards)}/{SHARD_METADATA}"
        store.write(
            key,
            orjson.dumps(check_shard(key, doc), option=orjson.OPT_INDENT_2),
            if_generation_match=0,
            metadata={"status": "available", "attempt": "0", "failures": "0"},  # read by listings
        )
    master = {
        "format_version": FORMAT_VERSION,
        "total_tasks": stats["records"],
        "num_shards": num_shards,
        "chunk_size_mb": float(chunk_size_mb),
        "total_bytes": stats["bytes"],
        "strategy": strategy,
        "validated": validate,
        "skipped_invalid": stats["invalid"],
        "big_integers": stats["big"] if validate else None,
        "blank_lines": stats["blank"],
        "inputs": input_names(files),
        "created_at": datetime.now(UTC).isoformat(),
        "shards": [
            {
                "shard_id": d["shard_id"],
                "directory": shard_dir(d["shard_id"], num_shards),
                "status": "available",
                "total_tasks": d["total_tasks"],
                "num_chunks": d["num_chunks"],
                "size_bytes": sum(c["size_bytes"] for c in d["chunks"]),
            }
            for d in shards
        ],
    }
    store.write(
        MASTER_KEY,
        orjson.dumps(check_master(MASTER_KEY, master), option=orjson.OPT_INDENT_2),
        if_generation_match=0,
    )
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
    opts: _Options,
    total: int,
    bar: Any,
    background: BackgroundValidator | None,
) -> dict[str, int]:
    records = invalid = blank = nbytes = big = 0
    n = opts.num_shards
    parse = None
    if opts.validate and background is None:
        import simdjson

        parse = simdjson.Parser().parse
    round_robin = opts.strategy == "round_robin"
    add = writer.add
    # The same walk as _input.lines_of, written out: a generator step per line costs ~15% of the
    # whole --no-validate build on 10 KB records. add() copies the line out of the block at once.
    current, lineno = -1, 0
    for index, name, data, start, end in blocks_of(files, bar):
        if index != current:
            current, lineno = index, 0
        view = memoryview(data)
        pos = start
        while pos < end:
            nl = data.index(b"\n", pos, end) + 1
            lineno += 1
            line = view[pos:nl]
            first = data[pos]
            pos = nl
            if first in _WHITESPACE and is_blank(line):
                blank += 1
                continue
            if parse is not None:  # _build_json.fast_validator, written out (a call per line costs ~10%)
                try:
                    if first == 0xEF and line[:3] == BOM:
                        raise ValueError("BOM")  # simdjson skips one; the rule does not
                    parse(line)
                except FAST_ERRORS:
                    try:
                        big += 1 if big_integers_in(line) else 0
                    except InvalidRecordError as e:
                        if not opts.skip_invalid:
                            _invalid((name, lineno, e.reason))
                        invalid += 1
                        continue
            add(records % n if round_robin else min(records * n // max(total, 1), n - 1), line)
            records += 1
            nbytes += len(line)
        view.release()  # the buffer is read into again next
        if background is not None and (bad := background.problem()) is not None:
            _invalid(bad)
    return {"records": records, "invalid": invalid, "blank": blank, "bytes": nbytes, "big": big}


def _invalid(bad: Invalid) -> NoReturn:
    name, lineno, reason = bad
    raise InputError(f"{name}, line {lineno}: not valid JSON ({reason})")


def _progress_bar(files: list[Any], progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    compressed = any(getattr(f, "compression", None) for f in files)
    total = None if compressed else sum(size_of(f) for f in files)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="sharding", file=sys.stderr)


def _remove_quietly(fs: Any, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            fs.rm(path, recursive=True)
