"""Datasets whose tasks are not JSONL records: files (``create --files``) and grid points (``--grid``).

* **Files**: every file or object a glob matches is one task, one chunk of its shard (so a worker's
  checkpoint, ``SHARDCLAIM_RESUME_CHUNK`` and chunk ranges count files). Shards are balanced by bytes:
  the largest files first, each to the shard with the fewest bytes so far, so no shard holds more than
  the mean plus the largest file; inside a shard the files keep their name order. The dataset records
  each glob's fixed part (the directory or URL prefix before the first wildcard) as a source and every
  file by its path relative to it (format version 2, see :mod:`shardclaim.layout`); the files are not
  copied. ``claim.records()`` and ``iter_shard_records`` yield the files' paths or URLs, ``run`` lists
  them in ``SHARDCLAIM_CHUNKS``. Each file is one task however many patterns or paths reach it; ``**``
  follows no symbolic link to a directory; the output dataset is never a task (:mod:`.taskglob`).
* **Grid**: a JSON object of lists, ``{"lr": [0.1, 0.01], "fold": [0, 1, 2]}``; the Cartesian product of
  the lists (in the order the object lists them, the last one varying fastest) is the task list, one
  JSON record per point (``{"lr": 0.1, "fold": 0}``), built as an ordinary dataset of records.
"""

from __future__ import annotations

import glob
import heapq
import io
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from shardclaim.dataset.inputs import secrets_of, shown
from shardclaim.dataset.output import prepare_output, shard_entries
from shardclaim.dataset.taskglob import WILDCARDS, Excluded, double_star, fixed_part, has_double_star, remote
from shardclaim.errors import InputError
from shardclaim.layout import FORMAT_VERSION_REFERENCES

__all__ = ["GridInput", "create_file_tasks", "create_grid_tasks", "list_files"]

_MiB = 1 << 20


def _plain(url: str) -> str:
    """A ``file://`` pattern as the local path it names (as fsspec reads it): one file is one task, and
    the output is never one, however they are spelled."""
    return url[len("file://") :] if url.startswith("file://") else url


def list_files(
    patterns: Sequence[str], output_dir: str | None = None
) -> tuple[list[str], list[tuple[int, str, int]]]:
    """``(sources, files)``: the fixed parts (an absolute directory or a URL prefix) of the patterns that
    have files, and every matching file as ``(source index, path relative to it, size)``, in name order,
    each file once however many patterns or paths reach it (a local file is known by its device and
    inode: through ``./``, a symbolic link or two fixed parts it is the same file). Files of the dataset
    at ``output_dir`` (and of its staging areas) are never matches."""
    sources: list[str] = []
    files: list[tuple[int, str, int]] = []
    seen: set[object] = set()
    excluded = Excluded(output_dir) if output_dir is not None else None  # (file:// read as the store does)
    for pattern in map(_plain, patterns):
        if secrets_of(pattern):
            raise InputError(
                f"{shown(pattern)}: a file task is recorded by its URL, which cannot keep credentials; "
                "give them to the filesystem (environment, config) instead",
                shown(pattern),
            )
        root, found = _local(pattern, excluded) if "://" not in pattern else remote(pattern, excluded)
        if not found:
            outside = " outside the output dataset" if excluded is not None else ""
            raise InputError(f"no file matches {pattern!r}{outside}", pattern)
        for rel, size, identity in found:
            if identity in seen:
                continue
            seen.add(identity)
            if root not in sources:
                sources.append(root)
            files.append((sources.index(root), rel, size))
    return sources, files


def _local(pattern: str, excluded: Excluded | None) -> tuple[str, list[tuple[str, int, object]]]:
    """``**`` never follows a symbolic link to a directory (:mod:`.taskglob`); other wildcards match
    as ``glob`` does. A name that is not UTF-8 is refused: the metadata (JSON) cannot record it."""
    path = os.path.abspath(os.path.expanduser(pattern))
    root = os.path.normpath(fixed_part(path))
    if not any(c in path for c in WILDCARDS):
        matched = [path]
    elif has_double_star(path):
        matched = sorted(double_star(root, path))
    else:
        matched = sorted(glob.glob(path))
    found: list[tuple[str, int, object]] = []
    for name in matched:
        try:
            st = os.stat(name)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            if name == path:
                raise InputError(f"input file not found: {name}", name)
            continue  # a directory, a dangling link, a file gone since the listing
        if excluded is not None and excluded.local(name):
            continue
        try:
            name.encode()
        except UnicodeEncodeError:
            raise InputError(
                f"{os.fsencode(name)!r}: a file whose name is not UTF-8 cannot be a task (the dataset's "
                "metadata is JSON); rename it, or give patterns that leave it out",
                name,
            ) from None
        found.append((os.path.relpath(name, root), st.st_size, (st.st_dev, st.st_ino)))
    return root, found


