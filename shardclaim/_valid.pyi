"""Which lines are certainly records, decided in C (``shardclaim/_valid.c``; optional: see
:mod:`shardclaim.dataset.records`)."""

def first_unsure(data: bytes | bytearray | memoryview, a: int, b: int, /) -> int: ...
