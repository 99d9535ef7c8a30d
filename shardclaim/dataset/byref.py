"""Zero-copy datasets (``create --by-reference``): chunks that are byte ranges of the inputs.

The build reads each (uncompressed) input once and writes only metadata: every chunk is
``{source, offset, size_bytes, num_tasks, crc32c}``, a run of whole lines of one input, and each input is
a *source* recorded in the master and every shard (format version 2, see :mod:`shardclaim.layout`) and
pinned: by size and modification time (nanoseconds) for a local file, by generation on GCS, by ETag on
S3 (and by size everywhere). Readers (:mod:`.byref_read`) check the pins before serving a source and
each range's CRC32C before yielding any of its records, so a source rewritten after the build is refused with
:class:`~shardclaim.errors.ChunkCorruptError` naming it, never read as records.

Distribution: shard *s* is one consecutive run of about 1/N of the input bytes (ending at a line end),
cut into ranges of at most ``chunk_size_mb`` (and at the end of each input file). Blank lines stay in
the ranges (a range is the source's bytes) and are skipped by the readers; the BOM opening a file is
left out of its first range. Lines cannot be skipped out of a range, so ``skip_invalid`` is refused;
compressed inputs cannot be ranged, and are refused too.

Local inputs are cut by small reads and scanned in two processes (:mod:`.ranges`); remote ones in
windows of 64 MiB, a range never spanning two windows. A range is at most ``chunk_size_mb`` (and 64 MiB
on a remote input); a longer line gets a range of its own.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from shardclaim.crc import crc32c
from shardclaim.dataset.byref_read import pins
from shardclaim.dataset.deal import lines_and_blanks
from shardclaim.dataset.inputs import input_name, input_names, is_blank, secrets_of
from shardclaim.dataset.localfs import is_local, usable_cpus
from shardclaim.dataset.records import BOM
from shardclaim.errors import InputError
from shardclaim.layout import chunk_name

if TYPE_CHECKING:
    from shardclaim.dataset.build import Options

__all__ = ["build_by_reference", "pin_of"]

log = logging.getLogger("shardclaim.dataset")
_MiB = 1 << 20
_WINDOW = 64 * _MiB


# -- build ------------------------------------------------------------------------------------------


def pin_of(f: Any) -> dict[str, Any]:
    """The source entry of an input: its URL or absolute path, size, and what pins its content."""
    name = input_name(f)
    if getattr(f, "compression", None):
        raise InputError(
            f"{name}: a compressed input cannot be read by reference (its byte ranges are not records); "
            "decompress it first or build without --by-reference",
            name,
        )
    if secrets_of(getattr(f, "full_name", "")) or "?" in name:
        raise InputError(
            f"{name}: a source read by reference is recorded by its URL, without credentials", name
        )
    return {"url": os.path.abspath(f.path) if is_local(f.fs) else name, **pins(f.fs, f.path)}


def build_by_reference(
    files: list[Any], output_dir: str, opts: Options, *, chunk_size_mb: float, overwrite: bool
) -> dict[str, Any]:
    """Scan the inputs once, publish metadata naming ranges of them; returns the master."""
    from shardclaim.dataset.tasks import _master, _shard_doc, publish

    if opts.skip_invalid:
        raise InputError("--skip-invalid cannot be used with --by-reference: a range cannot leave a line out")
    sources = [pin_of(f) for f in files]
    _outside(sources, output_dir)
    validator = _validator(files) if opts.validate else None
    scan = _Scan(opts.num_shards, opts.limit, sum(s["size"] for s in sources))
    try:
        if all(is_local(f.fs) for f in files):
            scan.local_files(files, sources)
        else:
            for index, f in enumerate(files):
                scan.source(index, f, sources[index]["size"])
        invalid = validator.result() if validator is not None else None
        if invalid is not None:
            name, lineno, reason = invalid
            raise InputError(f"{name}, line {lineno}: not valid JSON ({reason})", name, lineno)
        big = validator.big_integers() if validator is not None else None
    finally:
        if validator is not None:
            validator.close()
    records = sum(c["num_tasks"] for chunks in scan.shards for c in chunks)
    if records == 0:
        raise InputError(f"no records in {', '.join(input_names(files))}: nothing to shard")
    if any(not chunks for chunks in scan.shards):
        raise InputError(
            f"{records} records cannot fill {opts.num_shards} shards with whole lines; use fewer"
        )
    for f, source in zip(files, sources, strict=True):  # the inputs did not change while being read
        if pin_of(f) != source:
            raise InputError(f"{input_name(f)} changed while it was read; nothing published", input_name(f))
    shards = [
        _shard_doc(i, opts.num_shards, chunks, "by_reference", sources)
        for i, chunks in enumerate(scan.shards)
    ]
    master = _master(
        shards, "by_reference", sources, input_names(files),
        chunk_size_mb=float(chunk_size_mb), strategy="contiguous_bytes", validated=opts.validate,
        big_integers=big, blank_lines=scan.blank, skipped_invalid=0,
    )  # fmt: skip
    publish(output_dir, shards, master, overwrite=overwrite)
    return master


def _outside(sources: list[dict[str, Any]], output_dir: str) -> None:
    """No source lies in the output: a rebuild would delete it with the dataset it replaces."""
    for source in sources:
        url = source["url"]
        if any(ord(c) < 0x20 for c in url):  # a line of SHARDCLAIM_CHUNKS names one range
            raise InputError(
                f"{url!r}: a source whose name holds a control character cannot be read by reference", url
            )
        if "://" in url or "://" in output_dir:
            inside = url.startswith(output_dir.rstrip("/") + "/")
        else:
            inside = os.path.realpath(url).startswith(os.path.join(os.path.realpath(output_dir), ""))
        if inside:
            msg = f"{url} is inside {output_dir}: a source cannot be in the dataset that names it"
            raise InputError(msg, url)


class _Validator:
    """Every line checked, inline (small or remote inputs) or by the builder's background processes."""

    def __init__(self, files: list[Any]) -> None:
        from shardclaim.dataset.background import BackgroundValidator
        from shardclaim.dataset.validate import check_lines

        self._background = BackgroundValidator(files) if BackgroundValidator.suits(files, False) else None
        if self._background is not None:
            self._background.start()
        self._inline = None
        if self._background is None:
            from shardclaim.dataset.inputs import lines_of

            self._inline = check_lines(lines_of(files, None))

    def result(self) -> Any:
        if self._background is not None:
            return self._background.result()
        assert self._inline is not None
        return self._inline[0][1] if self._inline[0] is not None else None

    def big_integers(self) -> int:
        if self._background is not None:
            return self._background.big_integers()
        assert self._inline is not None
        return self._inline[1]

    def close(self) -> None:
        if self._background is not None:
            self._background.close()


