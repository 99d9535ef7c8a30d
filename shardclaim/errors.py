"""The one exception family of shardclaim.

Every error carries its facts as attributes (the key, the generation that was expected) so callers
branch on types and fields, never on message text. All of them pickle, so they cross process
boundaries intact.
"""

from __future__ import annotations

__all__ = [
    "BuildInProgressError",
    "ChunkCorruptError",
    "CompressedStreamError",
    "DatasetExistsError",
    "GenerationMismatchError",
    "InputError",
    "InvalidKeyError",
    "InvalidRecordError",
    "InvalidURLError",
    "JobHaltedError",
    "LeaseLostError",
    "MetadataError",
    "ObjectNotFoundError",
    "Preempted",
    "ShardclaimError",
    "StoreClockError",
    "StoreError",
    "TransientStoreError",
    "UnknownShardError",
]


class ShardclaimError(Exception):
    """Base class of every error raised by shardclaim."""


class InvalidURLError(ShardclaimError, ValueError):
    """A store URL that shardclaim cannot open (unknown scheme, missing bucket, ...)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot open {url!r}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidURLError], tuple[str, str]]:
        return type(self), (self.url, self.reason)


class InvalidKeyError(ShardclaimError, ValueError):
    """An object key that is not a clean relative name (empty part, ``..``, reserved name, ...)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid object key {key!r}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidKeyError], tuple[str, str]]:
        return type(self), (self.key, self.reason)


class StoreError(ShardclaimError):
    """A store could not do what was asked. Subclasses say why."""


class StoreClockError(StoreError):
    """The store's clock (the ``Date`` of its answers; on NFS the server's) is too far from this machine's
    to time leases by, in several answers running: one of the two clocks, or a gateway, is wrong."""


class GenerationMismatchError(StoreError):
    """A conditional write was refused: the object is not at the generation the writer named.

    This is an *answer*, not a fault: another writer got there first. It is never retried.
    ``expected`` is the generation the writer asked for (0 means "only if absent").
    """

    def __init__(self, key: str, expected: int | str) -> None:
        self.key = key
        self.expected = expected
        want = "to be absent" if expected == 0 else f"at generation {expected!s}"
        super().__init__(f"{key!r}: precondition failed, expected it {want}")

    def __reduce__(self) -> tuple[type[GenerationMismatchError], tuple[str, int | str]]:
        return type(self), (self.key, self.expected)


