"""Datasets whose tasks are not JSONL records: files (``create --files``) and grid points (``--grid``).

* **Files**: every file or object a glob matches is one task, one chunk of its shard (so a worker's
  checkpoint, ``SHARDCLAIM_RESUME_CHUNK`` and chunk ranges count files). Shards are balanced by bytes:
  the largest files first, each to the shard with the fewest bytes so far, so no shard holds more than
  the mean plus the largest file; inside a shard the files keep their name order. The dataset records
  each glob's fixed part (the directory or URL prefix before the first wildcard) as a source and every
  file by its path relative to it (format version 2, see :mod:`shardclaim.layout`); the files are not
  copied. ``claim.records()`` and ``iter_shard_records`` yield the files' paths or URLs, ``run`` lists
  them in ``SHARDCLAIM_CHUNKS``.
* **Grid**: a JSON object of lists, ``{"lr": [0.1, 0.01], "fold": [0, 1, 2]}``; the Cartesian product of
  the lists (in the order the object lists them, the last one varying fastest) is the task list, one
  JSON record per point (``{"lr": 0.1, "fold": 0}``), built as an ordinary dataset of records.
"""

from __future__ import annotations

import glob
import heapq
import io
import itertools
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from shardclaim.dataset.inputs import secrets_of, shown
from shardclaim.dataset.output import prepare_output, shard_entries
from shardclaim.errors import InputError
from shardclaim.layout import FORMAT_VERSION_REFERENCES

__all__ = ["GridInput", "create_file_tasks", "create_grid_tasks", "list_files"]

_MiB = 1 << 20
_WILDCARDS = "*?["


def list_files(patterns: Sequence[str]) -> tuple[list[str], list[tuple[int, str, int]]]:
    """``(sources, files)``: each pattern's fixed part (an absolute directory or a URL prefix), and every
    matching file as ``(source index, path relative to it, size)``, in name order, without repeats."""
    sources: list[str] = []
    files: list[tuple[int, str, int]] = []
    seen: set[tuple[str, str]] = set()
    for pattern in patterns:
        if secrets_of(pattern):
            raise InputError(
                f"{shown(pattern)}: a file task is recorded by its URL, which cannot keep credentials; "
                "give them to the filesystem (environment, config) instead",
                shown(pattern),
            )
        root, found = _local(pattern) if "://" not in pattern else _remote(pattern)
        if not found:
            raise InputError(f"no file matches {pattern!r}", pattern)
        if root not in sources:
            sources.append(root)
        index = sources.index(root)
        for rel, size in found:
            if (root, rel) not in seen:
                seen.add((root, rel))
                files.append((index, rel, size))
    return sources, files


def _fixed_part(path: str) -> str:
    """The directories of ``path`` before its first wildcard (the parent of a plain file)."""
    parts = path.split("/")
    fixed = list(itertools.takewhile(lambda p: not any(c in p for c in _WILDCARDS), parts))
    if len(fixed) == len(parts):
        fixed = fixed[:-1]
    return "/".join(fixed) or "/"


def _local(pattern: str) -> tuple[str, list[tuple[str, int]]]:
    path = os.path.abspath(os.path.expanduser(pattern))
    root = os.path.normpath(_fixed_part(path))
    matched = sorted(glob.glob(path, recursive=True)) if any(c in path for c in _WILDCARDS) else [path]
    found = []
    for name in matched:
        if not os.path.isfile(name):
            if name == path:
                raise InputError(f"input file not found: {name}", name)
            continue
        found.append((os.path.relpath(name, root), os.path.getsize(name)))
    return root, found


def _remote(pattern: str) -> tuple[str, list[tuple[str, int]]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    root = _fixed_part(path).rstrip("/")
    try:
        pattern_given = any(c in path for c in _WILDCARDS)
        infos = fs.glob(path, detail=True) if pattern_given else {path: fs.info(path)}
    except FileNotFoundError:
        raise InputError(f"input file not found: {pattern}", pattern) from None
    found = []
    for name, info in sorted(infos.items()):
        if info.get("type") != "file":
            continue
        found.append((name[len(root) + 1 :], int(info.get("size") or 0)))
    return str(fs.unstrip_protocol(root)), found


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
    roots, found = list_files(patterns)
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


def read_grid(path: str) -> dict[str, list[Any]]:
    """The grid file: a JSON object whose values are non-empty lists. Errors name the file (and the line
    and column of a syntax error)."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"grid file not found: {path}", path) from None
    try:
        grid = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})", path, e.lineno) from None
    if not isinstance(grid, dict) or not grid:
        raise InputError(f'{path}: a grid is a JSON object of lists, e.g. {{"lr": [0.1, 0.01]}}', path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{path}: {key!r} must be a non-empty list of values, got {values!r}", path)
    return grid


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
            yield orjson.dumps(dict(zip(keys, values, strict=True))) + b"\n"


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