def _validator(files: list[Any]) -> _Validator:
    return _Validator(files)


class _Scan:
    """Cuts the concatenated inputs into shards of about total / N bytes and those into ranges."""

    def __init__(self, num_shards: int, limit: int, total: int) -> None:
        self.n = num_shards
        self.limit = limit
        self.total = total
        self.shards: list[list[dict[str, Any]]] = [[] for _ in range(num_shards)]
        self.shard = 0
        self.done = 0  # bytes of the inputs before the current one
        self.blank = 0

    def target(self) -> int:
        """Where (in the concatenated inputs) the current shard ends."""
        return self.total * (self.shard + 1) // self.n

    def local_files(self, files: list[Any], sources: list[dict[str, Any]]) -> None:
        """Local inputs: cut by small reads, then scanned in two processes (:mod:`.ranges`)."""
        from shardclaim.dataset.ranges import PARALLEL_FROM, cut_file, scan_ranges

        cuts = []
        for index, f in enumerate(files):
            size = sources[index]["size"]
            if size == 0:
                continue
            with open(f.path, "rb", buffering=0) as handle:
                found, self.shard = cut_file(
                    handle.fileno(), size, index=index, limit=self.limit, shard=self.shard,
                    target=functools.partial(self._target_in, done=self.done), last=self.n - 1,
                )  # fmt: skip
            cuts += found
            self.done += size
        parallel = self.total >= PARALLEL_FROM and usable_cpus() > 1
        scans = scan_ranges([(files[index].path, a, b) for _, index, a, b in cuts], parallel=parallel)
        for (shard, index, a, b), (records, blanks, crc) in zip(cuts, scans, strict=True):
            self.blank += blanks
            if records:
                self._add(shard, index, a, b - a, records, crc)

    def _target_in(self, shard: int, *, done: int) -> int:
        """Where ``shard`` ends, counted from the start of an input that begins at ``done``."""
        return self.total * (shard + 1) // self.n - done

    def _add(self, shard: int, index: int, offset: int, length: int, records: int, crc: int) -> None:  # noqa: PLR0917
        chunks = self.shards[shard]
        chunks.append(
            {
                "chunk_id": len(chunks),
                "file": chunk_name(len(chunks)),
                "source": index,
                "offset": offset,
                "num_tasks": records,
                "size_mb": round(length / _MiB, 6),
                "size_bytes": length,
                "crc32c": f"{crc:08x}",
            }
        )

    def source(self, index: int, f: Any, size: int) -> None:
        """Scan one input in windows of whole lines (a window grows for a line longer than it)."""
        if size == 0:
            return
        opened = open(f.path, "rb", buffering=0) if is_local(f.fs) else f.fs.open(f.path, "rb")  # noqa: SIM115
        with opened as handle:
            buf = bytearray(_WINDOW)
            base = keep = 0  # the input offset of buf[0]; bytes carried over from the last window
            while True:
                n = keep
                while n < len(buf) and (got := handle.readinto(memoryview(buf)[n:])):
                    n += got
                eof = n < len(buf)
                end = n if eof else buf.rfind(b"\n", 0, n) + 1
                if end == 0 and not eof:  # no line end in the whole window: a longer window
                    buf.extend(bytes(len(buf)))
                    keep = n
                    continue
                self._segment(index, buf, base, 0, end)
                if eof:
                    break
                buf[: n - end] = buf[end:n]
                base, keep = base + end, n - end
            if base + n != size:
                raise InputError(f"{input_name(f)} changed while it was read", input_name(f))
        self.done += size

    def _segment(self, index: int, data: bytearray, base: int, pos: int, end: int) -> None:
        """Ranges of ``data[pos:end]`` (``data[0]`` is byte ``base`` of input ``index``): whole lines,
        except that the input's last line may lack its newline."""
        if base == 0 and data[:3] == BOM:
            pos = 3
        while pos < end:
            target = self.target() - self.done - base  # the current shard's end, in this window
            if self.shard < self.n - 1 and target <= end:
                nl = data.find(b"\n", max(target - 1, pos), end)
                cut, shard_ends = (nl + 1 if nl >= 0 else end), True
            else:
                cut, shard_ends = end, False
            if cut - pos > self.limit:
                shard_ends = False
                nl = data.rfind(b"\n", pos, pos + self.limit)
                if nl < pos:  # one line longer than a chunk: it gets a range of its own
                    nl = data.find(b"\n", pos, end)
                    log.warning("a line of input %d at byte %d is longer than a chunk: a range of its own",
                                index, base + pos)  # fmt: skip
                cut = nl + 1 if nl >= 0 else end
            self._range(index, data, base, pos, cut)
            pos = cut
            if shard_ends:
                self.shard += 1

    def _range(self, index: int, data: bytearray, base: int, a: int, b: int) -> None:
        whole = b if data[b - 1] == 0x0A else data.rfind(b"\n", a, b) + 1  # the last line may lack "\n"
        lines, holes = lines_and_blanks(data, a, whole) if whole > a else (0, [])
        records = lines - len(holes)
        if whole < b:
            if is_blank(bytes(data[whole:b]) + b"\n"):
                self.blank += 1
            else:
                records += 1
        self.blank += len(holes)
        if records == 0:
            return
        with memoryview(data) as view:
            crc = crc32c(view[a:b])
        self._add(self.shard, index, base + a, b - a, records, crc)