class ObjectNotFoundError(StoreError, LookupError):
    """The object does not exist."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key!r}: no such object")

    def __reduce__(self) -> tuple[type[ObjectNotFoundError], tuple[str]]:
        return type(self), (self.key,)


class TransientStoreError(StoreError):
    """A failure worth retrying: timeout, 408, 429, 5xx, connection reset.

    The operation may or may not have taken effect on the store.
    """

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(f"transient store failure during {operation}: {detail}")

    def __reduce__(self) -> tuple[type[TransientStoreError], tuple[str, str]]:
        return type(self), (self.operation, self.detail)


class LeaseLostError(ShardclaimError):
    """This holder's lease is over: someone else wrote the object since this holder last did.

    ``shard_id`` is None for a lease that is not on a shard (the fan-in finalizer's marker).
    """

    def __init__(self, shard_id: int | None, worker_id: str, detail: str = "") -> None:
        self.shard_id = shard_id
        self.worker_id = worker_id
        self.detail = detail
        what = "the finalizer" if shard_id is None else f"shard {shard_id}"
        msg = f"{what}: worker {worker_id!r} lost its lease"
        super().__init__(f"{msg} ({detail})" if detail else msg)

    def __reduce__(self) -> tuple[type[LeaseLostError], tuple[int | None, str, str]]:
        return type(self), (self.shard_id, self.worker_id, self.detail)


class UnknownShardError(ShardclaimError, ValueError):
    """A shard id that the dataset does not have."""

    def __init__(self, shard_id: object, num_shards: int) -> None:
        self.shard_id = shard_id
        self.num_shards = num_shards
        super().__init__(f"unknown shard id {shard_id!r}: this dataset has shards 0..{num_shards - 1}")

    def __reduce__(self) -> tuple[type[UnknownShardError], tuple[object, int]]:
        return type(self), (self.shard_id, self.num_shards)


class JobHaltedError(ShardclaimError):
    """The job is halted fleet-wide (too many shards failed); ``halt`` is the halt as stored."""

    def __init__(self, message: str, halt: dict[str, object] | None = None) -> None:
        self.halt = halt
        super().__init__(message)

    def __reduce__(self) -> tuple[type[JobHaltedError], tuple[str, dict[str, object] | None]]:
        return type(self), (str(self), self.halt)


class MetadataError(ShardclaimError, ValueError):
    """A metadata object is corrupt or hostile; it names the object and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")

    def __reduce__(self) -> tuple[type[MetadataError], tuple[str, str]]:
        return type(self), (self.key, self.problem)


class Preempted(SystemExit):
    """Raised in a worker loop's main thread on SIGTERM (a spot preemption notice), so that held shards
    are released on the way out. A SystemExit with status 128 + the signal (143 for SIGTERM): uncaught,
    the process ends with that status and no traceback, as a process killed by the signal reports;
    ``except Exception`` in user code does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return f"received signal {self.signum}"

    def __reduce__(self) -> tuple[type[Preempted], tuple[int]]:
        return type(self), (self.signum,)


# -- building and reading a dataset (shardclaim.dataset) ----------------------------------------------


class InputError(ShardclaimError, ValueError):
    """The input cannot be built into a dataset: a malformed line, a missing or unreadable file, no records...

    ``input_file`` names the input to blame (without credentials) when there is one, ``line`` the line
    number when a line is to blame; both are None otherwise.
    """

    def __init__(self, message: str, input_file: str | None = None, line: int | None = None) -> None:
        self.input_file = input_file
        self.line = line
        super().__init__(message)

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str | None, int | None]]:
        return type(self), (str(self), self.input_file, self.line)


class DatasetExistsError(ShardclaimError, FileExistsError):
    """The output already holds a dataset (or foreign files, or a link) and overwriting was not asked for
    or cannot help.

    ``output`` is the output as the caller gave it; ``path`` the entry to blame (a file that is not part
    of a dataset, a symbolic link) when there is one.
    """

    def __init__(self, message: str, output: str, path: str | None = None) -> None:
        self.output = output
        self.path = path
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DatasetExistsError], tuple[str, str, str | None]]:
        return type(self), (str(self), self.output, self.path)


class BuildInProgressError(ShardclaimError, BlockingIOError):
    """Another build is writing to this output; ``holder`` says which, as far as it is known."""

    def __init__(self, output: str, holder: str) -> None:
        self.output = output
        self.holder = holder
        super().__init__(
            f"another build is writing to {output} ({holder}); this one stops and changes nothing: "
            "wait for it to finish, then build again (with --overwrite to replace what it built)"
        )

    def __reduce__(self) -> tuple[type[BuildInProgressError], tuple[str, str]]:
        return type(self), (self.output, self.holder)


class ChunkCorruptError(ShardclaimError):
    """A chunk's size or CRC32C differs from what its shard's metadata records."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url}: {problem}")

    def __reduce__(self) -> tuple[type[ChunkCorruptError], tuple[str, str]]:
        return type(self), (self.url, self.problem)


class InvalidRecordError(ValueError):
    """The line is not a record; ``reason`` says why (in orjson's words where it has them).

    The builder turns it into an :class:`InputError` naming the file and line; the reader raises it as it
    is, for a line of a dataset built without validation.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[type[InvalidRecordError], tuple[str]]:
        return type(self), (self.reason,)


class CompressedStreamError(ValueError):
    """The compressed data ends early (``truncated``) or is not valid. It never leaves the builder, which
    turns it into an :class:`InputError` naming the file."""

    def __init__(self, kind: str, problem: str, truncated: bool) -> None:
        self.kind = kind
        self.problem = problem
        self.truncated = truncated
        super().__init__(problem)

    def __reduce__(self) -> tuple[type[CompressedStreamError], tuple[str, str, bool]]:
        return type(self), (self.kind, self.problem, self.truncated)