def balance(sizes: list[int], num_shards: int) -> list[list[int]]:
    """Indexes into ``sizes`` for each shard: largest first, each to the shard with the fewest bytes
    (the lowest id on a tie), so that no shard exceeds the mean by more than the largest item; each
    shard's indexes in ascending order."""
    heap = [(0, shard) for shard in range(num_shards)]
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, shard = heapq.heappop(heap)
        shards[shard].append(i)
        heapq.heappush(heap, (load + sizes[i], shard))
    return [sorted(s) for s in shards]


def create_file_tasks(
    files: str | Sequence[str], output_dir: str, num_shards: int = 8, *, overwrite: bool = False
) -> dict[str, Any]:
    """A dataset whose tasks are the files matching ``files`` (a glob, a path or URL, or a list of
    them); returns the master metadata. Nothing is copied: see the module's docstring."""
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        msg = f"num_shards must be a positive integer, got {num_shards!r}"
        raise ValueError(msg)
    patterns = [files] if isinstance(files, str) else list(files)
    if not patterns:
        raise InputError("no file pattern given")
    roots, found = list_files(patterns, output_dir)
    if len(found) < num_shards:
        raise InputError(
            f"{len(found)} files cannot fill {num_shards} shards; use at most {len(found)} shards"
        )
    sources = [{"url": root} for root in roots]
    shards = []
    for shard_id, members in enumerate(balance([size for _, _, size in found], num_shards)):
        chunks = [
            {
                "chunk_id": c,
                "file": found[i][1],
                "source": found[i][0],
                "num_tasks": 1,
                "size_mb": round(found[i][2] / _MiB, 6),
                "size_bytes": found[i][2],
            }
            for c, i in enumerate(members)
        ]
        shards.append(_shard_doc(shard_id, num_shards, chunks, "files", sources))
    master = _master(shards, "files", sources, [shown(p) for p in patterns], strategy="files_by_bytes")
    publish(output_dir, shards, master, overwrite=overwrite)
    return master


def _shard_doc(
    shard_id: int, num_shards: int, chunks: list[dict[str, Any]], kind: str, sources: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "shard_id": shard_id,
        "total_shards": num_shards,
        "status": "available",
        "total_tasks": sum(c["num_tasks"] for c in chunks),
        "num_chunks": len(chunks),
        "chunks": chunks,
        "assigned_to": None,
        "started_at": None,
        "completed_at": None,
        "kind": kind,
        "sources": sources,
    }


def _master(
    shards: list[dict[str, Any]], kind: str, sources: list[dict[str, Any]], inputs: list[str], **extra: Any
) -> dict[str, Any]:
    num_shards = len(shards)
    return {
        "format_version": FORMAT_VERSION_REFERENCES,
        "kind": kind,
        "sources": sources,
        "total_tasks": sum(d["total_tasks"] for d in shards),
        "num_shards": num_shards,
        "chunk_size_mb": 0.0,
        "total_bytes": sum(c["size_bytes"] for d in shards for c in d["chunks"]),
        "inputs": inputs,
        "created_at": datetime.now(UTC).isoformat(),
        **extra,
        "shards": shard_entries(shards),
    }


def publish(
    output_dir: str, shards: list[dict[str, Any]], master: dict[str, Any], *, overwrite: bool
) -> None:
    """Metadata only (no chunk files): through the builder's output, so an old dataset is replaced as
    safely as by any build, and only one build writes at a time."""
    output = prepare_output(output_dir, overwrite=overwrite)
    try:
        output.publish(shards, master)
    except BaseException:
        output.abort()
        raise
    finally:
        output.close()


# -- grids ------------------------------------------------------------------------------------------


#: The most points a grid may have: a billion records is already tens of GB of JSONL and hours of
#: building, and far below the 2**53 a count in the metadata may hold. A larger product is a mistake.
MAX_GRID_POINTS = 10**9


def read_grid(path: str) -> dict[str, list[Any]]:
    """The grid file: a JSON object whose values are non-empty lists, each key once (in any object of
    it), integers exact whatever their size, at most :data:`MAX_GRID_POINTS` points. Errors name the
    file (and the line of a syntax error, a byte that is not UTF-8 or a repeated key)."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"grid file not found: {path}", path) from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}, line {line}: not valid JSON (byte 0x{data[e.start]:02x} is not UTF-8)", path, line
        ) from None
    try:
        orjson.loads(data)  # the syntax, as every JSON of shardclaim is read (no NaN, no lone surrogate)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})", path, e.lineno) from None
    repeated = _repeated_key(text)
    if repeated is not None:
        key, line = repeated
        raise InputError(
            f"{path}, line {line}: the key {key!r} is given twice in one object (JSON would keep only one "
            "of its values); give each key once",
            path,
            line,
        )
    try:
        grid = json.loads(text)  # integers exact, whatever their size
    except RecursionError:
        raise InputError(f"{path}: not valid JSON (nested too deeply)", path) from None
    if not isinstance(grid, dict) or not grid:
        raise InputError(f'{path}: a grid is a JSON object of lists, e.g. {{"lr": [0.1, 0.01]}}', path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{path}: {key!r} must be a non-empty list of values, got {values!r}", path)
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_GRID_POINTS:
        count = f"{points:,}" if points < 10**30 else f"about 10**{len(str(points)) - 1}"
        raise InputError(
            f"{path}: the product of the grid's {len(grid)} lists is {count} points, more than the "
            f"{MAX_GRID_POINTS:,} a grid may have",
            path,
        )
    return grid


# A string, or a character of structure (valid JSON: numbers and literals are skipped between them).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]')


def _repeated_key(text: str) -> tuple[str, int] | None:
    """The first key of ``text`` (valid JSON) that its object already has, and its line; or None."""
    objects: list[set[str] | None] = []  # the keys of each open object, None for an open list
    key_next = False
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token in ("{", "["):
            objects.append(set() if token == "{" else None)
            key_next = token == "{"
        elif token in ("}", "]", ":"):
            if token != ":":
                objects.pop()
            key_next = False
        elif token == ",":
            key_next = objects[-1] is not None
        elif key_next and (keys := objects[-1]) is not None:
            key = json.loads(token)
            if key in keys:
                return key, text.count("\n", 0, m.start()) + 1
            keys.add(key)
            key_next = False
    return None


class GridInput:
    """The grid's points as one input of JSONL, generated as it is read (a product can be large)."""

    compression = None

    def __init__(self, path: str, grid: dict[str, list[Any]]) -> None:
        self.path = path
        self.full_name = path
        self.fs = self
        self.grid = grid
        self.points = 1
        for values in grid.values():
            self.points *= len(values)

    def size(self, _: str) -> int:
        """Unknown until read (the builder's progress bar and validator plan ask)."""
        return 0

    def open(self) -> IO[bytes]:
        return _Lines(self._lines())  # type: ignore[return-value]  # the read()/readinto() subset

    def _lines(self) -> Iterator[bytes]:
        keys = list(self.grid)
        for values in itertools.product(*self.grid.values()):
            point = dict(zip(keys, values, strict=True))
            try:
                line = orjson.dumps(point)
            except TypeError:  # an integer beyond 64 bits: written exact (and read back exact)
                line = json.dumps(point, ensure_ascii=False, separators=(",", ":")).encode()
            yield line + b"\n"


class _Lines(io.RawIOBase):
    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        parts, size = [self._pending], len(self._pending)
        while size < want:
            line = next(self._lines, None)
            if line is None:
                break
            parts.append(line)
            size += len(line)
        data = b"".join(parts)
        n = min(want, len(data))
        buffer[:n] = data[:n]
        self._pending = data[n:]
        return n


def create_grid_tasks(
    grid_file: str, output_dir: str, num_shards: int = 8, *, overwrite: bool = False, **options: Any
) -> dict[str, Any]:
    """A dataset of one record per point of the grid in ``grid_file``; ``options`` as for
    :func:`~shardclaim.dataset.create_sharded_dataset` (``strategy``, ``chunk_size_mb``)."""
    from shardclaim.dataset.build import Options, build_records, check_options

    grid = read_grid(grid_file)
    source = GridInput(grid_file, grid)
    chunk_size_mb = float(options.pop("chunk_size_mb", 100))
    strategy = options.pop("strategy", "blocks")
    if options:
        raise TypeError(f"unexpected options {sorted(options)}")
    check_options(num_shards, chunk_size_mb, strategy)
    if source.points < num_shards:
        raise InputError(
            f"{grid_file}: {source.points} grid points cannot fill {num_shards} shards; "
            f"use at most {source.points} shards",
            grid_file,
        )
    opts = Options(num_shards, int(chunk_size_mb * _MiB), strategy, validate=False, skip_invalid=False)
    extra = {"grid": {"file": grid_file, "parameters": list(grid), "points": source.points}}
    return build_records(
        [source],
        output_dir,
        opts,
        chunk_size_mb=chunk_size_mb,
        overwrite=overwrite,
        progress=False,
        extra=extra,
    )
